"""vmcd's configuration: a TOML file, then command-line flags over it.

Every value is checked at start; a bad one raises :class:`ConfigError` naming the key (as
``section.key``) and what is allowed, so the daemon never runs half-configured.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from drivers.mode_bit import ModeBit
from drivers.ports import PortKind, parse_port_url
from protocols.errors import ConfigError, PortError
from protocols.exe.settings import ExeSettings
from protocols.mdb.cashless import CASHLESS_ADDRESSES, ReaderConfig
from vmc.cloud.codec import MAX_AMOUNT, MAX_OFFLINE_VENDS
from vmc.logs import MASK, is_secret
from vmc.offline import Bounds

APPROVAL_POLICIES = ("accept", "deny")
MIN_APPROVAL_TIMEOUT_S = 1.0
DEVICE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MQTT_VERSIONS = ("auto", "5", "3.1.1")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class MdbConfig:
    port: str | None = None
    address: int = 0x10
    level: int = 3
    local_approval: str = "deny"
    realtime_priority: int = 20


@dataclass(frozen=True, slots=True)
class ExeConfig(ExeSettings):
    """``[exe]``: vmc as the Executive master instead of the MDB cashless device (one payment
    bus per machine). The master's settings (what the public sources leave open, see
    docs/executive.md) and the port's: its URL, the 9th bit of the commands, the priority of
    the bus process. ``[reader]`` still gives the currency and its decimals."""

    port: str | None = None
    mode_bit: str = ModeBit.MARK.value
    realtime_priority: int = 20

    @property
    def settings(self) -> ExeSettings:
        """The master core's part."""
        names = (f.name for f in dataclasses.fields(ExeSettings))
        return ExeSettings(**{name: getattr(self, name) for name in names})


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    state_dir: Path = Path("/var/lib/vmc")
    log_level: str = "info"
    timezone: str = "UTC"
    """The machine's IANA time zone: sales reports' days and hours are local to it."""
    sales_retention_days: int = 90
    """Days the journal keeps sales rows, and closed transactions with their refunds (a refund
    is judged against the transaction: one closed longer ago is unknown to ``refund``)."""
    control_socket: Path | None = None
    """The control socket ``vmctl`` talks to; None: :func:`control_socket_path` decides."""


@dataclass(frozen=True, slots=True)
class CloudConfig:
    url: str | None = None
    device_id: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    topic_prefix: str = "vmc"
    lock_timeout: float = 60.0
    keepalive: int = 30
    mqtt_version: str = "auto"
    """``auto`` (MQTT 5, 3.1.1 when the broker refuses 5), ``5`` or ``3.1.1``."""
    command_keys: tuple[str, ...] = ()
    """The backend's Ed25519 public keys (base64 of 32 bytes): set, commands that move money
    or goods must be signed by one of them (several while a key is rotated)."""
    device_key_file: str | None = None
    """The device's own Ed25519 key (PEM): set, every event and reply it publishes is signed."""


@dataclass(frozen=True, slots=True)
class DexConfig:
    """The audit reporter: where and how to read the machine's EVA-DTS audit, and when."""

    port: str | None = None
    protocol: str = "ucs"
    evadts_port: int = 1
    schedule: tuple[str, ...] = ("02:00", "14:00")
    interval_s: float | None = None
    read_at_start: bool = False
    keep: int = 20
    comm_id: str = "VMC0000001"
    upload_encoding: str = "latin-1"
    upload_base64: bool = False


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The rules behind the retained state's operating state and service flags."""

    out_of_service_after_s: float = 300.0
    """Reader kept disabled by the VMC (link up) this long: out of service."""
    low_change_below: int | None = None
    """Coin tube contents (minor units) under which ``low_change`` is true; None: not judged."""
    no_sales_window_h: float = 24.0
    """No paid sale for this long: ``no_recent_sales``."""


