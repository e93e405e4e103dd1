"""Command signatures (vmc.cloud.signing): what is signed, who is trusted, what is refused."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.errors import ConfigError
from vmc.cloud import codec, signing
from vmc.cloud import messages as m
from vmc.cloud.signing import CommandKeys, SignatureFault
from vmc.config import load_config

NOW = 1_767_261_600.0
BACKEND = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def _paid(**fields: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "id": "P1",
        "op": "paid",
        "expires": NOW + 10,
        "txn_id": "t1",
        "amount": 250,
        **fields,
    }


def _keys(*private: Ed25519PrivateKey) -> CommandKeys:
    return CommandKeys([p.public_key() for p in private])


def _check(keys: CommandKeys, body: dict[str, Any]) -> SignatureFault | None:
    """The verdict on ``body`` as the device sees it: sent, decoded, checked."""
    obj = codec.decode_map(cbor2.dumps(body))
    cmd = codec.command_from_map(obj)
    refusal = keys.check(obj, cmd.expires, NOW)
    return None if refusal is None else refusal.fault


def test_valid_signature_is_accepted_and_the_command_still_decodes() -> None:
    signed = signing.sign(_paid(), BACKEND)
    assert isinstance(signed["sig"], bytes)
    assert len(signed["sig"]) == 64
    assert signed["kid"] == signing.key_id(BACKEND.public_key())
    assert _check(_keys(BACKEND), signed) is None
    assert codec.decode_command(cbor2.dumps(signed)) == m.Paid("P1", NOW + 10, "t1", 250)


def test_signature_covers_canonical_cbor_whatever_the_key_order_sent() -> None:
    signed = signing.sign(_paid(), BACKEND)
    shuffled = dict(reversed(list(signed.items())))
    assert _check(_keys(BACKEND), shuffled) is None


@pytest.mark.parametrize("op", sorted(signing.SIGNED_OPS))
def test_missing_signature_is_refused_on_every_op_that_moves_money(op: str) -> None:
    keys = _keys(BACKEND)
    obj = {"id": "C1", "op": op, "expires": NOW + 10}
    refusal = keys.check(obj, NOW + 10, NOW)
    assert refusal is not None
    assert refusal.fault is SignatureFault.MISSING


@pytest.mark.parametrize(
    "op",
    [
        "lock",
        "unlock",
        "deny",
        "sales.query",
        "stock.query",
        "txn.query",
        "data.request",
        "status.check",
    ],
)
def test_ops_that_move_no_money_need_no_signature_but_one_present_is_verified(op: str) -> None:
    keys = _keys(BACKEND)
    obj = {"id": "C1", "op": op, "expires": NOW + 10}
    assert keys.check(obj, NOW + 10, NOW) is None
    assert keys.check(signing.sign(obj, BACKEND), NOW + 10, NOW) is None
    forged = keys.check(signing.sign(obj, OTHER), NOW + 10, NOW)
    assert forged is not None
    assert forged.fault is SignatureFault.UNKNOWN_KEY


def test_signature_by_a_wrong_key_is_refused() -> None:
    keys = _keys(BACKEND)
    assert _check(keys, signing.sign(_paid(), OTHER)) is SignatureFault.UNKNOWN_KEY
    # The forger claims the backend's key id: the signature itself does not verify.
    claimed = _paid(kid=signing.key_id(BACKEND.public_key()))
    claimed["sig"] = OTHER.sign(signing.signed_bytes(claimed))
    assert _check(keys, claimed) is SignatureFault.MISMATCH
    no_kid = _paid()
    no_kid["sig"] = OTHER.sign(signing.signed_bytes(no_kid))
    assert _check(keys, no_kid) is SignatureFault.MISMATCH
    dropped = {k: v for k, v in signing.sign(_paid(), BACKEND).items() if k != "kid"}
    assert _check(keys, dropped) is SignatureFault.MISMATCH  # the kid is signed too


@pytest.mark.parametrize(
    ("field", "value"),
    [("amount", 251), ("txn_id", "t2"), ("expires", NOW + 11), ("op", "refund"), ("v", None)],
)
def test_signature_refuses_a_field_tampered_after_signing(field: str, value: object) -> None:
    tampered = signing.sign(_paid(), BACKEND)
    if value is None:
        del tampered[field]
    else:
        tampered[field] = value
    assert _check(_keys(BACKEND), tampered) is SignatureFault.MISMATCH


def test_signature_refuses_a_field_added_after_signing() -> None:
    added = signing.sign(_paid(), BACKEND) | {"ref": "someone-else"}
    assert _check(_keys(BACKEND), added) is SignatureFault.MISMATCH


def test_replay_under_another_id_is_refused() -> None:
    replayed = signing.sign(_paid(), BACKEND) | {"id": "P2"}
    assert _check(_keys(BACKEND), replayed) is SignatureFault.MISMATCH


def test_replay_protection_refuses_signed_commands_that_outlive_the_id_memory() -> None:
    far = signing.sign(_paid(expires=NOW + signing.MAX_AHEAD_S + 1), BACKEND)
    assert _check(_keys(BACKEND), far) is SignatureFault.EXPIRES_TOO_FAR
    near = signing.sign(_paid(expires=NOW + signing.MAX_AHEAD_S), BACKEND)
    assert _check(_keys(BACKEND), near) is None


@pytest.mark.parametrize("sig", [b"\x00" * 63, b"\x00" * 65, "00" * 64, 7])
def test_malformed_signature_is_refused(sig: object) -> None:
    body = signing.sign(_paid(), BACKEND) | {"sig": sig}
    assert _check(_keys(BACKEND), body) is SignatureFault.MALFORMED
    bad_kid = signing.sign(_paid(), BACKEND) | {"kid": 12}
    assert _check(_keys(BACKEND), bad_kid) is SignatureFault.MALFORMED


def test_signature_key_rotation_old_and_new_both_work_until_the_old_is_removed() -> None:
    old, new = BACKEND, OTHER
    during = _keys(old, new)
    by_old, by_new = signing.sign(_paid(), old), signing.sign(_paid(), new)
    assert _check(during, by_old) is None
    assert _check(during, by_new) is None
    without_kid = _paid()
    without_kid["sig"] = new.sign(signing.signed_bytes(without_kid))
    assert _check(during, without_kid) is None  # no kid: every trusted key is tried
    after = _keys(new)
    assert _check(after, by_new) is None
    assert _check(after, by_old) is SignatureFault.UNKNOWN_KEY


def test_no_keys_means_no_signature_is_checked() -> None:
    keys = CommandKeys()
    assert not keys
    assert _check(keys, _paid()) is None
    assert _check(keys, signing.sign(_paid(), OTHER) | {"amount": 1}) is None


def _text(private: Ed25519PrivateKey) -> str:
    return signing.public_text(private.public_key())


def test_signature_keys_load_from_the_cloud_table(tmp_path: Path) -> None:
    path = tmp_path / "vmc.toml"
    path.write_text(f'[cloud]\ncommand_keys = ["{_text(BACKEND)}", "{_text(OTHER)}"]\n')
    config = load_config(path)
    keys = CommandKeys.from_config(config.cloud.command_keys)
    assert set(keys.keys) == {signing.key_id(p.public_key()) for p in (BACKEND, OTHER)}
    assert load_config(None).cloud.command_keys == ()


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ('"abc"', "cloud.command_keys: 'abc' must be a list"),
        ('["not base64!"]', "cloud.command_keys[0]: not base64"),
        (f'["{base64.b64encode(bytes(31)).decode()}"]', "cloud.command_keys[0]: 31 bytes;"),
        ("[3]", "cloud.command_keys[0]: must be a base64 string"),
        (f'["{_text(BACKEND)}", "{_text(BACKEND)}"]', "cloud.command_keys[1]: the same key"),
    ],
)
def test_bad_signature_key_material_is_a_one_line_config_error(
    tmp_path: Path, value: str, error: str
) -> None:
    path = tmp_path / "vmc.toml"
    path.write_text(f"[cloud]\ncommand_keys = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(error)
    assert "\n" not in str(caught.value)


CLOUD_API = Path(__file__).resolve().parents[2] / "docs" / "cloud-api.md"
VECTOR = re.compile(r"^#### Test vector\n.*?^```text\n(.*?)^```", re.MULTILINE | re.DOTALL)
LABEL = re.compile(r"^(\S[^:]*):\s*(.*)$")


def _documented_vector() -> dict[str, str]:
    """The test vector block of docs/cloud-api.md: ``label: value`` lines, indented lines
    continuing the value before them."""
    found = VECTOR.search(CLOUD_API.read_text())
    assert found is not None, "docs/cloud-api.md has no test vector block"
    fields: dict[str, str] = {}
    label = ""
    for line in found.group(1).splitlines():
        start = LABEL.match(line)
        if start is not None:
            label = start.group(1)
            fields[label] = start.group(2)
        else:
            fields[label] += " " + line.strip()
    return {k: v.strip() for k, v in fields.items()}


def test_documented_signature_vector_is_what_the_code_produces() -> None:
    vector = _documented_vector()
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["seed (hex)"]))
    public = private.public_key()
    assert vector["public key (base64)"] == signing.public_text(public)
    assert vector["kid"] == signing.key_id(public)
    command = json.loads(vector["command (JSON)"])
    without_kid = {k: v for k, v in command.items() if k != "kid"}
    signed = signing.sign(without_kid, private)
    assert {k: v for k, v in signed.items() if k != "sig"} == command
    expected = bytes.fromhex(vector["signed bytes (hex)"].replace(" ", ""))
    assert signing.signed_bytes(signed) == expected
    assert signed["sig"] == bytes.fromhex(vector["sig (hex)"].replace(" ", ""))
    # And the device, trusting the documented key, accepts it as published.
    keys = CommandKeys.from_config([vector["public key (base64)"]])
    assert _check(keys, signed) is None


# --- the device's own signature on what it publishes ----------------------------------------


def test_device_signature_on_a_payload_verifies_and_a_tampered_one_does_not(
    tmp_path: Path,
) -> None:
    key = signing.DeviceKey.create(str(tmp_path / "device.key"))
    assert (tmp_path / "device.key").stat().st_mode & 0o777 == 0o600
    payload = cbor2.dumps({"v": 1, "id": "e1", "seq": 3, "type": "txn.vend", "amount": 150})
    signed = cbor2.loads(key.sign_payload(payload))
    assert signed["kid"] == key.kid
    assert signing.verify(signed, key.public)
    assert signing.verify(cbor2.loads(signing.DeviceKey.load(str(tmp_path / "device.key"))
                                      .sign_payload(payload)), key.public)  # fmt: skip
    assert not signing.verify(signed | {"amount": 1500}, key.public)
    assert not signing.verify(signed, Ed25519PrivateKey.generate().public_key())
    assert not signing.verify({k: v for k, v in signed.items() if k != "sig"}, key.public)


def test_device_signature_key_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    first = signing.DeviceKey.create(str(path))
    with pytest.raises(FileExistsError):
        signing.DeviceKey.create(str(path))
    assert signing.DeviceKey.load(str(path)).kid == first.kid


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "No such file or directory"),
        (b"not a key\n", "not an unencrypted PEM private key"),
        ("ec", "not an Ed25519 key"),
    ],
)
def test_device_signature_key_file_mistakes_are_one_line(
    tmp_path: Path, content: bytes | str | None, error: str
) -> None:
    path = tmp_path / "device.key"
    if content == "ec":
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import (
            Encoding,
            NoEncryption,
            PrivateFormat,
        )

        other = ec.generate_private_key(ec.SECP256R1())
        path.write_bytes(other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        signing.DeviceKey.load(str(path))
    assert str(caught.value) == f"cloud.device_key_file: {path}: {error}"
