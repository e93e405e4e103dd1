"""Ed25519 signatures on the commands that move money or goods.

Broker ACLs say who may publish to a device's ``cmd`` topic; a signature says the backend
wrote the command. The signed bytes are the canonical CBOR (RFC 8949 §4.2.1: map keys sorted
bytewise, shortest forms) of the command map without its ``sig``, so ``id``, ``op`` and
``expires`` are all covered: a captured command cannot be changed, sent under another id, or
used after it expired. The device re-encodes the map it decoded, so a backend signs exactly
the values it sends.

The device may sign what it publishes the same way (:class:`DeviceKey`, ``[cloud]
device_key_file``), so a backend can prove which machine a booking came from.

With keys configured (``[cloud] command_keys``, several during a rotation) a command whose op
is in :data:`SIGNED_OPS` must carry a good signature, and any other command is checked when it
carries one. Without keys nothing is checked and ``sig``/``kid`` are unknown keys the codec
ignores.

``cryptography`` (a large native library) is imported only where a key is made, read or
used: a daemon without keys never loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import cbor2

from protocols.errors import ConfigError
from vmc.cloud import messages as m

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

SIG_FIELD = "sig"
KID_FIELD = "kid"
SIGNATURE_BYTES = 64
KEY_BYTES = 32
KID_HEX = 16
MAX_AHEAD_S = 7 * 86400.0
"""How far ahead a signed command's ``expires`` may be: the device forgets a command id after
7 days, so a command still valid after that could be replayed under its own id."""

SIGNED_OPS = frozenset(
    {
        m.Op.PAID,
        m.Op.VOUCHER,
        m.Op.CREDIT,
        m.Op.REFUND,
        m.Op.PLANOGRAM_SET,
        m.Op.STOCK_REFILL,
        m.Op.STOCK_INVENTORY,
        m.Op.STOCK_RESTOCK,
        m.Op.CASH_COLLECT,
        m.Op.OFFLINE_ALLOW,
    }
)
"""The ops that move money or goods. ``lock`` is not one: nothing is dispensed without a
``paid`` (free and test vends included, at amount 0)."""


class SignatureFault(StrEnum):
    """Why a command's signature was refused (the ``reason`` of ``security.bad_signature``)."""

    MISSING = "missing"
    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    MISMATCH = "mismatch"
    EXPIRES_TOO_FAR = "expires_too_far"


_MESSAGES = {
    SignatureFault.MISSING: "this op must be signed by the backend's key",
    SignatureFault.MALFORMED: f"sig must be a {SIGNATURE_BYTES}-byte string, kid text",
    SignatureFault.UNKNOWN_KEY: "kid names no key this device trusts",
    SignatureFault.MISMATCH: "the signature does not match the command",
    SignatureFault.EXPIRES_TOO_FAR: (
        f"a signed command may not expire more than {MAX_AHEAD_S / 86400:g} days ahead"
    ),
}


def signed_bytes(command: Mapping[str, Any]) -> bytes:
    """What is signed: the canonical CBOR of the command without its signature."""
    return cbor2.dumps({k: v for k, v in command.items() if k != SIG_FIELD}, canonical=True)


