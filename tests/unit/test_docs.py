"""The documentation and the shipped systemd files agree with the repository and with each other.

A newcomer follows README.md, docs/ and systemd/ from a clone and nothing else: so they must
name nothing outside the repository, their links and the files and commands they name must
exist, and the unit, the example configuration and the Raspberry Pi guide must describe the
same install (paths, user, state directory).
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cli import build_parser as bridge_parser
from sim.__main__ import build_parser as sim_parser
from vmc.cli import build_parser as vmctl_parser
from vmc.config import load_config
from vmc.daemon import build_parser as vmcd_parser
from vmc.daemon import config_from_args

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = sorted(p for p in (ROOT / "systemd").iterdir() if p.is_file())
MARKDOWN = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *(p for p in SYSTEMD if p.suffix == ".md"),
]
OTHER = [p for p in SYSTEMD if p.suffix != ".md"]
EXAMPLE = ROOT / "systemd" / "vmc.example.toml"
UNIT = ROOT / "systemd" / "vmcd.service"
GUIDE = ROOT / "docs" / "raspberry-pi.md"
SYSUSERS = ROOT / "systemd" / "vmc-sysusers.conf"
TMPFILES = ROOT / "systemd" / "vmc-tmpfiles.conf"
INSTALLER = ROOT / "scripts" / "install-pi"

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
# Mentions of the project's workspace beside the repository, with or without a leading ../
# The one allowed: where the tests look for the corpus of real files (README, Testing).
WORKSPACE = re.compile(
    r"\.\./shared(?!/corpus/)|/work/|(?<![\w/.-])shared/(?:architecture|reference|seeds)"
)
UP_PATH = re.compile(r"(?:\.\./)+(?!shared/corpus/)[\w.\-/]*")
REPO_DIRS = (
    "docs",
    "systemd",
    "scripts",
    "tests",
    "bench",
    "vmc",
    "protocols",
    "drivers",
    "sim",
    "bridge",
)
REPO_PATH = re.compile(rf"(?<![\w/.-])(?:{'|'.join(REPO_DIRS)})/[\w.\-/]*")
PROGRAMS = {
    "vmcd": vmcd_parser,
    "vmctl": vmctl_parser,
    "vmc-sim": sim_parser,
    "vmc-bridge": bridge_parser,
}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("path", MARKDOWN + OTHER, ids=_rel)
def test_nothing_points_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not WORKSPACE.findall(text), f"{_rel(path)} names the workspace outside the repo"
    for match in UP_PATH.finditer(text):
        target = (path.parent / match.group()).resolve()
        assert target.is_relative_to(ROOT), f"{_rel(path)}: {match.group()} leaves the repo"


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_relative_links_resolve(path: Path) -> None:
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.is_relative_to(ROOT), f"{_rel(path)}: {target} leaves the repo"
        assert linked.exists(), f"{_rel(path)}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{_rel(path)}: no heading for #{anchor}"


@pytest.mark.parametrize("path", MARKDOWN + OTHER, ids=_rel)
def test_repository_files_named_exist(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    spans = CODE_SPAN.findall(text) if path.suffix == ".md" else [text]
    for span in spans:
        for found in REPO_PATH.findall(span):
            if found.endswith("..."):
                continue  # a pattern such as the topic tree vmc/ID/...
            name = found.rstrip(".")  # the end of a sentence
            if "." in name.rsplit("/", 1)[-1] or name.endswith("/"):  # a file or a directory
                assert (ROOT / name).exists(), f"{_rel(path)} names {name}, which does not exist"


def _command_lines(text: str) -> Iterator[list[str]]:
    """Each vmcd / vmctl / vmc-sim command in the fenced blocks, continuation lines joined."""
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        joined = re.sub(r"\n\s+(?=\[|--)", " ", joined)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["sudo"]:
                words = words[1:]
            if words and words[0].rsplit("/", 1)[-1] in PROGRAMS:
                yield [words[0].rsplit("/", 1)[-1], *words[1:]]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_commands_in_examples_exist(path: Path) -> None:
    for words in _command_lines(path.read_text(encoding="utf-8")):
        parser = PROGRAMS[words[0]]()
        rest = words[1:]
        while rest and (subs := _subcommands(parser)) and not rest[0].startswith("-"):
            assert rest[0] in subs, f"{_rel(path)}: {' '.join(words)}: no command {rest[0]!r}"
            parser, rest = subs[rest[0]], rest[1:]
        known = set(parser._option_string_actions)
        for word in rest:
            flag = word.strip("[]").split("=", 1)[0]
            if flag.startswith("--"):
                assert flag in known, f"{_rel(path)}: {' '.join(words)}: no option {flag}"


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.mdb.port == "uart:///dev/ttyAMA0"
    assert config.daemon.state_dir == Path("/var/lib/vmc")
    assert config.cloud.url is not None
    assert config.cloud.ca_file is None, "a ca_file that is not installed stops the cloud link"
    assert config.dex.port is not None


def test_example_config_with_the_flags_a_bench_gives(tmp_path: Path) -> None:
    args = vmcd_parser().parse_args(
        ["--config", str(EXAMPLE), "--mdb", "pty:///dev/pts/9", "--state-dir", str(tmp_path)]
    )
    config = config_from_args(args)
    assert config.mdb.port == "pty:///dev/pts/9"
    assert config.daemon.state_dir == tmp_path


def _unit() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def _script_paths() -> dict[str, str]:
    """The NAME=/path constants at the top of scripts/install-pi, $NAME references expanded."""
    found: dict[str, str] = {}
    for name, value in re.findall(r"^([A-Z_]+)=(\S+)", INSTALLER.read_text(), re.MULTILINE):
        found[name] = re.sub(r"\$([A-Z_]+)", lambda m: found[m.group(1)], value)
    return found


def _lines(path: Path) -> list[list[str]]:
    """A sysusers.d or tmpfiles.d file's lines, split as systemd splits them (quotes kept whole)."""
    text = path.read_text(encoding="utf-8")
    return [shlex.split(line) for line in text.splitlines() if line and not line.startswith("#")]


