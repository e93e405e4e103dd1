"""The bridge's TOML configuration: the broker, the database and each third party.

Every mistake is a :class:`ConfigError` whose text is one line naming the key, which the CLI
prints as it is. Secrets are kept as given and never logged or shown.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import protocols.errors

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_LISTEN = "127.0.0.1:8080"


class ConfigError(Exception):
    """A configuration mistake, one line."""


class EventsMode(StrEnum):
    """How instances on one database divide the machines' events (docs/bridge.md §7)."""

    SHARED = "shared"  # an MQTT shared subscription deals each event to one instance
    ALL = "all"  # every instance takes every event; the database keeps each once


@dataclass(frozen=True, slots=True)
class ThirdParty:
    """One integrator: its own callback base URL, the machines it may use, its credentials.

    ``api_keys`` and ``users`` are what it presents to the bridge (``X-API-Key``, HTTP basic);
    ``outbound_*`` what the bridge presents when it calls the third party back.
    """

    name: str
    base_url: str
    machines: frozenset[str] | None = None
    api_keys: tuple[str, ...] = ()
    users: tuple[tuple[str, str], ...] = ()
    outbound_api_key: str | None = None
    outbound_user: tuple[str, str] | None = None

    def owns(self, machine: str) -> bool:
        return self.machines is None or machine in self.machines

    def __repr__(self) -> str:  # never the secrets
        return f"ThirdParty({self.name!r}, {self.base_url!r})"


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    mqtt_host: str
    mqtt_port: int
    database: Path | str
    """A SQLite file, or a PostgreSQL URL."""
    third_parties: tuple[ThirdParty, ...]
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    topic_prefix: str = "vmc"
    client_id: str = "vmc-bridge"
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    lock_timeout: float = 60.0
    """Seconds a lock waits for a selection (the lock's ``timeout_s``)."""
    reply_timeout: float = 5.0
    """Seconds the bridge waits for a machine's reply before answering the HTTP call."""
    give_up_after: float = 86400.0
    """Seconds a callback is retried before it is listed as undeliverable."""
    command_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    """Signs every command (``kid``, ``sig``), for machines with ``cloud.command_keys``."""
    events: EventsMode = EventsMode.ALL
    share_group: str = "vmc-bridge"
    """The shared subscription's group: instances on one database must share it."""
    member_lease: float = 15.0
    """Seconds after its last renewal that a silent instance's events session is adopted."""

    def owners(self, machine: str) -> tuple[ThirdParty, ...]:
        return tuple(t for t in self.third_parties if t.owns(machine))

    def third_party(self, name: str) -> ThirdParty:
        return next(t for t in self.third_parties if t.name == name)


def load(path: str | Path) -> BridgeConfig:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read it: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"not TOML: {exc}") from None
    return parse(doc, base=Path(path).parent)


def parse(doc: dict[str, Any], base: Path = Path()) -> BridgeConfig:
    """The configuration from a decoded TOML document; relative paths are from ``base``."""
    unknown = set(doc) - {"bridge", "third_party"}
    if unknown:
        raise ConfigError(f"unknown table {sorted(unknown)[0]!r}")
    table = _Table(doc.get("bridge", {}), "bridge")
    host, port = _mqtt_url(table.text("mqtt", required=True))
    listen_host, listen_port = _listen(table.text("listen") or DEFAULT_LISTEN)
    parties = doc.get("third_party")
    if not isinstance(parties, list) or not parties:
        raise ConfigError("third_party: at least one [[third_party]] table is needed")
    third_parties = tuple(_third_party(p, i) for i, p in enumerate(parties))
    names = [t.name for t in third_parties]
    if len(set(names)) != len(names):
        raise ConfigError("third_party: each name must be given once")
    config = BridgeConfig(
        mqtt_host=host,
        mqtt_port=port,
        database=_database(table.text("database") or "sqlite:///vmc-bridge.sqlite3", base),
        third_parties=third_parties,
        listen_host=listen_host,
        listen_port=listen_port,
        topic_prefix=table.text("topic_prefix") or "vmc",
        client_id=table.text("client_id") or "vmc-bridge",
        mqtt_username=table.text("mqtt_username"),
        mqtt_password=table.text("mqtt_password"),
        lock_timeout=table.seconds("lock_timeout", 60.0, most=86400.0),
        reply_timeout=table.seconds("reply_timeout", 5.0, most=60.0),
        give_up_after=table.seconds("give_up_after", 86400.0, most=30 * 86400.0),
        command_key=_command_key(table.text("command_key_file"), base),
        events=_events_mode(table.text("events")),
        share_group=_share_group(table.text("share_group")),
        member_lease=table.seconds("member_lease", 15.0, most=3600.0),
    )
    table.done()
    return config