def _raw(public: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """A key's id: the first 16 hex digits of the SHA-256 of its 32 raw bytes."""
    return hashlib.sha256(_raw(public)).hexdigest()[:KID_HEX]


def public_text(public: Ed25519PublicKey) -> str:
    """A public key as ``command_keys`` takes it: base64 of its 32 raw bytes."""
    return base64.b64encode(_raw(public)).decode()


def sign(command: Mapping[str, Any], private: Ed25519PrivateKey) -> dict[str, Any]:
    """``command`` with ``kid`` and ``sig`` added: what a backend publishes."""
    body = {k: v for k, v in command.items() if k != SIG_FIELD}
    body[KID_FIELD] = key_id(private.public_key())
    body[SIG_FIELD] = private.sign(signed_bytes(body))
    return body


def sign_payload(payload: bytes, private: Ed25519PrivateKey) -> bytes:
    """An encoded map (a command as published, ``v`` and all) with ``kid`` and ``sig`` added."""
    return cbor2.dumps(sign(cbor2.loads(payload), private))


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused signature: why, and the ``kid`` the command named (if it was text)."""

    fault: SignatureFault
    kid: str | None

    @property
    def message(self) -> str:
        return _MESSAGES[self.fault]


class CommandKeys:
    """The backend's public keys this device trusts, by key id; empty: nothing is checked."""

    def __init__(self, keys: Sequence[Ed25519PublicKey] = ()) -> None:
        self.keys = {key_id(k): k for k in keys}

    @classmethod
    def from_config(cls, texts: Sequence[str]) -> CommandKeys:
        """``[cloud] command_keys``: base64 of 32 raw bytes each; a bad one is a ConfigError."""
        keys: list[Ed25519PublicKey] = []
        for index, text in enumerate(texts):
            where = f"cloud.command_keys[{index}]"
            if not isinstance(text, str):
                raise ConfigError(f"{where}: must be a base64 string")
            try:
                raw = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{where}: not base64") from None
            if len(raw) != KEY_BYTES:
                raise ConfigError(
                    f"{where}: {len(raw)} bytes; an Ed25519 public key is {KEY_BYTES}"
                )
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            key = Ed25519PublicKey.from_public_bytes(raw)
            if key_id(key) in {key_id(k) for k in keys}:
                raise ConfigError(f"{where}: the same key is listed before it")
            keys.append(key)
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def check(self, command: Mapping[str, Any], expires: float, now: float) -> Refusal | None:
        """None when the command may go on: no keys, an op that needs no signature and
        carries none, or a good signature by a trusted key on a command that does not expire
        too far ahead."""
        if not self.keys:
            return None
        sig, kid = command.get(SIG_FIELD), command.get(KID_FIELD)
        shown_kid = kid if isinstance(kid, str) else None
        if sig is None:
            needed = command.get("op") in SIGNED_OPS
            return Refusal(SignatureFault.MISSING, shown_kid) if needed else None
        if not (
            isinstance(sig, bytes)
            and len(sig) == SIGNATURE_BYTES
            and (kid is None or isinstance(kid, str))
        ):
            return Refusal(SignatureFault.MALFORMED, shown_kid)
        candidates = list(self.keys.values()) if kid is None else [self.keys.get(kid)]
        message = signed_bytes(command)
        if not any(key is not None and _verifies(key, sig, message) for key in candidates):
            fault = SignatureFault.UNKNOWN_KEY if candidates == [None] else SignatureFault.MISMATCH
            return Refusal(fault, shown_kid)
        if expires > now + MAX_AHEAD_S:
            return Refusal(SignatureFault.EXPIRES_TOO_FAR, shown_kid)
        return None


def _verifies(key: Ed25519PublicKey, sig: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(sig, message)
    except InvalidSignature:
        return False
    return True


def load_private_key(path: str, key: str) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path`` (PKCS#8, unencrypted, as ``vmctl
    keygen`` or ``openssl genpkey -algorithm ed25519`` write it); a missing, unreadable or
    wrong file is a one-line ConfigError naming the configuration ``key`` and the file."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    where = f"{key}: {path}"
    try:
        with open(path, "rb") as file:
            data = file.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: not an unencrypted PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"{where}: not an Ed25519 key")
    return private


class DeviceKey:
    """The device's own Ed25519 key: every event and reply it publishes carries ``kid`` and
    ``sig`` over the payload's canonical CBOR, as a backend's command does.

    The key lives in a PEM file (PKCS#8, as ``vmctl keygen`` or ``openssl genpkey -algorithm
    ed25519`` write it) that only the daemon's user can read; the backend knows the device by
    its public key, registered once.
    """

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.kid = key_id(self.public)

    @classmethod
    def load(cls, path: str) -> DeviceKey:
        """The key in ``path``; a missing, unreadable or wrong file is a one-line ConfigError."""
        return cls(load_private_key(path, "cloud.device_key_file"))

    @classmethod
    def create(cls, path: str) -> DeviceKey:
        """A new key written to ``path`` (mode 0600, never over an existing file)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        key = cls(Ed25519PrivateKey.generate())
        pem = key.private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        return key

    @property
    def public_text(self) -> str:
        return public_text(self.public)

    def sign_payload(self, payload: bytes) -> bytes:
        """A published payload (a CBOR map) with ``kid`` and ``sig`` added."""
        return sign_payload(payload, self.private)


def verify(message: Mapping[str, Any], public: Ed25519PublicKey) -> bool:
    """Whether ``message`` (a decoded map) carries a good signature by ``public``: what a
    backend checks on a device's events, or a device on a command."""
    sig = message.get(SIG_FIELD)
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_BYTES:
        return False
    return _verifies(public, sig, signed_bytes(message))
