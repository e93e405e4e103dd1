"""Line noise on the MDB bus: a seeded noise model and a pty relay that applies it.

The model is sans-I/O: it takes the 9-bit words of one burst (what one read delivered: a
block, or a lone ACK/RET/NAK) and returns them with bits flipped and words dropped, counting
what it did. Flips hit each of the nine bits (eight data bits and the mode bit) with the
same probability, the bit error rate; a flipped mode bit turns a data byte into a block start
or a block start into data, and a mode-bit 0x00 is what a BREAK looks like, as on a real line.

The relay joins two pty pairs: the VMC talks to :attr:`NoiseRelay.vmc_port`, the reader opens
:attr:`NoiseRelay.device_url`. Both directions are decoded from the in-band escape
(:mod:`protocols.mdb.words`), passed through their own model and re-encoded, so a flipped bit
never produces an escape the kernel could not have produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.pty import PtyPair, open_pty_device
from drivers.transport import FdPort, MdbPort
from protocols.errors import VmcError
from protocols.mdb.words import Word, WordDecoder

WORD_BITS = 9  # eight data bits and the mode bit


@dataclass(frozen=True, slots=True)
class NoiseSpec:
    """How noisy the line is: per-bit flip probability and per-word drop probability."""

    ber: float = 0.0
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("ber", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} {value} is outside 0..1")

    @property
    def quiet(self) -> bool:
        return self.ber == 0.0 and self.drop_rate == 0.0


@dataclass(slots=True)
class NoiseCounts:
    """What one direction's model did: bursts seen and touched, words, flips, drops."""

    bursts: int = 0
    bursts_corrupted: int = 0
    words: int = 0
    bits_flipped: int = 0
    words_dropped: int = 0


class NoiseModel:
    """Corrupts bursts of words; the same seed and spec give the same corruption."""

    def __init__(self, seed: int, spec: NoiseSpec | None = None) -> None:
        self._rng = random.Random(seed)
        self.spec = spec or NoiseSpec()
        self.counts = NoiseCounts()

    def corrupt(self, words: Sequence[Word]) -> list[Word]:
        """One burst through the line. A quiet spec passes it untouched but still counts it."""
        if not words:
            return []
        counts = self.counts
        counts.bursts += 1
        counts.words += len(words)
        if self.spec.quiet:
            return list(words)
        rng, ber, drop = self._rng, self.spec.ber, self.spec.drop_rate
        out: list[Word] = []
        touched = False
        for word in words:
            if rng.random() < drop:
                counts.words_dropped += 1
                touched = True
                continue
            nine = word.value | (int(word.mode) << 8)
            for bit in range(WORD_BITS):
                if rng.random() < ber:
                    nine ^= 1 << bit
                    counts.bits_flipped += 1
                    touched = True
            out.append(Word(nine & 0xFF, mode=bool(nine >> 8)))
        counts.bursts_corrupted += touched
        return out


class _Hop:
    """One direction of the relay: read, decode, corrupt, re-encode, write."""

    def __init__(self, source: MdbPort, sink: MdbPort, model: NoiseModel) -> None:
        self.source = source
        self.sink = sink
        self.model = model
        self.decoder = WordDecoder()

    def pump(self) -> None:
        try:
            data = self.source.read_available()
        except VmcError:
            return  # the far end went away (a restart): the next one reconnects
        noisy = self.model.corrupt(self.decoder.feed(data))
        if noisy:
            # Nobody listening (a restart): the line loses it, as a real one would.
            with contextlib.suppress(VmcError):
                self.sink.write_words(noisy)


class NoiseRelay:
    """A noisy line between a VMC and a reader, each on a pty pair of its own.

    ``seed`` seeds both directions' models (VMC to reader with ``seed``, back with
    ``seed + 1``); :meth:`set_noise` changes the spec of both at any time.
    """

    def __init__(self, seed: int, spec: NoiseSpec | None = None) -> None:
        self.vmc_pair = PtyPair()
        self.device_pair = PtyPair()
        self._vmc_end: FdPort = open_pty_device(self.vmc_pair.device_path)
        spec = spec or NoiseSpec()
        self.to_device = _Hop(self._vmc_end, self.device_pair.master, NoiseModel(seed, spec))
        self.to_vmc = _Hop(self.device_pair.master, self._vmc_end, NoiseModel(seed + 1, spec))
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def vmc_port(self) -> MdbPort:
        """The port the VMC drives."""
        return self.vmc_pair.master

    @property
    def device_url(self) -> str:
        """The ``pty://`` URL the reader is given."""
        return self.device_pair.device_url

    def set_noise(self, spec: NoiseSpec) -> None:
        self.to_device.model.spec = spec
        self.to_vmc.model.spec = spec

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._vmc_end.fileno(), self.to_device.pump)
        loop.add_reader(self.device_pair.master.fileno(), self.to_vmc.pump)
        self._loop = loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._vmc_end.fileno())
            self._loop.remove_reader(self.device_pair.master.fileno())
            self._loop = None
        self._vmc_end.close()
        self.vmc_pair.close()
        self.device_pair.close()
