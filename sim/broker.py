"""A private Mosquitto broker on a free loopback port, for tests and the demo.

Mosquitto comes from Debian's ``mosquitto`` package. ``set_tcp_nodelay`` is on: without it
Nagle's algorithm holds back the broker's small PUBACKs and QoS 1 throughput drops several fold.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from protocols.errors import VmcError


class BrokerError(VmcError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoBroker:
    def __init__(
        self,
        port: int | None = None,
        *,
        users: dict[str, str] | None = None,
        persistence: bool = False,
        tls: bool = False,
    ) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="vmc-mosquitto-"))
        self.log_path = self._dir / "mosquitto.log"
        self.users = users
        self.persistence = persistence
        self.tls_port = free_port() if tls else None
        self.ca_file = self._dir / "ca.pem" if tls else None
        if tls:
            self._make_certificates()
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        assert self.tls_port is not None
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def _make_certificates(self) -> None:
        """A throw-away CA and a server certificate for 127.0.0.1, made with openssl."""
        d = self._dir

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True)

        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=vmc test CA",
            "-keyout",
            str(d / "ca.key"),
            "-out",
            str(d / "ca.pem"),
        )
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(d / "server.key"),
            "-out",
            str(d / "server.csr"),
        )
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl(
            "x509",
            "-req",
            "-in",
            str(d / "server.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / "san.ext"),
            "-out",
            str(d / "server.pem"),
        )

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "set_tcp_nodelay true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self._dir}/",
            f"log_dest file {self.log_path}",
            "max_inflight_messages 20",
            "max_queued_messages 100000",
        ]
        if self.tls_port is not None:
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self._dir / 'ca.pem'}",
                f"certfile {self._dir / 'server.pem'}",
                f"keyfile {self._dir / 'server.key'}",
            ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to its own user, who cannot read our temp dir.
            lines.append("user root")
        if self.users:
            passwd = self._dir / "passwd"
            passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            passwd.chmod(0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        (self._dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 5.0) -> None:
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self._dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise BrokerError(f"mosquitto did not listen on port {self.port}")

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
