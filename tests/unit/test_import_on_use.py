"""vmcd lets paho's ``import urllib.request`` cost nothing until the module is used
(:func:`vmc.launch.import_on_use`); whatever uses it gets the real module. Each case runs
in a fresh interpreter: the stand-in lives in ``sys.modules``."""

from __future__ import annotations

import subprocess
import sys

import pytest

PRELUDE = """
import sys
from vmc.launch import import_on_use
import_on_use("urllib.request")
"""


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_mqtt_client_imports_without_loading_http_or_email() -> None:
    out = _run("import aiomqtt\nprint(sorted({'http.client', 'email'} & set(sys.modules)))")
    assert out == "[]"


@pytest.mark.parametrize(
    "use",
    [
        "import paho.mqtt.client as c; print(callable(c.urllib.request.getproxies))",
        "import urllib.request; print(callable(urllib.request.Request))",
        "from urllib.request import Request; print(callable(Request))",
        "import urllib.request as r; r.getproxies(); print(callable(r.urlopen))",
    ],
)
def test_a_use_gets_the_real_module(use: str) -> None:
    code = (
        use + "\nprint(type(sys.modules['urllib.request']).__name__, 'http.client' in sys.modules)"
    )
    assert _run(code).splitlines() == ["True", "module True"]


def test_a_module_imported_already_is_left_alone() -> None:
    code = """
import urllib.request
real = urllib.request
import_on_use("urllib.request")
print(sys.modules["urllib.request"] is real)
"""
    out = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom vmc.launch import import_on_use\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert out == "True"