def test_unit_installer_and_guide_describe_one_install() -> None:
    unit = _unit()
    paths = _script_paths()
    guide = GUIDE.read_text(encoding="utf-8")
    (exec_start,) = unit["ExecStart"]
    program, *args = exec_start.split()
    assert Path(program) == Path(paths["VENV"]) / "bin" / "vmcd"
    assert args[:2] == ["--config", paths["CONFIG"]]
    assert paths["UNIT_FILE"] == f"/etc/systemd/system/{UNIT.name}"
    assert "sudo scripts/install-pi --enable-uart" in guide
    assert f"sudoedit {paths['CONFIG']}" in guide
    assert "sudo systemctl enable --now vmcd" in guide
    # The user and its groups: the unit runs as what sysusers.d creates.
    (user,) = unit["User"]
    (group,) = unit["Group"]
    (state,) = unit["StateDirectory"]
    state_dir = f"/var/lib/{state}"
    sysusers = _lines(SYSUSERS)
    assert ["u", user, "-", "vmc vending machine daemon", state_dir] in sysusers
    assert user == group  # "u NAME -" makes the group of the same name
    for extra in unit["SupplementaryGroups"][0].split():
        assert ["m", user, extra] in sysusers
    # The directories: tmpfiles.d and the unit make the state directory alike; the service
    # reads its configuration through its group.
    tmpfiles = {line[1]: line for line in _lines(TMPFILES)}
    assert tmpfiles[state_dir] == ["d", state_dir, unit["StateDirectoryMode"][0], user, group, "-"]
    assert tmpfiles[paths["CONF_DIR"]] == ["d", paths["CONF_DIR"], "0750", "root", group, "-"]
    assert str(Path(paths["CONFIG"]).parent) == paths["CONF_DIR"]
    assert load_config(EXAMPLE).daemon.state_dir == Path(state_dir)
    assert state_dir in unit["ReadWritePaths"][0].split()


def test_the_control_socket_has_a_directory_only_the_group_vmc_may_enter() -> None:
    """vmcd serves its control socket in $RUNTIME_DIRECTORY (/run/vmc), mode 0660, group vmc."""
    unit = _unit()
    assert unit["RuntimeDirectory"] == ["vmc"]
    mode = int(unit["RuntimeDirectoryMode"][0], 8)
    assert mode & 0o050 == 0o050, "members of the group vmc must reach the socket"
    assert mode & 0o007 == 0, "no one else may"
