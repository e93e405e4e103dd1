"""vmctl builds only the group of the command a line starts with, and loads only what it uses."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tests.corpus import corpus_root
from vmc.cli import COMMAND_GROUPS, build_parser


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _shape(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    """Every option and positional of a parser and of its subcommands, recursively."""
    shape: list[tuple[str, ...]] = []
    for action in parser._actions:
        shape.append((type(action).__name__, action.dest, *action.option_strings))
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                shape.extend((name, *row) for row in _shape(sub))
    return shape


def test_the_table_names_every_command_in_help_order() -> None:
    assert list(_commands(build_parser())) == list(COMMAND_GROUPS)


@pytest.mark.parametrize("command", list(COMMAND_GROUPS))
def test_a_command_alone_parses_as_in_the_whole_parser(command: str) -> None:
    alone = _commands(build_parser(command))
    assert command in alone
    whole = _commands(build_parser())
    assert set(alone) == {
        name for name, group in COMMAND_GROUPS.items() if group is COMMAND_GROUPS[command]
    }
    assert _shape(alone[command]) == _shape(whole[command])


def test_an_unknown_first_word_gets_the_whole_parser() -> None:
    assert list(_commands(build_parser("--socket"))) == list(COMMAND_GROUPS)


def test_dex_parse_loads_no_control_socket_and_no_views() -> None:
    audit = corpus_root() / "dex" / "rheavendors_luce_x2.dex"
    code = (
        "import sys, vmc.cli\n"
        f"status = vmc.cli.main(['dex', 'parse', {str(audit)!r}, '--json'])\n"
        "late = {'vmc.control.client', 'vmc.control.protocol', 'vmc.cli_views', 'asyncio',\n"
        "        'vmc.config', 'protocols.mdb'}\n"
        "print(status, sorted(late & set(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stderr.strip() == "0 []"
    assert '"audits": 1' in done.stdout