@dataclass(frozen=True, slots=True)
class Config:
    mdb: MdbConfig = field(default_factory=MdbConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    dex: DexConfig = field(default_factory=DexConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    exe: ExeConfig = field(default_factory=ExeConfig)
    offline: Bounds = field(default_factory=Bounds)
    """``[offline]``: bounded offline approvals (:mod:`vmc.offline`), off by default."""

    @property
    def executive(self) -> bool:
        """vmc runs as the Executive master (``exe.port`` set), not as an MDB reader."""
        return self.exe.port is not None

    @property
    def bus_port(self) -> str | None:
        """The payment bus's port, MDB's or Executive's (at most one is set)."""
        return self.exe.port if self.executive else self.mdb.port


def masked(config: Config) -> dict[str, Any]:
    """The configuration in force as plain data, one map per table (paths as text), every
    value set under a secret-looking key masked as the logs mask it: what a data request's
    ``config`` reports."""

    def plain(key: str, value: Any) -> Any:
        if value is not None and is_secret(key):
            return MASK
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        return value

    tables = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return {
        table: {k: plain(k, v) for k, v in dataclasses.asdict(section).items()}
        for table, section in tables.items()
    }


# Keys of [reader] that the file may set; address and level come from [mdb].
_READER_KEYS = {
    f.name: f.type for f in dataclasses.fields(ReaderConfig) if f.name not in ("address", "level")
}


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (if given), apply ``overrides`` ("section.key" -> value), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            # utf-8-sig: a BOM, as some Windows editors write, is not worth refusing a file for.
            raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x}"
                f" at offset {exc.start}); save it as UTF-8"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = value
    return _build(raw)


def _build(raw: dict[str, Any]) -> Config:
    unknown = set(raw) - {"mdb", "reader", "daemon", "cloud", "dex", "service", "exe", "offline"}
    if unknown:
        raise ConfigError(
            f"unknown section [{sorted(unknown)[0]}];"
            " allowed: mdb, reader, daemon, cloud, dex, service, exe, offline"
        )
    mdb = _section(raw, "mdb", MdbConfig)
    _port("mdb.port", mdb.port, PortKind.MDB)
    if mdb.address not in CASHLESS_ADDRESSES:
        raise ConfigError(f"mdb.address: {mdb.address!r} is not allowed; use 0x10 or 0x60")
    _choice("mdb.level", mdb.level, (1, 2, 3))
    _choice("mdb.local_approval", mdb.local_approval, APPROVAL_POLICIES)
    _range("mdb.realtime_priority", mdb.realtime_priority, 0, 99)
    daemon = _section(raw, "daemon", DaemonConfig)
    _choice("daemon.log_level", daemon.log_level, LOG_LEVELS)
    _zone("daemon.timezone", daemon.timezone)
    _range("daemon.sales_retention_days", daemon.sales_retention_days, 1, 3660)
    reader = _reader(raw.get("reader", {}), mdb)
    cloud = _cloud(_section(_listed(raw, "cloud", "command_keys"), "cloud", CloudConfig))
    dex = _dex(raw.get("dex", {}))
    service = _service(_section(raw, "service", ServiceConfig), daemon)
    exe = _exe(raw)
    if mdb.port is not None and exe.port is not None:
        raise ConfigError(
            "mdb.port and exe.port: a machine has one payment bus; give --mdb or --exe, not both"
        )
    return Config(
        mdb=mdb,
        reader=reader,
        daemon=daemon,
        cloud=cloud,
        dex=dex,
        service=service,
        exe=exe,
        offline=_offline(_section(raw, "offline", Bounds)),
    )


MAX_OFFLINE_LIST_AGE_H = 8760.0


def _offline(bounds: Bounds) -> Bounds:
    """The bounds of offline approvals: each one set, when they are on (0 would be no bound
    at all, or deny everything: the operator must say which)."""
    _range("offline.max_total_value", bounds.max_total_value, 0, MAX_AMOUNT)
    _range("offline.max_vends", bounds.max_vends, 0, MAX_OFFLINE_VENDS)
    if not 0 < bounds.max_list_age_h <= MAX_OFFLINE_LIST_AGE_H:
        raise ConfigError(
            f"offline.max_list_age_h: {bounds.max_list_age_h!r} must be positive hours,"
            f" at most {MAX_OFFLINE_LIST_AGE_H:g}"
        )
    if bounds.enabled:
        for key in ("max_total_value", "max_vends"):
            if not getattr(bounds, key):
                raise ConfigError(f"offline.{key}: must be set (at least 1) when offline.enabled")
    return bounds


def _exe(raw: dict[str, Any]) -> ExeConfig:
    try:
        exe: ExeConfig = _section(raw, "exe", ExeConfig)
    except ValueError as exc:
        raise ConfigError(f"exe.{exc}") from exc  # ExeSettings' messages start with the key
    _port("exe.port", exe.port, PortKind.EXE)
    _choice("exe.mode_bit", exe.mode_bit, tuple(m.value for m in ModeBit))
    _range("exe.realtime_priority", exe.realtime_priority, 0, 99)
    if exe.approval_timeout < MIN_APPROVAL_TIMEOUT_S:
        raise ConfigError(
            f"exe.approval_timeout: {exe.approval_timeout!r} leaves the cloud no time;"
            f" at least {MIN_APPROVAL_TIMEOUT_S} s"
        )
    return exe


def _service(service: ServiceConfig, daemon: DaemonConfig) -> ServiceConfig:
    if service.out_of_service_after_s <= 0:
        raise ConfigError(
            f"service.out_of_service_after_s: {service.out_of_service_after_s!r}"
            " must be a positive number of seconds"
        )
    if service.low_change_below is not None:
        _range("service.low_change_below", service.low_change_below, 1, 2**31)
    # A sale older than the retention is pruned: a longer window could not see it.
    kept_h = daemon.sales_retention_days * 24
    if not 0 < service.no_sales_window_h <= kept_h:
        raise ConfigError(
            f"service.no_sales_window_h: {service.no_sales_window_h!r} must be positive hours,"
            f" at most daemon.sales_retention_days * 24 ({kept_h})"
        )
    return service


DEX_PROTOCOLS = ("ucs", "ddcmp")
UPLOAD_ENCODINGS = ("latin-1", "cp1251", "ascii")
SCHEDULE_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


def _dex(values: Any) -> DexConfig:
    if isinstance(values, dict) and isinstance(values.get("schedule"), list):
        schedule = values["schedule"]
        if not all(isinstance(t, str) and SCHEDULE_TIME.fullmatch(t) for t in schedule):
            raise ConfigError(f'dex.schedule: {schedule!r} must be a list of "HH:MM" times')
        values = {**values, "schedule": tuple(schedule)}
    elif isinstance(values, dict) and "schedule" in values:
        raise ConfigError('dex.schedule: must be a list of "HH:MM" times, e.g. ["02:00"]')
    dex: DexConfig = _section({"dex": values}, "dex", DexConfig)
    _port("dex.port", dex.port, PortKind.DEX)
    _choice("dex.protocol", dex.protocol, DEX_PROTOCOLS)
    _choice("dex.evadts_port", dex.evadts_port, (1, 2))
    _choice("dex.upload_encoding", dex.upload_encoding, UPLOAD_ENCODINGS)
    _range("dex.keep", dex.keep, 1, 10000)
    if dex.interval_s is not None and dex.interval_s < 1:
        raise ConfigError(f"dex.interval_s: {dex.interval_s!r} must be at least 1 second")
    if len(dex.comm_id) != 10 or not dex.comm_id.isascii():
        raise ConfigError(f"dex.comm_id: {dex.comm_id!r} must be 10 ASCII characters")
    return dex


def _port(key: str, url: str | None, kind: PortKind) -> None:
    if url is not None:
        try:
            parse_port_url(url, kind)
        except PortError as exc:
            raise ConfigError(f"{key}: {exc}") from exc


def _listed(raw: dict[str, Any], section: str, key: str) -> dict[str, Any]:
    """``raw`` with ``[section] key``, a TOML array, as the tuple the dataclass holds."""
    values = raw.get(section)
    if not isinstance(values, dict) or key not in values:
        return raw
    if not isinstance(values[key], list):
        raise ConfigError(f"{section}.{key}: {values[key]!r} must be a list")
    return {**raw, section: {**values, key: tuple(values[key])}}


def _cloud(cloud: CloudConfig) -> CloudConfig:
    from vmc.cloud.signing import CommandKeys

    CommandKeys.from_config(cloud.command_keys)
    if cloud.url is None:
        return cloud
    from vmc.cloud.sync import validate_mqtt_url

    validate_mqtt_url(cloud.url)
    parts = urlsplit(cloud.url)
    if parts.username is not None:  # not echoed: it may hold the password
        raise ConfigError("cloud.url: has a user in it; give cloud.username and cloud.password")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(f"cloud.url: {cloud.url!r} must be just mqtt[s]://HOST[:PORT]")
    if cloud.device_id is None:
        raise ConfigError("cloud.device_id: required with cloud.url; give --device-id ID")
    if not DEVICE_ID.fullmatch(cloud.device_id):
        raise ConfigError(
            f"cloud.device_id: {cloud.device_id!r} is not allowed; use 1-64 of A-Z a-z 0-9 _ . -"
        )
    if not DEVICE_ID.fullmatch(cloud.topic_prefix):
        raise ConfigError(f"cloud.topic_prefix: {cloud.topic_prefix!r}: use A-Z a-z 0-9 _ . -")
    if cloud.lock_timeout <= 0:
        raise ConfigError(f"cloud.lock_timeout: {cloud.lock_timeout!r} must be positive seconds")
    _range("cloud.keepalive", cloud.keepalive, 5, 3600)
    _choice("cloud.mqtt_version", cloud.mqtt_version, MQTT_VERSIONS)
    if (cloud.cert_file is None) != (cloud.key_file is None):
        raise ConfigError("cloud.cert_file and cloud.key_file go together")
    tls_files = {"ca_file": cloud.ca_file, "cert_file": cloud.cert_file, "key_file": cloud.key_file}
    for key, path in tls_files.items():
        if path is not None and parts.scheme != "mqtts":
            raise ConfigError(f"cloud.{key}: {path!r} is for TLS; give an mqtts:// url")
    return cloud


SOCKET_NAME = "vmcd.sock"


def control_socket_path(daemon: DaemonConfig, environ: Mapping[str, str]) -> Path:
    """Where vmcd serves its control socket, and so where ``vmctl`` looks for it:
    ``daemon.control_socket`` if set, else ``$RUNTIME_DIRECTORY/vmcd.sock`` (systemd's
    ``RuntimeDirectory=``; its first entry), else ``<state_dir>/vmcd.sock``."""
    if daemon.control_socket is not None:
        return daemon.control_socket
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / SOCKET_NAME
    return daemon.state_dir / SOCKET_NAME


def check_host(config: Config) -> None:
    """Start-up checks against this machine, so vmcd fails at once and not in a restart loop.

    The state directory is created if missing and must take new files and keep its old ones
    writable (a journal left by a run as root is a typical first-day mistake); the TLS files
    must be readable PEM. Port devices are not checked here: vmcd waits for a missing one.
    """
    _check_state_dir(config.daemon.state_dir)
    cloud = config.cloud
    if cloud.url is not None and cloud.device_key_file is not None:
        from vmc.cloud.signing import DeviceKey

        DeviceKey.load(cloud.device_key_file)
    if cloud.url is not None and urlsplit(cloud.url).scheme == "mqtts":
        from vmc.cloud.sync import tls_context

        tls_context(cloud.ca_file, cloud.cert_file, cloud.key_file)


def _check_state_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"daemon.state_dir: {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"daemon.state_dir: cannot create {path}: {exc.strerror}") from exc
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"daemon.state_dir: cannot write in {path}: {exc.strerror}") from exc
    for entry in sorted(path.iterdir()):
        if not os.access(entry, os.W_OK):
            raise ConfigError(
                f"daemon.state_dir: {entry} is not writable by uid {os.geteuid()}; chown it"
            )


