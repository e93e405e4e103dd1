"""vmcd behind a noisy MDB line (sim.noise): no false approval, no crash, quick recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.mdb.words import Word
from sim.noise import NoiseModel, NoiseSpec
from sim.noise_drill import NoiseFigures, run_drill

BLOCK = [Word(0x13, mode=True), Word(0x00), Word(0x00), Word(0x64), Word(0x00), Word(0x07)]


def test_noise_model_is_seeded_and_counts_what_it_did() -> None:
    spec = NoiseSpec(ber=0.05, drop_rate=0.05)
    runs = []
    for _ in range(2):
        model = NoiseModel(11, spec)
        runs.append([model.corrupt(BLOCK) for _ in range(200)])
    assert runs[0] == runs[1]
    counts = model.counts
    assert counts.bursts == 200
    assert counts.words == 200 * len(BLOCK)
    assert 0 < counts.bursts_corrupted <= 200
    assert counts.words_dropped > 0
    assert counts.bits_flipped > 0
    assert sum(map(len, runs[1])) == counts.words - counts.words_dropped


def test_noise_model_flips_the_mode_bit_too() -> None:
    model = NoiseModel(3, NoiseSpec(ber=0.2))
    flipped = [w for _ in range(100) for w in model.corrupt([Word(0x55)]) if w.mode]
    assert flipped


def test_a_quiet_line_passes_words_untouched() -> None:
    model = NoiseModel(3)
    assert model.corrupt(BLOCK) == BLOCK
    assert model.counts.bursts_corrupted == 0


def test_noise_spec_refuses_a_rate_outside_0_to_1() -> None:
    with pytest.raises(ValueError, match="ber"):
        NoiseSpec(ber=1.5)


def _passed(figures: NoiseFigures) -> None:
    assert not figures.problems, figures.as_json()
    assert figures.false_approvals == 0
    assert figures.recovery_polls == 1, figures.as_json()


@pytest.mark.parametrize(
    ("spec", "policy"),
    [
        # Bit flips also run in the reset drill below; this heavier run is in the slow set.
        pytest.param(NoiseSpec(ber=1e-2), "accept", marks=pytest.mark.slow),
        (NoiseSpec(drop_rate=1e-2), "deny"),
    ],
    ids=["bit-flips-accept", "drops-deny"],
)
async def test_bus_noise_short_run(tmp_path: Path, spec: NoiseSpec, policy: str) -> None:
    figures = await run_drill(tmp_path, spec, frames=200, policy=policy, seed=5)
    _passed(figures)
    assert figures.frames_corrupted > 0
    # The line noticed: a bad checksum, or (a dropped word cut a frame short, which a loaded
    # machine's timing turns into silence rather than a bad checksum) a command sent again.
    noticed = figures.checksum_errors_reader + figures.checksum_errors_vmc
    assert noticed + figures.commands_resent > 0, figures.as_json()


async def test_bus_noise_vmc_reset_mid_vend(tmp_path: Path) -> None:
    """Every session is a vend the VMC aborts by RESET or BREAK; its approval must never come."""
    figures = await run_drill(
        tmp_path, NoiseSpec(ber=1e-3), frames=300, seed=9, weights={"vmc_reset": 1}
    )
    _passed(figures)
    assert figures.resets_mid_vend > 10


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "spec",
    [NoiseSpec(ber=1e-3), NoiseSpec(ber=1e-2), NoiseSpec(drop_rate=1e-2)],
    ids=["ber-1e-3", "ber-1e-2", "drop-1e-2"],
)
async def test_bus_noise_long_run(tmp_path: Path, spec: NoiseSpec) -> None:
    """10,000 VMC frames under noise, as docs/reliability.md reports (bench/bus_noise.py)."""
    figures = await run_drill(tmp_path, spec, frames=10_000, seed=1)
    _passed(figures)
    assert figures.frames_to_reader >= 10_000
