"""Private MQTT brokers beyond Mosquitto, for the fleet bench and the tests: NATS and RabbitMQ.

Each starts its own server from the Debian package on free loopback ports in a temporary
folder, never the machine's own service, and stops it (and what it started) on close. Both are
clustered engines that fleets use; what each speaks is in :data:`KINDS` and docs/scaling.md:

- **NATS** (``nats-server``, 2.9 in Debian 12): MQTT 3.1.1 only, on top of JetStream, so the
  config needs ``server_name`` and a ``jetstream`` store. A CONNECT at level 5 is refused.
- **RabbitMQ** (``rabbitmq-server`` 3.10 with its ``rabbitmq_mqtt`` plugin): MQTT 3.1.1 only
  before 3.13; a CONNECT at level 5 gets no CONNACK, and a retained message reaches only a
  subscription to its exact topic, not one with a wildcard. A private node: its own node name,
  distribution port, mnesia and log folders, config file and enabled-plugins file, and an
  Erlang cookie in its own HOME. Starting takes several seconds.

:func:`start_broker` picks one by name (``mosquitto`` too) for the bench and the CLI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Protocol

from sim.broker import BrokerError, MosquittoBroker, free_port

NATS_BINARY = "/usr/sbin/nats-server"
RABBIT_BINARY = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBIT_START_S = 60.0
STOP_S = 10.0


class V5Connect(StrEnum):
    """What a broker does with an MQTT 5 CONNECT."""

    ACCEPTED = "accepted"
    REFUSED = "refused"  # CONNACK code 1: vmcd's ``auto`` falls back to 3.1.1
    CLOSED = "closed"  # no CONNACK: vmcd needs ``[cloud] mqtt_version = "3.1.1"``


@dataclass(frozen=True, slots=True)
class BrokerKind:
    """What a broker does, as measured here (tests/e2e/test_fleet.py, docs/scaling.md)."""

    name: str
    v5_connect: V5Connect
    retained_on_wildcard: bool
    """A subscription with a wildcard (a backend's ``vmc/+/status``) gets retained messages."""
    shared_subscriptions: bool
    """``$share/GROUP/...`` spreads messages over a group's subscribers."""

    @property
    def mqtt5(self) -> bool:
        return self.v5_connect is V5Connect.ACCEPTED


KINDS = {
    "mosquitto": BrokerKind("mosquitto", V5Connect.ACCEPTED, True, True),
    "nats": BrokerKind("nats", V5Connect.REFUSED, True, False),
    "rabbitmq": BrokerKind("rabbitmq", V5Connect.CLOSED, False, False),
}


class RunningBroker(Protocol):
    """What the fleet needs of a broker it started."""

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    def close(self) -> None: ...


def raise_nofile() -> None:
    """Lift this process's open-file limit to its hard limit (children inherit it): ten
    thousand sessions are ten thousand sockets on each side."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_mb(pid: int | None) -> float | None:
    """The resident memory of a process and its children (a shell that started the server)."""
    if pid is None:
        return None
    total_kb = 0
    for one in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
    return round(total_kb / 1024, 1)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            for child in map(int, text):
                found += [child, *_children(child)]
    return found


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"{what} exited with {proc.returncode} before it listened")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return
        time.sleep(0.05)
    raise BrokerError(f"{what} did not listen on port {port} within {timeout:g} s")


def _stop_group(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after :data:`STOP_S`."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class _ServerBroker:
    """A server process in a temporary folder of its own, stopped with its process group."""

    what = "broker"
    mtls = False  # a plain listener only

    def __init__(self, prefix: str) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _spawn(self, argv: list[str], env: dict[str, str], timeout: float) -> None:
        log = (self.dir / "server.out").open("wb")
        self._proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
            start_new_session=True,
        )
        log.close()
        try:
            _wait_listening(self._proc, self.port, timeout, self.what)
        except BrokerError:
            self.close()
            raise

    def close(self) -> None:
        _stop_group(self._proc)
        self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NatsBroker(_ServerBroker):
    """A private nats-server with JetStream and its MQTT listener on :attr:`port`."""

    what = "nats-server"

    def __init__(self) -> None:
        if not Path(NATS_BINARY).exists():
            raise BrokerError("nats-server is not installed (Debian: apt-get install nats-server)")
        super().__init__("vmc-nats-")
        self.client_port = free_port()

    def start(self, timeout: float = 15.0) -> NatsBroker:
        config = self.dir / "nats.conf"
        config.write_text(
            f"listen: 127.0.0.1:{self.client_port}\n"
            f"server_name: vmc_{self.port}\n"
            "max_connections: 100000\n"
            f"jetstream {{ store_dir: {str(self.dir / 'js')!r} }}\n"
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n"
        )
        self._spawn([NATS_BINARY, "-c", str(config)], dict(os.environ), timeout)
        return self

    def __enter__(self) -> NatsBroker:
        return self.start()


class RabbitBroker(_ServerBroker):
    """A private RabbitMQ node with the MQTT plugin, guest allowed from anywhere."""

    what = "rabbitmq-server"

    def __init__(self) -> None:
        if not Path(RABBIT_BINARY).exists():
            raise BrokerError(
                "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)"
            )
        super().__init__("vmc-rabbit-")
        self.node = f"vmc{self.port}@localhost"

    def start(self, timeout: float = RABBIT_START_S) -> RabbitBroker:
        (self.dir / "rabbitmq.conf").write_text(
            "listeners.tcp = none\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.default_user = guest\n"
            "mqtt.default_pass = guest\n"
            "loopback_users = none\n"
            "mqtt.tcp_listen_options.nodelay = true\n"
            "mqtt.tcp_listen_options.backlog = 4096\n"
        )
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        env = {
            **os.environ,
            "HOME": str(self.dir),  # the Erlang cookie is made here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
        }
        self._spawn([RABBIT_BINARY], env, timeout)
        return self

    def __enter__(self) -> RabbitBroker:
        return self.start()


def start_broker(name: str) -> RunningBroker:
    """A private broker of that kind, started; :class:`BrokerError` if it cannot be had."""
    if name == "mosquitto":
        mosquitto = MosquittoBroker()
        mosquitto.start()
        return mosquitto
    if name == "nats":
        return NatsBroker().start()
    if name == "rabbitmq":
        return RabbitBroker().start()
    raise BrokerError(f"unknown broker {name!r}; one of {', '.join(KINDS)}")
