"""The fleet on each broker, what each broker does with vmc's contract, and vmcd on each.

Every broker is a private one this test starts (sim.brokers); NATS and RabbitMQ are skipped,
saying why, where their Debian package is missing or the server cannot start here.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import pytest

from sim.broker import BrokerError
from sim.brokers import KINDS, NATS_BINARY, RABBIT_BINARY, RunningBroker, V5Connect, start_broker
from sim.mqtt_lite import V5, V311, Message, MqttLiteError, Session, Will
from tests.e2e.cloud_rig import machine
from tests.e2e.console import VMC_SIM
from tests.waiting import wait_until

BINARIES = {"nats": NATS_BINARY, "rabbitmq": RABBIT_BINARY}
SETTLE_S = 1.0


def _broker(name: str) -> Iterator[RunningBroker]:
    binary = BINARIES.get(name)
    if binary is not None and not Path(binary).exists():
        pytest.skip(f"{name}: {binary} is not installed (Debian package)")
    try:
        broker = start_broker(name)
    except BrokerError as exc:
        if name == "mosquitto":
            raise
        pytest.skip(f"{name} could not be started here: {exc}")
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(
    # A private RabbitMQ node takes about 10 s to start: its fleet and its answers to each
    # question are in the long run (-m slow); vmcd's own vend on it stays in the default one.
    params=[pytest.param(k, marks=pytest.mark.slow) if k == "rabbitmq" else k for k in KINDS]
)
def any_broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, RunningBroker]]:
    name = str(request.param)
    for broker in _broker(name):
        yield name, broker


@pytest.fixture(params=["nats", "rabbitmq"])
def other_broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, RunningBroker]]:
    name = str(request.param)
    for broker in _broker(name):
        yield name, broker


def _fleet(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VMC_SIM, "fleet", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_small_fleet_vends_on_each_broker(any_broker: tuple[str, RunningBroker]) -> None:
    name, broker = any_broker
    result = _fleet(
        "--mqtt",
        broker.url,
        "--machines",
        "20",
        "--vends",
        "20",
        "--rate",
        "40",
        "--json",
        "--mqtt-version",
        "5" if KINDS[name].mqtt5 else "3.1.1",
    )
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    assert (report["machines"], report["connected"], report["backend_online"]) == (20, 20, 20)
    assert (report["vends"], report["vends_ok"], report["vend_failures"]) == (20, 20, {})
    assert result.returncode == 0, result.stderr
    assert (report["dropped"], report["unacked"], report["problems"]) == (0, 0, [])


def test_the_fleet_starts_its_own_broker() -> None:
    result = _fleet("--machines", "4", "--vends", "4", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert (report["broker"], report["mqtt_version"], report["vends_ok"]) == ("mosquitto", "5", 4)
    assert report["broker_rss_mb"] > 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--machines", "0"],
        ["--machines", "many"],
        ["--machines", "100001"],
        ["--workers", "0"],
        ["--vends", "-1"],
        ["--rate", "0"],
        ["--rate", "nan"],
        ["--broker", "kafka"],
        ["--broker", "nats", "--mqtt", "mqtt://127.0.0.1:1883"],
        ["--mqtt", "mqtts://127.0.0.1:8883"],
        ["--mqtt-version", "4"],
        ["--keepalive", "1"],
        ["--connects", "0"],
        ["--mqtt", "mqtt://127.0.0.1:1", "--machines", "2"],
    ],
)
def test_a_fleet_mistake_is_one_line_and_exit_2(argv: list[str]) -> None:
    result = _fleet(*argv, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("vmc-sim")


# --- what each broker does with the contract's MQTT -----------------------------------------


async def _open(
    port: int, client_id: str, got: list[Message], *, version: int, will: Will | None = None
) -> Session:
    return await Session.open("127.0.0.1", port, client_id, got.append, version=version, will=will)


async def _v5_connect(port: int) -> V5Connect:
    try:
        session = await asyncio.wait_for(_open(port, "probe-v5", [], version=V5), 5)
    except MqttLiteError as exc:
        return V5Connect.REFUSED if "CONNACK" in str(exc) else V5Connect.CLOSED
    session.disconnect()
    return V5Connect.ACCEPTED


async def test_what_each_broker_does(any_broker: tuple[str, RunningBroker]) -> None:
    """Retained status and state, the last will, QoS 1, and shared subscriptions, at the
    version vmcd uses there; the answers are :data:`sim.brokers.KINDS`."""
    name, broker = any_broker
    kind = KINDS[name]
    port = int(urlsplit(broker.url).port or 1883)
    assert await _v5_connect(port) is kind.v5_connect
    version = V5 if kind.mqtt5 else V311
    device: list[Message] = []
    will = Will("vmc/d1/status", b"lost")
    d1 = await _open(port, "d1", device, version=version, will=will)
    await d1.publish("vmc/d1/status", b"online", retain=True)  # QoS 1: done at its PUBACK
    await d1.publish("vmc/d1/state", b"state", retain=True)

    exact: list[Message] = []
    wild: list[Message] = []
    late_exact = await _open(port, "late-exact", exact, version=version)
    await late_exact.subscribe("vmc/d1/status")
    late_wild = await _open(port, "late-wild", wild, version=version)
    await late_wild.subscribe("vmc/+/state")
    shared: list[Message] = []
    workers = [await _open(port, f"w{n}", shared, version=version) for n in range(2)]
    for worker in workers:
        await worker.subscribe("$share/backend/vmc/+/events")
    for n in range(10):
        await d1.publish("vmc/d1/events", bytes([n]))
    await asyncio.sleep(SETTLE_S)
    assert [(m.topic, m.payload, m.retain) for m in exact] == [("vmc/d1/status", b"online", True)]
    assert bool(wild) is kind.retained_on_wildcard
    assert (len(shared) == 10) is kind.shared_subscriptions

    d1.abort()  # no DISCONNECT: the broker publishes the will
    await asyncio.sleep(SETTLE_S)
    assert [(m.topic, m.payload) for m in exact[1:]] == [("vmc/d1/status", b"lost")]
    for session in (late_exact, late_wild, *workers):
        session.disconnect()


# --- vmcd itself ----------------------------------------------------------------------------


async def test_vmcd_vends_remotely_on_nats_and_rabbitmq(
    tmp_path: Path, other_broker: tuple[str, RunningBroker]
) -> None:
    """The seven steps through the real vmcd. On NATS vmcd's ``auto`` falls back to 3.1.1
    (NATS refuses 5); RabbitMQ never answers a version-5 CONNECT, so vmcd is told 3.1.1."""
    name, broker = other_broker
    config = tmp_path / "broker.toml"
    config.write_text(
        "[cloud]\nmqtt_version = " + ('"3.1.1"\n' if name == "rabbitmq" else '"auto"\n')
    )
    async with machine(
        tmp_path,
        broker,
        extra=("--config", str(config)),
        backend_protocol=aiomqtt.ProtocolVersion.V311,
    ) as rig:
        await rig.paid_remote_vend()
        assert await wait_until(lambda: rig.outbox_size() == 0)  # every PUBACK came


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found |= {child, *_descendants(child)}
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_ends_the_workers_and_the_broker(sig: int) -> None:
    with subprocess.Popen(
        [VMC_SIM, "fleet", "--machines", "200", "--vends", "100000", "--rate", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        deadline = time.monotonic() + 30
        started: set[int] = set()
        while len(started) < 3 and time.monotonic() < deadline:  # the broker and 2 workers
            time.sleep(0.2)
            started = _descendants(proc.pid)
        assert len(started) >= 3, started
        time.sleep(2)  # connected, vending
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert not [pid for pid in started if _alive(pid)]


@pytest.mark.slow  # waits out the rig's timeout against a broker that says nothing
async def test_vmcd_needs_3_1_1_on_rabbitmq(tmp_path: Path) -> None:
    """Why ``[cloud] mqtt_version`` exists: RabbitMQ 3.10 never answers a version-5 CONNECT,
    so ``auto`` (which falls back only when 5 is refused) times out and tries 5 again."""
    for broker in _broker("rabbitmq"):
        with pytest.raises(TimeoutError):  # the rig's wait for the machine's "online"
            async with machine(tmp_path, broker, backend_protocol=aiomqtt.ProtocolVersion.V311):
                pass
    log = (tmp_path / "state" / "vmcd.log").read_text().splitlines()
    events = [json.loads(line) for line in log if line.startswith("{")]
    timed_out = [e for e in events if e["event"] == "mqtt_disconnected"]
    assert timed_out
    assert all(e["error"] == "Operation timed out" for e in timed_out)
    assert not [e for e in events if e["event"] == "mqtt_v5_refused"]
