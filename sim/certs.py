"""Throw-away X.509 material for tests and the demo, made with the ``openssl`` command.

One :class:`CertificateAuthority` per directory: the broker's server certificate and the
clients' certificates (the backend's, one per device with the device id as its CN) are issued
by it. A second authority stands for "somebody else's CA" in the tests.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its unencrypted private key, both PEM."""

    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class CertificateAuthority:
    def __init__(self, directory: Path, name: str = "vmc test CA") -> None:
        """A new self-signed CA in ``directory`` (``ca.pem``, ``ca.key``)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.cert = directory / "ca.pem"
        self._key = directory / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", DAYS,
            "-subj", f"/CN={name}", "-keyout", str(self._key), "-out", str(self.cert),
        )  # fmt: skip

    def issue(self, common_name: str, *, server: bool = False) -> Issued:
        """A certificate for ``common_name``; a ``server`` one is valid for 127.0.0.1 and
        localhost (the name a client checks), a client one names its holder in the CN."""
        stem = self.directory / ("server" if server else f"client-{common_name}")
        key, csr, cert = (stem.with_suffix(s) for s in (".key", ".csr", ".pem"))
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={common_name}",
            "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        usage = "serverAuth" if server else "clientAuth"
        lines = [f"extendedKeyUsage={usage}"]
        if server:
            lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
        ext = stem.with_suffix(".ext")
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self._key),
            "-CAcreateserial", "-days", DAYS, "-extfile", str(ext), "-out", str(cert),
        )  # fmt: skip
        return Issued(cert, key)