def _command_key(path: str | None, base: Path) -> Ed25519PrivateKey | None:
    if path is None:
        return None
    from vmc.cloud.signing import load_private_key

    try:
        return load_private_key(str(base / path), "bridge.command_key_file")
    except protocols.errors.ConfigError as exc:
        raise ConfigError(str(exc)) from None


class _Table:
    """Typed reads of one table; keys it was not asked for are mistakes."""

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a table")
        self.raw = raw
        self.where = where
        self.read: set[str] = set()

    def _get(self, key: str) -> Any:
        self.read.add(key)
        return self.raw.get(key)

    def text(self, key: str, required: bool = False) -> str | None:
        value = self._get(key)
        if value is None and required:
            raise ConfigError(f"{self.where}.{key}: required")
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{self.where}.{key}: must be a non-empty string")
        return value

    def texts(self, key: str) -> tuple[str, ...] | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.where}.{key}: must be a list of non-empty strings")
        return tuple(value)

    def seconds(self, key: str, default: float, most: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= most:
            raise ConfigError(f"{self.where}.{key}: must be a number of seconds in (0, {most:g}]")
        return float(value)

    def done(self) -> None:
        extra = set(self.raw) - self.read
        if extra:
            raise ConfigError(f"{self.where}.{sorted(extra)[0]}: unknown key")


def _third_party(raw: object, index: int) -> ThirdParty:
    table = _Table(raw, f"third_party[{index}]")
    name = table.text("name", required=True)
    base_url = table.text("base_url", required=True)
    assert name is not None
    assert base_url is not None
    if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).hostname:
        raise ConfigError(f"{table.where}.base_url: must be an http:// or https:// URL")
    machines = table.texts("machines")
    users = table._get("users") or {}
    if not isinstance(users, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in users.items()
    ):
        raise ConfigError(f'{table.where}.users: must be a table of user = "password"')
    api_keys = table.texts("api_keys") or ()
    if not api_keys and not users:
        raise ConfigError(f"{table.where}: give api_keys or users (how it authenticates)")
    out_key = table.text("outbound_api_key")
    out_user, out_password = table.text("outbound_username"), table.text("outbound_password")
    if (out_user is None) != (out_password is None):
        raise ConfigError(f"{table.where}: set outbound_username and outbound_password together")
    party = ThirdParty(
        name=name,
        base_url=base_url.rstrip("/"),
        machines=None if machines is None else frozenset(machines),
        api_keys=api_keys,
        users=tuple(sorted(users.items())),
        outbound_api_key=out_key,
        outbound_user=None
        if out_user is None or out_password is None
        else (out_user, out_password),
    )
    table.done()
    return party


def _mqtt_url(url: str | None) -> tuple[str, int]:
    parts = urlsplit(url or "")
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigError("bridge.mqtt: must be mqtt://HOST[:PORT]")
    try:
        return parts.hostname, parts.port or 1883
    except ValueError:
        raise ConfigError("bridge.mqtt: the port must be a number in 0..65535") from None


def _events_mode(text: str | None) -> EventsMode:
    try:
        return EventsMode(text or EventsMode.ALL)
    except ValueError:
        raise ConfigError('bridge.events: must be "shared" or "all"') from None


def _share_group(text: str | None) -> str:
    if text is not None and any(c in text for c in "/+#"):
        raise ConfigError("bridge.share_group: must not contain /, + or #")
    return text or "vmc-bridge"


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("bridge.listen: must be HOST:PORT")
    return host, int(port)


def _database(url: str, base: Path) -> Path | str:
    if url.startswith(("postgresql://", "postgres://")):
        return url
    if not url.startswith("sqlite:///"):
        raise ConfigError(
            "bridge.database: must be sqlite:///PATH (relative), sqlite:////PATH or postgresql://..."
        )
    path = Path(url.removeprefix("sqlite:///"))
    return path if path.is_absolute() else base / path
