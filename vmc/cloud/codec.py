"""CBOR encoding of the cloud contract, and strict decoding of commands.

A command that cannot be decoded never reaches the engine: it becomes a :class:`CommandError`
with a code, a message and (when it could be read) the command's id, which the caller answers
and otherwise ignores. The payload's size is bounded before decoding; cbor2 bounds its nesting.
"""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from typing import Any, NoReturn, TypeGuard

import cbor2

from protocols.errors import VmcError
from vmc.cloud import messages as m
from vmc.offline import Limit

MAX_COMMAND_BYTES = 16 * 1024
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 256
MAX_AMOUNT = 2**32 - 1


class CommandError(VmcError):
    """A command that cannot be carried out as sent; answered with ``code``."""

    def __init__(self, code: m.ErrorCode, message: str, command_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command_id = command_id

    def reply(self) -> m.Reply:
        return m.Reply(self.command_id, False, self.code, self.message)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode_event(event: m.Event, *, event_id: str, seq: int, at: float) -> bytes:
    body = {f.name: _plain(getattr(event, f.name)) for f in dataclasses.fields(event)}
    head = {"v": m.CONTRACT_VERSION, "id": event_id, "seq": seq, "type": m.EVENT_TYPES[type(event)]}
    return cbor2.dumps({**head, "at": at, **body})


def encode_reply(reply: m.Reply, *, at: float) -> bytes:
    return cbor2.dumps(
        {
            "v": m.CONTRACT_VERSION,
            "id": reply.command_id,
            "ok": reply.ok,
            "code": None if reply.code is None else reply.code.value,
            "message": reply.message,
            "result": _plain(reply.result),
            "at": at,
        }
    )


def encode_map(payload: dict[str, Any]) -> bytes:
    return cbor2.dumps({"v": m.CONTRACT_VERSION, **_plain(payload)})


MAX_STOCK_LINES = 1024
TXN_PAGE = 100
MAX_TXN_PAGE = 500
"""Transactions per ``txn.query`` reply: by default, and at most (about 400 bytes each)."""
MAX_SELECTIONS = 1024
MAX_QUANTITY = 10**9
MAX_ALLOWED_REFS = 1024
MAX_OFFLINE_VENDS = 10**6
MAX_VERSION = 2**53 - 1


def decode_command(payload: bytes) -> m.AnyCommand:
    """Decode and validate one command; anything wrong raises :class:`CommandError`."""
    return command_from_map(decode_map(payload))


def decode_map(payload: bytes) -> dict[Any, Any]:
    """A command payload's CBOR map, size bounded; kept whole for its signature check."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(m.ErrorCode.MALFORMED, f"command is over {MAX_COMMAND_BYTES} bytes")
    try:
        obj = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises many kinds of error on hostile input
        raise CommandError(m.ErrorCode.MALFORMED, f"not valid CBOR: {exc}") from exc
    if not isinstance(obj, dict):
        raise CommandError(m.ErrorCode.MALFORMED, "a command is a CBOR map")
    return obj


def command_from_map(obj: dict[Any, Any]) -> m.AnyCommand:
    """Validate one decoded command map (:func:`decode_map`) into its command."""
    raw_id = obj.get("id")
    cmd_id = raw_id if _is_id(raw_id) else None
    fields = _Fields(obj, cmd_id)
    if cmd_id is None:
        raise CommandError(
            m.ErrorCode.MISSING_FIELD if raw_id is None else m.ErrorCode.BAD_FIELD,
            f"id must be a string of 1..{MAX_ID_LENGTH} characters",
        )
    version = obj.get("v", m.CONTRACT_VERSION)
    if type(version) is not int or version != m.CONTRACT_VERSION:
        raise CommandError(
            m.ErrorCode.UNSUPPORTED_VERSION, f"contract version {version!r} is not 1", cmd_id
        )
    op = fields.text("op")
    if op not in set(m.Op):
        raise CommandError(m.ErrorCode.UNKNOWN_OP, f"unknown op {op!r}", cmd_id)
    expires = fields.number("expires")
    if op == m.Op.LOCK:
        return m.Lock(
            cmd_id,
            expires,
            ref=fields.text("ref", required=False),
            limit=fields.amount("limit", required=False),
            timeout_s=fields.positive("timeout_s", required=False),
            vend_type=fields.vend_type(),
            medium=fields.medium(),
            surcharge=fields.amount("surcharge", required=False) or 0,
        )
    if op == m.Op.VOUCHER:
        return m.Voucher(
            cmd_id,
            expires,
            fields.name("voucher_id"),
            selections=fields.selections("selections"),
            value=fields.amount("value", required=False, least=1),
            timeout_s=fields.positive("timeout_s", required=False),
            ref=fields.text("ref", required=False),
            medium=fields.medium(),
            surcharge=fields.amount("surcharge", required=False) or 0,
        )
    if op == m.Op.CREDIT:
        amount = fields.amount("amount", least=1)
        assert amount is not None
        return m.Credit(
            cmd_id,
            expires,
            fields.name("credit_id"),
            amount,
            timeout_s=fields.positive("timeout_s", required=False),
            ref=fields.text("ref", required=False),
            medium=fields.medium(),
            surcharge=fields.amount("surcharge", required=False) or 0,
        )
    if op == m.Op.UNLOCK:
        return m.Unlock(cmd_id, expires, fields.text("txn_id"))
    if op == m.Op.PAID:
        amount = fields.amount("amount")
        assert amount is not None
        return m.Paid(cmd_id, expires, fields.text("txn_id"), amount)
    if op == m.Op.DENY:
        return m.Deny(cmd_id, expires, fields.text("txn_id"), fields.text("reason", False) or "")
    if op == m.Op.PLANOGRAM_SET:
        return m.SetPlanogram(cmd_id, expires, fields.mapping("planogram"))
    if op == m.Op.STOCK_REFILL:
        return m.Refill(cmd_id, expires, fields.stock_lines("lines", "amount", signed=True))
    if op == m.Op.STOCK_INVENTORY:
        return m.TakeInventory(cmd_id, expires, fields.stock_lines("lines", "level", signed=False))
    if op == m.Op.STOCK_RESTOCK:
        return m.RestockToPar(cmd_id, expires, fields.flag("collect"))
    if op == m.Op.CASH_COLLECT:
        return m.CashCollect(cmd_id, expires)
    if op == m.Op.SALES_QUERY:
        return m.SalesQuery(
            cmd_id,
            expires,
            fields.text("from"),
            fields.text("to", required=False),
            fields.selection("selection"),
        )
    if op == m.Op.DATA_REQUEST:
        report, config = fields.flag("report"), fields.flag("config")
        if not (report or config):
            raise CommandError(
                m.ErrorCode.MISSING_FIELD, "report or config must be true (or both)", cmd_id
            )
        return m.DataRequest(cmd_id, expires, fields.request_id() or cmd_id, report, config)
    if op == m.Op.STATUS_CHECK:
        return m.CheckStatus(cmd_id, expires)
    if op == m.Op.STOCK_QUERY:
        return m.StockQuery(cmd_id, expires, fields.conditions("conditions"))
    if op == m.Op.TXN_QUERY:
        return m.TxnQuery(
            cmd_id,
            expires,
            fields.text("from"),
            fields.text("to", required=False),
            fields.selection("selection"),
            fields.ident("after"),
            fields.count("limit", default=TXN_PAGE, most=MAX_TXN_PAGE),
        )
    if op == m.Op.REFUND:
        return m.Refund(
            cmd_id,
            expires,
            fields.text("txn_id"),
            amount=fields.amount("amount", required=False, least=1),
            reason=fields.text("reason", required=False) or "",
            refund_id=fields.ident("refund_id"),
        )
    if op == m.Op.OFFLINE_ALLOW:
        return m.OfflineAllow(
            cmd_id,
            expires,
            fields.count("version", default=0, most=MAX_VERSION) or fields.missing("version"),
            fields.number("issued_at"),
            fields.allow_list("refs"),
        )
    raise CommandError(m.ErrorCode.UNKNOWN_OP, f"unknown op {op!r}", cmd_id)


def _is_id(value: object) -> TypeGuard[str]:
    """A command id, or another id the backend chooses: text of 1..MAX_ID_LENGTH characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


class _Fields:
    """Typed access to a command's fields; errors name the field."""

    def __init__(self, obj: dict[Any, Any], cmd_id: str | None) -> None:
        self.obj = obj
        self.cmd_id = cmd_id

    def _get(self, name: str, required: bool) -> Any:
        if name not in self.obj or self.obj[name] is None:
            if required:
                raise CommandError(m.ErrorCode.MISSING_FIELD, f"{name} is required", self.cmd_id)
            return None
        return self.obj[name]

    def _bad(self, name: str, wanted: str) -> CommandError:
        return CommandError(m.ErrorCode.BAD_FIELD, f"{name} must be {wanted}", self.cmd_id)

    def text(self, name: str, required: bool = True) -> Any:
        value = self._get(name, required)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT_LENGTH):
            raise self._bad(name, f"a string of at most {MAX_TEXT_LENGTH} characters")
        return value

    def name(self, name: str) -> str:
        """A required id the backend chose (a voucher's, a credit's): text, not empty."""
        value = self.text(name)
        if not value:
            raise self._bad(name, f"a string of 1..{MAX_TEXT_LENGTH} characters")
        return str(value)

    def number(self, name: str, required: bool = True) -> Any:
        value = self._get(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(name, "a number")
        try:
            number = float(value)
        except OverflowError:
            raise self._bad(name, "a finite number") from None
        if not math.isfinite(number):
            raise self._bad(name, "a finite number")
        return number

    def positive(self, name: str, required: bool = True) -> float | None:
        value = self.number(name, required)
        if value is not None and not 0 < value <= 86400:
            raise self._bad(name, "a number of seconds in (0, 86400]")
        return value  # type: ignore[no-any-return]

    def amount(self, name: str, required: bool = True, least: int = 0) -> int | None:
        value = self._get(name, required)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not least <= value <= MAX_AMOUNT
        ):
            raise self._bad(name, f"an integer count of minor units in {least}..{MAX_AMOUNT}")
        return value

    def ident(self, name: str) -> str | None:
        """An optional id the backend chose, bounded as a command id is."""
        value = self._get(name, False)
        if value is not None and not _is_id(value):
            raise self._bad(name, f"a string of 1..{MAX_ID_LENGTH} characters")
        return value

    def flag(self, name: str) -> bool:
        """An optional boolean; absent (or null) is false."""
        value = self._get(name, False)
        if value is not None and not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return bool(value)

    def mapping(self, name: str) -> dict[str, object]:
        value = self._get(name, True)
        if not isinstance(value, dict):
            raise self._bad(name, "a map")
        return value

    def stock_lines(self, name: str, quantity: str, *, signed: bool) -> tuple[m.StockLine, ...]:
        """``[{selection: N | ingredient: ID, <quantity>: N}, ...]``; errors name the line."""
        value = self._get(name, True)
        if not isinstance(value, list) or not 0 < len(value) <= MAX_STOCK_LINES:
            raise self._bad(name, f"a list of 1..{MAX_STOCK_LINES} maps")
        low = -MAX_QUANTITY if signed else 0
        lines: list[m.StockLine] = []
        for index, item in enumerate(value):
            at = f"{name}[{index}]"
            if not isinstance(item, dict) or set(item) - {"selection", "ingredient", quantity}:
                raise self._bad(at, f"a map of selection or ingredient, and {quantity}")
            selection, ingredient = item.get("selection"), item.get("ingredient")
            if (selection is None) == (ingredient is None):
                raise self._bad(at, "a map naming exactly one of selection and ingredient")
            if selection is not None and (
                type(selection) is not int or not 0 <= selection <= 65535
            ):
                raise self._bad(f"{at}.selection", "an item number in 0..65535")
            if ingredient is not None and (
                not isinstance(ingredient, str) or not 0 < len(ingredient) <= MAX_ID_LENGTH
            ):
                raise self._bad(f"{at}.ingredient", f"a string of 1..{MAX_ID_LENGTH} characters")
            count = item.get(quantity)
            if count is None:
                raise CommandError(
                    m.ErrorCode.MISSING_FIELD, f"{at}.{quantity} is required", self.cmd_id
                )
            if type(count) is not int or not low <= count <= MAX_QUANTITY:
                raise self._bad(f"{at}.{quantity}", f"an integer in {low}..{MAX_QUANTITY}")
            lines.append(m.StockLine(selection, ingredient, count))
        return tuple(lines)

    def conditions(self, name: str) -> frozenset[str] | None:
        """An optional list of stock conditions (``ok``, ``low``, ``empty``)."""
        value = self._get(name, False)
        if value is None:
            return None
        allowed = {"ok", "low", "empty"}
        if not isinstance(value, list) or not value or not set(value) <= allowed:
            raise self._bad(name, "a non-empty list of ok, low, empty")
        return frozenset(value)

    def count(self, name: str, *, default: int, most: int) -> int:
        """An optional count in 1..``most``; absent is ``default``."""
        value = self._get(name, False)
        if value is None:
            return default
        if type(value) is not int or not 1 <= value <= most:
            raise self._bad(name, f"an integer in 1..{most}")
        return value

    def missing(self, name: str) -> NoReturn:
        raise CommandError(m.ErrorCode.MISSING_FIELD, f"{name} is required", self.cmd_id)

    def allow_list(self, name: str) -> tuple[Limit, ...]:
        """``[{ref, max_vends, max_value}, ...]``, each reference once; errors name the entry."""
        value = self._get(name, True)
        if not isinstance(value, list) or len(value) > MAX_ALLOWED_REFS:
            raise self._bad(name, f"a list of at most {MAX_ALLOWED_REFS} maps")
        limits: dict[str, Limit] = {}
        for index, item in enumerate(value):
            at = f"{name}[{index}]"
            if not isinstance(item, dict) or set(item) - {"ref", "max_vends", "max_value"}:
                raise self._bad(at, "a map of ref, max_vends and max_value")
            for key in ("ref", "max_vends", "max_value"):
                if item.get(key) is None:
                    raise CommandError(
                        m.ErrorCode.MISSING_FIELD, f"{at}.{key} is required", self.cmd_id
                    )
            ref, vends, worth = item["ref"], item["max_vends"], item["max_value"]
            if not isinstance(ref, str) or not 0 < len(ref) <= MAX_TEXT_LENGTH:
                raise self._bad(f"{at}.ref", f"a string of 1..{MAX_TEXT_LENGTH} characters")
            if ref in limits:
                raise self._bad(f"{at}.ref", f"given once; {ref!r} is there twice")
            if type(vends) is not int or not 1 <= vends <= MAX_OFFLINE_VENDS:
                raise self._bad(f"{at}.max_vends", f"an integer in 1..{MAX_OFFLINE_VENDS}")
            if type(worth) is not int or not 1 <= worth <= MAX_AMOUNT:
                raise self._bad(
                    f"{at}.max_value", f"an integer count of minor units in 1..{MAX_AMOUNT}"
                )
            limits[ref] = Limit(ref, vends, worth)
        return tuple(limits.values())

    def request_id(self) -> str | None:
        """A data request's id, the backend's; ``local:`` ones are ``vmctl``'s."""
        value = self._get("request_id", False)
        if value is not None and (
            not isinstance(value, str)
            or not 0 < len(value) <= MAX_ID_LENGTH
            or value.startswith(m.LOCAL_PREFIX)
        ):
            wanted = f"a string of 1..{MAX_ID_LENGTH} characters not starting {m.LOCAL_PREFIX}"
            raise self._bad("request_id", wanted)
        return value

    def selection(self, name: str) -> int | None:
        value = self._get(name, False)
        if value is not None and (type(value) is not int or not 0 <= value <= 65535):
            raise self._bad(name, "an item number in 0..65535")
        return value

    def selections(self, name: str) -> tuple[int, ...] | None:
        """One item number or a list of them (sorted, each once); absent: every selection."""
        value = self._get(name, False)
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        if not 0 < len(items) <= MAX_SELECTIONS or any(
            type(n) is not int or not 0 <= n <= 65535 for n in items
        ):
            raise self._bad(name, f"an item number in 0..65535 or a list of 1..{MAX_SELECTIONS}")
        return tuple(sorted(set(items)))

    def medium(self) -> m.PaymentMedium | None:
        value = self.text("medium", required=False)
        if value is None:
            return None
        try:
            return m.PaymentMedium(value)
        except ValueError:
            allowed = ", ".join(v.value for v in m.PaymentMedium)
            raise self._bad("medium", f"one of {allowed}") from None

    def vend_type(self) -> m.VendType:
        value = self.text("vend_type", required=False)
        if value is None:
            return m.VendType.PAID
        try:
            return m.VendType(value)
        except ValueError:
            allowed = ", ".join(v.value for v in m.VendType)
            raise self._bad("vend_type", f"one of {allowed}") from None
