"""The fuzz targets: each takes any bytes and may raise only the errors its parser documents.

* ``mdb``: the reader's whole receive path. The first byte picks wide money and a level; the
  rest is the escaped byte stream a port delivers, decoded by :class:`WordDecoder` and fed to
  a :class:`CashlessDevice`, whose ``receive`` and ``tick`` raise nothing (the bus process
  does not catch around them). Each complete block is also given to ``parse_command``, which
  may raise :class:`RemoteProtocolError`.
* ``evadts``: :func:`protocols.evadts.parser.parse_all`, which raises only ``NoAuditError``,
  and whose lazy products must equal the general path's.
* ``codec``: :func:`vmc.cloud.codec.decode_command`, which raises only ``CommandError``.
* ``config``: :func:`vmc.config.load_config` on the bytes as a file, which raises only
  ``ConfigError``.

An allowed error is a normal outcome; anything else escaping is a crash. Seeds (:func:`seed`)
come from what the tests use: the simulated VMC's trace, the EVA-DTS writer's audits, the
contract's commands and the example config.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2

from protocols.errors import ConfigError, RemoteProtocolError
from protocols.evadts import parser
from protocols.evadts.parser import NoAuditError, parse_all
from protocols.evadts.records import Audit
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from protocols.mdb.commands import parse_command
from protocols.mdb.link import BlockReceived
from protocols.mdb.words import WordDecoder, encode_words
from vmc.cloud.codec import CommandError, decode_command
from vmc.config import load_config

ROOT = Path(__file__).resolve().parent.parent
MDB_LEVELS = (1, 2, 3)
TICK_EVERY_S = 0.7
SCRATCH_ENV = "VMC_FUZZ_SCRATCH"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[Exception], ...]
    max_len: int = 4096  # libFuzzer's -max_len: longer inputs only repeat what shorter ones do

    def one_input(self, data: bytes) -> None:
        """One input, as the fuzzer calls it: allowed errors end it quietly."""
        try:
            self.run(data)
        except self.allowed:
            return


def _mdb(data: bytes) -> None:
    if not data:
        return
    head, stream = data[0], data[1:]
    wide = bool(head & 0x80)
    device = CashlessDevice(
        ReaderConfig(address=0x60 if head & 0x40 else 0x10, level=MDB_LEVELS[head % 3]), 0.0
    )
    device.tap = []
    decoder = WordDecoder()
    now = 0.0
    # Feed in the chunks a port might deliver: split where the input's own bytes say.
    step = 1 + (head & 0x0F)
    for start in range(0, len(stream), step):
        now += TICK_EVERY_S * ((stream[start] & 0x03) / 3)
        device.receive(decoder.feed(stream[start : start + step]), now)
        device.tick(now)
        device.take_events()
    for event, _reply, _at, was_wide in device.tap:
        if isinstance(event, BlockReceived):
            with contextlib.suppress(RemoteProtocolError):
                parse_command(event.data, wide=was_wide or wide)


_EVERY_RUN = re.compile("")
"""Matches everywhere: as ``parser._SUSPECT`` it sends every product run down the general
path, the one the lazy products must agree with."""


def _evadts(data: bytes) -> None:
    """Parse, and parse again by the general path only: the two audits must be equal (their
    products read in full, warnings included); a difference is a crash like any other."""
    lazy = _audits_or_none(data)
    suspect = parser._SUSPECT
    parser._SUSPECT = _EVERY_RUN
    try:
        general = _audits_or_none(data)
    finally:
        parser._SUSPECT = suspect
    if lazy != general:
        raise AssertionError("the lazy and the general path give different audits")


def _audits_or_none(data: bytes) -> tuple[Audit, ...] | None:
    try:
        return parse_all(data)
    except NoAuditError:
        return None


def _codec(data: bytes) -> None:
    decode_command(data)


class _ConfigFile:
    """One scratch file the config target rewrites for every input, made on the first one: in
    the directory ``VMC_FUZZ_SCRATCH`` names (fuzz/run's, removed after the run), else on
    tmpfs when there, removed when the process ends normally."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def __call__(self, data: bytes) -> None:
        if self.path is None:
            where = os.environ.get(SCRATCH_ENV) or (
                "/dev/shm" if os.path.isdir("/dev/shm") else None
            )
            fd, name = tempfile.mkstemp(prefix="vmc-fuzz-", suffix=".toml", dir=where)
            os.close(fd)
            self.path = Path(name)
            atexit.register(self.path.unlink, missing_ok=True)
        self.path.write_bytes(data)
        load_config(self.path)


def build(name: str) -> Target:
    """The target called ``name`` (KeyError if there is none)."""
    if name == "mdb":
        return Target("mdb", _mdb, (), max_len=1024)  # dozens of blocks
    if name == "evadts":
        return Target("evadts", _evadts, (NoAuditError,), max_len=16384)
    if name == "codec":
        return Target("codec", _codec, (CommandError,))
    if name == "config":
        return Target("config", _ConfigFile(), (ConfigError,))
    raise KeyError(name)


NAMES = ("mdb", "evadts", "codec", "config")


# --- seeds -------------------------------------------------------------------------------


def seed(name: str, out: Path) -> int:
    """Write ``name``'s generated seeds into ``out``; how many."""
    makers: dict[str, Callable[[], list[bytes]]] = {
        "mdb": _mdb_seeds,
        "evadts": _evadts_seeds,
        "codec": _codec_seeds,
        "config": _config_seeds,
    }
    seeds = makers[name]()
    out.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds):
        (out / f"seed-{i:03d}").write_bytes(data)
    return len(seeds)


