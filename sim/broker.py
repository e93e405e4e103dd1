"""A private Mosquitto broker on a free loopback port, for tests and the demo.

Mosquitto comes from Debian's ``mosquitto`` package. ``set_tcp_nodelay`` is on: without it
Nagle's algorithm holds back the broker's small PUBACKs and QoS 1 throughput drops several fold.

With ``mtls`` the broker is set up as docs/cloud-api.md §11 recommends for production: its one
listener speaks TLS only and requires a client certificate from its CA, the certificate's CN
becomes the username (``use_identity_as_username``), and the ACL file of §11 (``%u`` patterns)
keeps every device in its own subtree. :meth:`MosquittoBroker.client_cert` issues certificates.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from protocols.errors import VmcError
from sim.certs import CertificateAuthority, Issued

ACL = """\
# the backend (certificate CN = backend)
user backend
topic write vmc/+/cmd
topic read vmc/+/reply
topic read vmc/+/events
topic read vmc/+/status
topic read vmc/+/state

# every device (certificate CN = device id): its own subtree only
pattern read vmc/%u/cmd
pattern write vmc/%u/reply
pattern write vmc/%u/events
pattern write vmc/%u/status
pattern write vmc/%u/state
"""


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
        receive_maximum: int = 20,
        tls: bool = False,
        mtls: bool = False,
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
        self.receive_maximum = receive_maximum
        self.mtls = mtls
        self.tls_port = free_port() if tls or mtls else None
        self._ca = CertificateAuthority(self._dir / "ca") if tls or mtls else None
        self.ca_file = None if self._ca is None else self._ca.cert
        self._server = None if self._ca is None else self._ca.issue("127.0.0.1", server=True)
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_config()

    @property
    def url(self) -> str:
        assert not self.mtls, "an mTLS broker has no plain listener"
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The running server's process id (None when stopped)."""
        return None if self._proc is None else self._proc.pid

    @property
    def listen_port(self) -> int:
        """The port that tells the broker is up: its plain one, or its mTLS one."""
        if self.mtls:
            assert self.tls_port is not None
            return self.tls_port
        return self.port

    def client_cert(self, common_name: str) -> Issued:
        """A client certificate from this broker's CA; with ``mtls`` its CN is the username
        the ACL goes by (a device id, or ``backend``)."""
        assert self._ca is not None, "a broker without TLS has no CA"
        return self._ca.issue(common_name)

    def client_context(self, common_name: str | None) -> ssl.SSLContext:
        """A client's TLS context that trusts this broker, with a certificate for
        ``common_name`` (None: without one)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if common_name is not None:
            issued = self.client_cert(common_name)
            context.load_cert_chain(issued.cert, issued.key)
        return context

    def device_config(self, device_id: str) -> str:
        """vmcd's ``[cloud]`` table (TOML) for ``device_id`` on this mTLS broker."""
        issued = self.client_cert(device_id)
        return (
            f'[cloud]\nurl = "{self.tls_url}"\ndevice_id = "{device_id}"\n'
            f'ca_file = "{self.ca_file}"\ncert_file = "{issued.cert}"\n'
            f'key_file = "{issued.key}"\n'
        )

    @property
    def tls_url(self) -> str:
        assert self.tls_port is not None
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def _write_config(self) -> None:
        lines = [
            *([] if self.mtls else [f"listener {self.port} 127.0.0.1"]),
            "set_tcp_nodelay true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self._dir}/",
            f"log_dest file {self.log_path}",
            # Also the Receive Maximum its CONNACK gives MQTT 5 clients.
            f"max_inflight_messages {self.receive_maximum}",
            "max_queued_messages 100000",
        ]
        if self.tls_port is not None:
            assert self.ca_file is not None
            assert self._server is not None
            lines += [
                f"listener {self.tls_port} 127.0.0.1",
                f"cafile {self.ca_file}",
                f"certfile {self._server.cert}",
                f"keyfile {self._server.key}",
            ]
        if self.mtls:
            acl = self._dir / "acl"
            acl.write_text(ACL)
            lines += [
                "require_certificate true",
                "use_identity_as_username true",
                f"acl_file {acl}",
                "allow_anonymous false",
            ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to its own user, who cannot read our temp dir.
            lines.append("user root")
        if self.users and not self.mtls:  # with mTLS the certificate is the credential
            passwd = self._dir / "passwd"
            passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            passwd.chmod(0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        elif not self.mtls:
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
                socket.create_connection(("127.0.0.1", self.listen_port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise BrokerError(f"mosquitto did not listen on port {self.listen_port}")

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
