"""Property tests of the MDB stack: splits, corruption and loss never crash it and never
approve a vend nobody approved."""

from __future__ import annotations

import contextlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import MoneyError, RemoteProtocolError
from protocols.mdb import commands as c
from protocols.mdb import events as ev
from protocols.mdb.commands import Feature
from protocols.mdb.money import BusMoney
from protocols.mdb.words import Word, WordDecoder, checksum, encode_words, vmc_words
from tests.mdb_helpers import enabled

words_st = st.builds(Word, st.integers(0, 255), st.booleans())


@given(st.lists(words_st, max_size=200), st.lists(st.integers(1, 20), max_size=50))
def test_escape_round_trips_under_any_split(words: list[Word], cuts: list[int]) -> None:
    stream = encode_words(words)
    decoder = WordDecoder()
    out: list[Word] = []
    pos = 0
    for cut in cuts:
        out += decoder.feed(stream[pos : pos + cut])
        pos += cut
    out += decoder.feed(stream[pos:])
    assert out == words
    assert decoder.malformed == 0


@given(st.binary(max_size=500))
def test_decoder_never_raises_on_noise(noise: bytes) -> None:
    decoder = WordDecoder()
    words = decoder.feed(noise)
    assert all(0 <= w.value <= 255 for w in words)


@given(st.binary(min_size=1, max_size=40), st.booleans())
def test_command_parser_only_raises_its_error(block: bytes, wide: bool) -> None:
    with contextlib.suppress(RemoteProtocolError):
        c.parse_command(block, wide=wide)


@given(st.integers(0, 0xFFFE), st.sampled_from([1, 2, 5, 10]), st.integers(0, 3))
def test_money_round_trip(raw: int, scale: int, places: int) -> None:
    money = BusMoney(scale, places, 2)
    try:
        minor = money.to_minor(raw)
    except MoneyError:
        return
    assert money.to_bus(minor) == raw


def _session_stream(level: int, rng: random.Random) -> list[Word]:
    """VMC traffic of a few complete sessions, as words."""
    commands: list[bytes] = []
    for _ in range(3):
        commands += [b"\x12", b"\x12", b"\x13\x00\x00\x64\x00\x01", b"\x12", b"\x12"]
        commands += [b"\x13\x02\x00\x01", b"\x13\x04", b"\x12"]
        if rng.random() < 0.3:
            commands.append(b"\x13\x05\x00\x32\x00\x09")
    words: list[Word] = []
    for cmd in commands:
        words += vmc_words(cmd + bytes((checksum(cmd),)))
        words.append(Word(c.ACK))
    return words


def _mangle(words: list[Word], rng: random.Random, rate: float) -> list[Word]:
    out: list[Word] = []
    for w in words:
        roll = rng.random()
        if roll < rate:
            continue  # dropped
        if roll < 2 * rate:
            out.append(Word(rng.randrange(256), rng.random() < 0.2))  # corrupted
            continue
        out.append(w)
    return out


@settings(max_examples=150)
@given(st.integers(0, 2**32), st.sampled_from([1, 2, 3]), st.floats(0.0, 0.2))
def test_noisy_bus_never_crashes_nor_approves_unasked(seed: int, level: int, rate: float) -> None:
    """Nobody approves anything here: no VEND APPROVED may ever leave the reader."""
    rng = random.Random(seed)
    bus = enabled(level, features=int(Feature.ALWAYS_IDLE) if level == 3 else 0)
    if level < 3:
        bus.device.begin_session(1000)
    words = _mangle(_session_stream(level, rng), rng, rate)
    now = 0.0
    for i in range(0, len(words), rng.randint(1, 7)):
        now += 0.01
        for block in bus.device.receive(words[i : i + 7], now):
            assert not (len(block) > 1 and block[0] == c.Resp.VEND_APPROVED)
        bus.device.tick(now)


@settings(max_examples=150)
@given(st.integers(0, 2**32), st.floats(0.0, 0.15))
def test_approvals_on_the_bus_never_exceed_approvals_given(seed: int, rate: float) -> None:
    """The application approves exactly the requests it hears; corruption cannot add any."""
    rng = random.Random(seed)
    bus = enabled(3, features=int(Feature.ALWAYS_IDLE))
    device = bus.device
    approved_ids: set[int] = set()
    sent_for: set[int] = set()
    words = _mangle(_session_stream(3, rng), rng, rate)
    now = 0.0
    for i in range(0, len(words), 3):
        now += 0.01
        blocks = device.receive(words[i : i + 3], now)
        for event in device.take_events():
            if isinstance(event, ev.VendRequested):
                device.approve_vend(event.vend_id, event.price)
                approved_ids.add(event.vend_id)
            if isinstance(event, ev.VendApprovedSent):
                assert event.vend_id in approved_ids
                assert event.vend_id not in sent_for
                sent_for.add(event.vend_id)
        assert all(len(b) >= 1 for b in blocks)


def _replies(chunks: list[list[Word]], level: int, *, word_at_a_time: bool) -> list[bytes]:
    """Feed ``chunks``; the application acts only between chunks, in both modes."""
    bus = enabled(level)
    bus.device.begin_session(1000)
    out: list[bytes] = []
    now = 0.0
    for chunk in chunks:
        now += 0.001
        parts = [[w] for w in chunk] if word_at_a_time else [chunk]
        for part in parts:
            out += bus.device.receive(part, now)
        for event in bus.device.take_events():
            if isinstance(event, ev.VendRequested):
                bus.device.approve_vend(event.vend_id, event.price)
            if isinstance(event, ev.SessionEnded):
                bus.device.begin_session(1000)
    return out


@settings(max_examples=100)
@given(st.integers(0, 2**32), st.sampled_from([1, 2, 3]))
def test_replies_do_not_depend_on_how_the_stream_is_split(seed: int, level: int) -> None:
    rng = random.Random(seed)
    words = _session_stream(level, rng)
    chunks: list[list[Word]] = []
    pos = 0
    while pos < len(words):
        size = rng.randint(1, 12)
        chunks.append(words[pos : pos + size])
        pos += size
    one_by_one = _replies(chunks, level, word_at_a_time=True)
    assert _replies(chunks, level, word_at_a_time=False) == one_by_one
