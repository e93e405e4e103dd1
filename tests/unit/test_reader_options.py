"""Reader options real readers need: the currency in either MDB form, BEGIN SESSION's fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protocols.errors import ConfigError, RemoteProtocolError
from protocols.mdb import commands as c
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from protocols.mdb.commands import CurrencyCode, CurrencyForm, Feature, PaymentType
from tests.mdb_helpers import EVERY_LEVEL_AND_ADDRESS, Bus, data, enabled
from vmc.config import load_config

WIDE = int(Feature.WIDE_MONEY)


def _reader_config(level: int, address: int, **config: Any) -> bytes:
    """READER CONFIG DATA as the reader answers SETUP config data."""
    bus = Bus(CashlessDevice(ReaderConfig(address=address, level=level, **config)), address)
    bus.send(c.Cmd.RESET)
    bus.poll_ack()
    return data(bus.exchange(c.Cmd.SETUP, 0, 3, 16, 2, 1))


@pytest.mark.parametrize(("level", "address"), EVERY_LEVEL_AND_ADDRESS)
@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({}, b"\x19\x78"),  # ISO 4217 978, EUR: the default
        ({"currency": 840}, b"\x18\x40"),
        ({"currency": 643, "telephone_code": 7}, b"\x00\x07"),  # RUB, Russia's +7
        ({"telephone_code": 49}, b"\x00\x49"),
        ({"telephone_code": 380}, b"\x03\x80"),
    ],
)
def test_reader_config_carries_the_currency_in_either_form(
    level: int, address: int, config: dict[str, int], code: bytes
) -> None:
    answer = _reader_config(level, address, **config)
    assert answer[0] == c.Resp.READER_CONFIG
    assert answer[1] == level
    assert answer[2:4] == code


def test_expanded_begin_session_carries_media_id_language_and_currency() -> None:
    bus = enabled(3, features=WIDE, payment_media_id=0x12345678, language="ru", telephone_code=7)
    bus.device.begin_session(250, PaymentType.TEST)
    begin = data(bus.poll_ack())
    assert begin == bytes.fromhex("03000000fa123456784000007275000700")
    session = c.BeginSession.from_bytes(begin)
    assert (session.funds, session.media_id, session.language) == (250, 0x12345678, b"ru")
    assert CurrencyCode.from_word(session.currency) == CurrencyCode(7, CurrencyForm.TELEPHONE)


def test_expanded_begin_session_defaults() -> None:
    bus = enabled(3, features=WIDE)
    bus.device.begin_session(None)
    begin = data(bus.poll_ack())
    assert begin == bytes.fromhex("03ffffffff00000000000000656e197800")


@pytest.mark.parametrize(("level", "vmc_level"), [(2, 2), (3, 3), (3, 2)])
def test_sixteen_bit_begin_session_carries_the_media_id(level: int, vmc_level: int) -> None:
    bus = enabled(level, vmc_level=vmc_level, payment_media_id=0xFFFFFFFE, language="ru")
    bus.device.begin_session(500)
    begin = data(bus.poll_ack())
    assert begin == bytes.fromhex("0301f4fffffffe000000")
    assert c.BeginSession.from_bytes(begin).media_id == 0xFFFFFFFE


def test_level_1_begin_session_has_funds_only() -> None:
    bus = enabled(1, payment_media_id=9, language="ru")
    bus.device.begin_session(500)
    assert data(bus.poll_ack()) == bytes.fromhex("0301f4")


@pytest.mark.parametrize(
    ("word", "code"),
    [
        (0x1978, CurrencyCode(978)),
        (0x1001, CurrencyCode(1)),
        (0x0049, CurrencyCode(49, CurrencyForm.TELEPHONE)),
        (0x0007, CurrencyCode(7, CurrencyForm.TELEPHONE)),
        (0xFFFF, None),
    ],
)
def test_currency_code_words(word: int, code: CurrencyCode | None) -> None:
    assert CurrencyCode.from_word(word) == code
    if code is not None:
        assert code.to_word() == word


@pytest.mark.parametrize("word", [0x02F4, 0x2978, 0x1000, 0x0000, 0x19A0])
def test_currency_code_words_that_are_not_bcd_are_refused(word: int) -> None:
    with pytest.raises(RemoteProtocolError):
        CurrencyCode.from_word(word)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reader.telephone_code": 0}, "reader.telephone_code: 0 is not allowed; expected 1..999"),
        ({"reader.telephone_code": 1000}, "reader.telephone_code: 1000"),
        ({"reader.telephone_code": "+49"}, "reader.telephone_code: '+49' is not allowed"),
        ({"reader.telephone_code": True}, "reader.telephone_code: True is not allowed"),
        ({"reader.currency": 0}, "reader.currency: 0 is not allowed; expected 1..999"),
        ({"reader.payment_media_id": -1}, "reader.payment_media_id: -1 is not allowed"),
        ({"reader.payment_media_id": 2**32}, "expected 0..4294967295"),
        ({"reader.language": "r"}, "reader.language: 'r' is not allowed; expected two ASCII"),
        ({"reader.language": "rus"}, "reader.language: 'rus'"),
        ({"reader.language": "\u0440\u0443"}, "expected two ASCII letters"),  # Cyrillic "ru"
        ({"reader.language": "r1"}, "reader.language: 'r1'"),
        ({"reader.language": 7}, "reader.language: 7 is not allowed; expected str"),
    ],
)
def test_bad_reader_options_name_the_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_reader_options_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "vmc.toml"
    path.write_text(
        "[reader]\ncurrency = 643\ntelephone_code = 7\n"
        'payment_media_id = 0xFFFFFFFF\nlanguage = "ru"\n'
    )
    reader = load_config(path).reader
    assert (reader.currency, reader.payment_media_id, reader.language) == (643, 2**32 - 1, "ru")
    assert reader.currency_code == CurrencyCode(7, CurrencyForm.TELEPHONE)
    defaults = load_config(None).reader
    assert (defaults.telephone_code, defaults.payment_media_id, defaults.language) == (
        None,
        0,
        "en",
    )
    assert defaults.currency_code == CurrencyCode(978)
