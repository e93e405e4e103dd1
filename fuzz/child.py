"""The libFuzzer process of one target: ``python -m fuzz.child TARGET [libFuzzer args]``.

vmc's own packages are instrumented for coverage as they are imported; libFuzzer's arguments
(corpus directories, ``-runs=N``, ``-merge=1``) pass through. fuzz/run starts this and reads
its output; run it by hand to see libFuzzer's own report.
"""

from __future__ import annotations

import shlex
import sys

import atheris

with atheris.instrument_imports(include=["protocols", "vmc", "drivers"]):
    from fuzz.targets import build


def main() -> None:
    target = build(sys.argv[1])
    # libFuzzer starts argv[0] through the shell for -merge=1's inner runs: give it the whole
    # command that reaches this module again, target included.
    again = shlex.join([sys.executable, "-m", "fuzz.child", target.name])
    atheris.Setup([again, *sys.argv[2:]], target.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
