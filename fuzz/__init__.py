"""Coverage-guided fuzzing of vmc's parsers with atheris (see fuzz/run and docs/reliability.md)."""
