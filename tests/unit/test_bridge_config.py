"""vmc-bridge's configuration: every mistake is one line naming the key, and a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import cli
from bridge.config import ConfigError, EventsMode, load
from vmc.cloud import signing
from vmc.cloud.signing import DeviceKey

GOOD = """
[bridge]
mqtt = "mqtt://127.0.0.1:1883"
listen = "127.0.0.1:0"
database = "sqlite:///bridge.sqlite3"

[[third_party]]
name = "acme"
base_url = "http://127.0.0.1:9/cb/"
machines = ["m1"]
api_keys = ["k-1"]
users = { alice = "pw" }
outbound_api_key = "out-1"
"""


def test_bridge_config_reads_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD)
    config = load(path)
    assert (config.mqtt_host, config.mqtt_port) == ("127.0.0.1", 1883)
    assert config.database == tmp_path / "bridge.sqlite3"
    party = config.third_parties[0]
    assert party.base_url == "http://127.0.0.1:9/cb"
    assert party.owns("m1")
    assert not party.owns("m2")
    assert "k-1" not in repr(party)
    assert "pw" not in repr(config)
    assert (config.events, config.share_group, config.member_lease) == (
        EventsMode.ALL,
        "vmc-bridge",
        15.0,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('mqtt = "mqtt://127.0.0.1:1883"', 'mqtt = "http://x"'), "bridge.mqtt: must be mqtt://"),
        (('listen = "127.0.0.1:0"', 'listen = "nowhere"'), "bridge.listen: must be HOST:PORT"),
        (("sqlite:///bridge.sqlite3", "mysql://db/x"), "bridge.database: must be sqlite:///"),
        (
            ('base_url = "http://127.0.0.1:9/cb/"', 'base_url = "ftp://x"'),
            "third_party[0].base_url",
        ),
        (('api_keys = ["k-1"]\nusers = { alice = "pw" }', ""), "give api_keys or users"),
        (("[bridge]", "[bridge]\nlock_timeout = -1"), "bridge.lock_timeout: must be a number"),
        (("[bridge]", "[bridge]\ncolour = 1"), "bridge.colour: unknown key"),
        (("[bridge]", '[bridge]\nevents = "some"'), 'bridge.events: must be "shared" or "all"'),
        (("[bridge]", '[bridge]\nshare_group = "a/b"'), "bridge.share_group: must not"),
        (("[bridge]", "[bridge]\nmember_lease = 0"), "bridge.member_lease: must be"),
        (('outbound_api_key = "out-1"', 'outbound_username = "u"'), "set outbound_username and"),
        (
            ("[bridge]", '[bridge]\ncommand_key_file = "absent.key"'),
            "bridge.command_key_file: ",
        ),
        (("[bridge]", '[bridge]\ncommand_key_file = "."'), "bridge.command_key_file: "),
    ],
)
def test_bridge_config_mistakes_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], message: str
) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD.replace(*change))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(path)
    assert cli.main(["--config", str(path), "check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_bridge_cli_missing_file_and_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--config", str(tmp_path / "none.toml")]) == 2
    assert "No such file" in capsys.readouterr().err
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD)
    assert cli.main(["--config", str(path), "check"]) == 0
    assert "ok, 1 third parties" in capsys.readouterr().out
    assert cli.main(["--config", str(path), "undelivered"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--bogus", "--config", "x.toml"], "unrecognized arguments: --bogus"),
        (["check", "extra"], "unrecognized arguments: extra"),
        (["run"], "the following arguments are required: --config"),
        ([], "the following arguments are required: --config"),
        (["--config", "x.toml", "serve"], "argument action: invalid choice: 'serve'"),
    ],
)
def test_bridge_cli_usage_mistakes_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"vmc-bridge: {message}")


def test_bridge_config_command_key_is_read_relative_to_the_file(tmp_path: Path) -> None:
    """The key a machine's ``cloud.command_keys`` trusts; the bridge signs every command."""
    made = DeviceKey.create(str(tmp_path / "bridge.key"))  # as `vmctl keygen` writes one
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD.replace("[bridge]", '[bridge]\ncommand_key_file = "bridge.key"'))
    key = load(path).command_key
    assert key is not None
    assert signing.key_id(key.public_key()) == made.kid
    assert "PRIVATE" not in repr(load(path))


def test_bridge_config_command_key_that_is_no_key_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bridge.key").write_text("not a key\n")
    path = tmp_path / "bridge.toml"
    path.write_text(GOOD.replace("[bridge]", '[bridge]\ncommand_key_file = "bridge.key"'))
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load(path)