def _reader(values: Any, mdb: MdbConfig) -> ReaderConfig:
    if not isinstance(values, dict):
        raise ConfigError("[reader] must be a table")
    for key, value in values.items():
        if key not in _READER_KEYS:
            raise ConfigError(f"reader.{key}: unknown key; allowed: {', '.join(_READER_KEYS)}")
        _typed(f"reader.{key}", value, _READER_KEYS[key])
    checks = {
        "minor_decimals": (0, 4),
        "scale_factor": (1, 255),
        "decimal_places": (0, 4),
        "max_response_time": (1, 255),
        "software_version": (0, 0xFFFF),
        "revalue_limit": (0, 2**31),
    }
    for key, (low, high) in checks.items():
        if key in values:
            _range(f"reader.{key}", values[key], low, high)
    for key in ("session_timeout", "approval_timeout", "vend_result_timeout"):
        if key in values and values[key] <= 0:
            raise ConfigError(f"reader.{key}: {values[key]!r} must be a positive number of seconds")
    if values.get("approval_timeout", MIN_APPROVAL_TIMEOUT_S) < MIN_APPROVAL_TIMEOUT_S:
        raise ConfigError(
            f"reader.approval_timeout: {values['approval_timeout']!r} leaves the cloud no time;"
            f" at least {MIN_APPROVAL_TIMEOUT_S} s"
        )
    for key, width in (("manufacturer", 3), ("serial", 12), ("model", 12)):
        text = values.get(key)
        if text is not None and (len(text) > width or not text.isascii()):
            raise ConfigError(f"reader.{key}: {text!r} must be ASCII, at most {width} characters")
    try:
        return ReaderConfig(address=mdb.address, level=mdb.level, **values)
    except ValueError as exc:
        raise ConfigError(f"reader.{exc}") from exc  # its messages start with the key


