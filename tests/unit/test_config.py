"""Configuration: every bad value is refused with the key and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protocols.errors import ConfigError
from vmc.config import load_config
from vmc.daemon import build_parser, config_from_args

EXAMPLE = Path(__file__).parents[2] / "systemd" / "vmc.example.toml"


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.mdb.port == "uart:///dev/ttyAMA0"
    assert config.reader.currency == 978
    assert config.reader.address == config.mdb.address


def test_exe_settings_come_from_the_exe_table(tmp_path: Path) -> None:
    path = tmp_path / "vmc.toml"
    path.write_text('[exe]\nprice_holding = true\nvend_timeout = 90\nmode_bit = "none"\n')
    args = build_parser().parse_args(["--config", str(path), "--exe", "uart:///dev/ttyS0"])
    config = config_from_args(args)
    assert config.bus_port == "uart:///dev/ttyS0"
    assert config.mdb.port is None
    assert config.exe.mode_bit == "none"
    settings = config.exe.settings
    assert (settings.price_holding, settings.vend_timeout, settings.pnak_retries) == (True, 90, 5)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vmc.toml"
    path.write_text('[mdb]\nport = "uart:///dev/ttyAMA0"\nlevel = 2\n[reader]\ncurrency = 840\n')
    args = build_parser().parse_args(
        [
            "--config",
            str(path),
            "--mdb",
            "pty:///dev/pts/9",
            "--mdb-address",
            "0x60",
            "--level",
            "1",
            "--state-dir",
            str(tmp_path),
            "--local-approval",
            "accept",
        ]
    )
    config = config_from_args(args)
    assert config.mdb.port == "pty:///dev/pts/9"
    assert config.reader.address == 0x60
    assert config.reader.level == 1
    assert config.reader.currency == 840
    assert config.daemon.state_dir == tmp_path
    assert config.mdb.local_approval == "accept"


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        ({"mdb.level": 4}, "mdb.level", "1, 2, 3"),
        ({"mdb.level": "3"}, "mdb.level", "expected int"),
        ({"mdb.address": 0x20}, "mdb.address", "0x10 or 0x60"),
        ({"mdb.port": "tcp://host:1"}, "mdb.port", "uart://"),
        ({"mdb.port": "uart://ttyAMA0"}, "mdb.port", "/dev/"),
        ({"mdb.local_approval": "maybe"}, "mdb.local_approval", "accept, deny"),
        ({"mdb.realtime_priority": 120}, "mdb.realtime_priority", "0..99"),
        ({"mdb.colour": 1}, "mdb.colour", "allowed"),
        ({"reader.currency": "EUR"}, "reader.currency", "int"),
        ({"reader.currency": 1000}, "reader.currency", "1..999"),
        ({"reader.scale_factor": 0}, "reader.scale_factor", "1..255"),
        ({"reader.decimal_places": True}, "reader.decimal_places", "int"),
        ({"reader.session_timeout": -1.0}, "reader.session_timeout", "positive"),
        ({"reader.approval_timeout": 9.0}, "approval_timeout", "below max_response_time"),
        ({"reader.manufacturer": "ACME"}, "reader.manufacturer", "at most 3"),
        ({"reader.serial": "é"}, "reader.serial", "ASCII"),
        ({"reader.address": 0x10}, "reader.address", "allowed"),
        ({"daemon.log_level": "loud"}, "daemon.log_level", "debug"),
        ({"daemon.state_dir": 5}, "daemon.state_dir", "path"),
        ({"daemon.timezone": "Mars/Olympus"}, "daemon.timezone", "IANA time zone"),
        ({"daemon.timezone": "../etc/passwd"}, "daemon.timezone", "IANA time zone"),
        ({"daemon.sales_retention_days": 0}, "daemon.sales_retention_days", "1..3660"),
        ({"extra.key": 1}, "[extra]", "mdb, reader, daemon, cloud"),
        ({"cloud.url": "http://x"}, "cloud.url", "mqtt://HOST:PORT"),
        ({"cloud.url": "mqtt://x:99999"}, "cloud.url", "bad port"),
        ({"cloud.url": "mqtt://bro]ker:8883"}, "cloud.url", "mqtt://HOST:PORT"),
        ({"cloud.url": "mqtts://[::1:8883"}, "cloud.url", "mqtt://HOST:PORT"),
        ({"cloud.url": "mqtt://x:1883"}, "cloud.device_id", "--device-id"),
        ({"cloud.url": "mqtt://x", "cloud.device_id": "a/b"}, "cloud.device_id", "A-Z"),
        (
            {"cloud.url": "mqtt://x", "cloud.device_id": "m", "cloud.lock_timeout": 0.0},
            "cloud.lock_timeout",
            "positive",
        ),
        (
            {"cloud.url": "mqtt://x", "cloud.device_id": "m", "cloud.cert_file": "/c"},
            "cloud.cert_file",
            "together",
        ),
        (
            {"cloud.url": "mqtt://x", "cloud.device_id": "m", "cloud.mqtt_version": "4"},
            "cloud.mqtt_version",
            "auto, 5, 3.1.1",
        ),
        (
            {"cloud.url": "mqtt://x", "cloud.device_id": "m", "cloud.mqtt_version": 5},
            "cloud.mqtt_version",
            "expected str",
        ),
        ({"reader.approval_timeout": 0.5}, "reader.approval_timeout", "at least"),
        ({"service.out_of_service_after_s": 0}, "service.out_of_service_after_s", "positive"),
        ({"service.low_change_below": 0}, "service.low_change_below", "1..2147483648"),
        ({"service.low_change_below": "5"}, "service.low_change_below", "expected int"),
        ({"service.no_sales_window_h": 0.0}, "service.no_sales_window_h", "positive hours"),
        (
            {"service.no_sales_window_h": 25, "daemon.sales_retention_days": 1},
            "service.no_sales_window_h",
            "sales_retention_days * 24 (24)",
        ),
        ({"service.colour": 1}, "service.colour", "allowed"),
        ({"exe.port": "loop://a", "mdb.port": "loop://b"}, "exe.port", "one payment bus"),
        ({"exe.port": "/dev/ttyS0"}, "exe.port", "uart:///dev/ttyS0"),
        ({"exe.mode_bit": "odd"}, "exe.mode_bit", "mark, space, none"),
        ({"exe.realtime_priority": -1}, "exe.realtime_priority", "0..99"),
        ({"exe.silent_after": 0.05}, "exe.silent_after", "longer than reply_timeout"),
        ({"exe.status_inhibit_mask": 300}, "exe.status_inhibit_mask", "0..255"),
        ({"exe.price_holding": 1}, "exe.price_holding", "expected bool"),
        ({"exe.approval_timeout": 0.5}, "exe.approval_timeout", "at least"),
    ],
)
def test_bad_values_name_key_and_allowed(overrides: dict[str, Any], key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert key in str(info.value)
    assert allowed in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "[mdb\nport=1",
        "mdb = 3\n",
        "[reader]\ncurrency = [1, 2]\n",
        "\x00\x01",
        "[reader]\nmodel = 7\n",
    ],
)
def test_hostile_files_get_config_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


def test_service_keys_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vmc.toml"
    path.write_text(
        "[service]\nout_of_service_after_s = 60\nlow_change_below = 500\nno_sales_window_h = 0.5\n"
    )
    service = load_config(path).service
    assert (service.out_of_service_after_s, service.low_change_below) == (60, 500)
    assert service.no_sales_window_h == 0.5
    assert load_config(None).service.low_change_below is None  # not judged unless configured


def test_missing_file_and_missing_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"mdb\.port"):
        config_from_args(build_parser().parse_args([]))


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "vmc.toml"
    path.write_bytes(b"[reader]\nmodel = 'caf\xe9'\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 21\)"):
        load_config(path)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "vmc.toml"
    path.write_bytes(b"\xef\xbb\xbf[mdb]\nlevel = 2\n")
    assert load_config(path).mdb.level == 2


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"cloud.url": "mqtt://u:secret@h"}, "cloud.username and cloud.password"),
        ({"cloud.url": "mqtt://h/vmc"}, "just mqtt"),
        ({"cloud.url": "mqtp://u:secret@h"}, "must look like"),
        ({"cloud.url": "mqtt://u:secret@h:port"}, "bad port"),
        ({"cloud.url": "mqtt://h", "cloud.ca_file": "/ca.pem"}, "mqtts://"),
        ({"mdb.port": "uart:///dev/ttyS0?foo=1"}, "mdb.port: .*'foo'"),
        ({"dex.port": "uart:///dev/ttyS0?baud=9601"}, "dex.port: .*'9601'"),
        ({"daemon.state_dir": ""}, "daemon.state_dir"),
    ],
)
def test_more_refusals(overrides: dict[str, Any], match: str) -> None:
    overrides.setdefault("cloud.device_id", "m1")
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, overrides)
    assert "secret" not in str(info.value)