def mdb_input(trace: str, head: int = 0x83) -> bytes:
    """A trace's VMC words as an ``mdb`` input (level 3, wide when ``head`` says so)."""
    from protocols.mdb.trace import Direction, parse_trace

    lines = parse_trace(trace)
    words = [w for line in lines if line.direction is Direction.VMC for w in line.words]
    return bytes((head,)) + encode_words(words)


def _mdb_seeds() -> list[bytes]:
    import asyncio

    from tests.samples import record_trace

    with tempfile.TemporaryDirectory() as state:
        trace = asyncio.run(record_trace(Path(state), sessions=6))
    return [mdb_input(trace, head) for head in (0x00, 0x41, 0x83)]


def _evadts_seeds() -> list[bytes]:
    from tests.samples import audit_bytes

    return [audit_bytes(), audit_bytes({1: 3, 2: 0}, door_openings=1)]


def _codec_seeds() -> list[bytes]:
    base = {"v": 1, "id": "c1", "expires": 1e12}
    rng = random.Random(1)
    bodies: list[dict[str, object]] = [
        {"op": "lock", "ref": "r", "limit": 300, "timeout_s": 20, "vend_type": "test"},
        {"op": "unlock", "txn_id": "t"},
        {"op": "paid", "txn_id": "t", "amount": 150},
        {"op": "deny", "txn_id": "t"},
        {"op": "refund", "txn_id": "t", "amount": 100},
        {"op": "stock.refill", "selections": [{"number": 1, "level": 5}]},
        {"op": "sales.query", "since": 0},
        {"op": "data.request", "kind": "audit"},
        {"op": "credit", "credit_id": "k", "amount": rng.randrange(1, 999)},
        {"op": "voucher", "code": "ABC"},
    ]
    return [cbor2.dumps({**base, **body}) for body in bodies]


def _config_seeds() -> list[bytes]:
    example = (ROOT / "systemd" / "vmc.example.toml").read_bytes()
    return [
        example,
        b'[mdb]\nport = "pty:///dev/pts/0"\nlevel = 3\naddress = 0x10\n',
        b'[cloud]\nhost = "localhost"\nport = 1883\n[daemon]\nstate_dir = "/tmp/x"\n',
    ]