def _section(raw: dict[str, Any], name: str, cls: type[Any]) -> Any:
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{name}.{key}: unknown key; allowed: {', '.join(fields)}")
        if fields[key] in ("Path", "Path | None"):
            if not isinstance(value, str | Path) or not str(value):
                raise ConfigError(f"{name}.{key}: {value!r} must be a path string")
            values = {**values, key: Path(value)}
        else:
            _typed(f"{name}.{key}", value, fields[key])
    return cls(**values)


_TYPE_NAMES = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "tuple[str, ...]": (tuple,),
}


def _typed(key: str, value: Any, annotation: Any) -> None:
    names = [part.strip() for part in str(annotation).split("|")]
    if value is None and "None" in names:
        return
    allowed = tuple(t for n in names for t in _TYPE_NAMES.get(n, ()))
    bad_bool = isinstance(value, bool) and bool not in allowed
    if not isinstance(value, allowed) or bad_bool:
        wanted = " or ".join(n for n in names if n != "None")
        raise ConfigError(f"{key}: {value!r} is not allowed; expected {wanted}")


def _choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {choices}")


def _range(key: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key}: {value!r} is not allowed; expected an integer {low}..{high}")


def _zone(key: str, name: str) -> None:
    try:
        ZoneInfo(name)
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise ConfigError(
            f"{key}: {name!r} is not a known IANA time zone, e.g. Europe/Berlin"
        ) from None
