"""scripts/bootstrap says what it does on a first install, and nothing when .venv is current.

The real script runs in a scratch project beside a copy of it. Installing vmc itself needs the
network and a minute, so the install test uses a one-module project whose PEP 517 backend is
in its own tree (``requires = []``): real ``python3 -m venv``, real pip, offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "scripts" / "bootstrap"

# A PEP 517 backend that builds a wheel holding only its metadata: enough for pip to install.
BACKEND = """
import base64, hashlib, pathlib, zipfile

NAME, VERSION = "tiny", "0.1"
FAIL = False


def _digest(data):
    raw = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if FAIL:
        raise RuntimeError("tiny: the build failed on purpose")
    info = f"{NAME}-{VERSION}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n"
        "Provides-Extra: dev\\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\n"
        "Tag: py3-none-any\\n",
    }
    record = "".join(f"{p},{_digest(t.encode())},{len(t.encode())}\\n" for p, t in files.items())
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(pathlib.Path(wheel_directory) / name, "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
        wheel.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\\n")
    return name


build_editable = build_wheel
"""

PYPROJECT = """[build-system]
requires = []
build-backend = "tiny_backend"
backend-path = ["."]
"""


def _project(tmp_path: Path) -> Path:
    """A scratch project laid out like vmc's: scripts/bootstrap and pyproject.toml."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy2(BOOTSTRAP, project / "scripts" / "bootstrap")
    return project


def _run(project: Path) -> subprocess.CompletedProcess[str]:
    # Offline: no index, no links from a pip.conf; pip's own upgrade finds nothing newer.
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull}
    return subprocess.run(
        [str(project / "scripts" / "bootstrap")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_up_to_date_venv_prints_nothing(tmp_path: Path) -> None:
    project = _project(tmp_path)
    shutil.copy2(ROOT / "pyproject.toml", project / "pyproject.toml")
    venv_bin = project / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    (project / ".venv" / ".vmc-installed").touch()
    os.utime(project / "pyproject.toml", (0, 0))  # older than the stamp
    result = _run(project)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


@pytest.mark.skipif(shutil.which("python3") is None, reason="bootstrap runs python3")
def test_first_install_shows_progress_then_later_runs_are_quiet(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "tiny_backend.py").write_text(BACKEND)

    first = _run(project)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stderr.splitlines()
    assert lines[0] == "bootstrap: creating .venv"
    assert lines[1].startswith("bootstrap: installing vmc and its dependencies (first run")
    assert lines[2].startswith("bootstrap: collecting .")
    assert lines[3] == "bootstrap: installing tiny"
    assert lines[4].startswith("bootstrap: done in ")
    assert len(lines) == 5
    assert (project / ".venv" / "bootstrap.log").read_text().count("tiny") > 0

    again = _run(project)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")

    # A failed install still shows pip's whole log and one line saying where it is kept.
    backend = project / "tiny_backend.py"
    backend.write_text(BACKEND.replace("FAIL = False", "FAIL = True"))
    os.utime(project / "pyproject.toml")  # newer than the stamp: install again
    failed = _run(project)
    assert failed.returncode == 1
    assert "the build failed on purpose" in failed.stderr
    assert failed.stderr.rstrip().endswith(
        "bootstrap: installing vmc into .venv failed (log above, also in .venv/bootstrap.log)"
    )
