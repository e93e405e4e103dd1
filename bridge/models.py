"""The inbound document's schemas as pydantic models, named as the document names them.

Every property is optional in the document; the models say so, and the served OpenAPI shows
each one with the document's type and format (``WithJsonSchema``) rather than pydantic's
``anyOf``-with-null, so the two can be compared field by field. The texts are ours.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

MAX_TEXT = 256


def _shown(kind: str, **more: object) -> WithJsonSchema:
    return WithJsonSchema({"type": kind, **more})


INT64_SCHEMA = {"type": "integer", "format": "int64"}
STRING_SCHEMA = {"type": "string", "maxLength": MAX_TEXT}
INT64 = Field(ge=-(2**63), le=2**63 - 1)
"""The range the format says; checked, not shown (a bound of 2**63 is no exact JSON number)."""


def _whole(value: Any) -> Any:
    """JSON's integers: ``5`` and ``5.0`` alike (JSON Schema counts both), never ``true``,
    ``"5"`` or ``5.5``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


Whole = Annotated[int, BeforeValidator(_whole)]
Text = Annotated[StrictStr | None, Field(max_length=MAX_TEXT), WithJsonSchema(STRING_SCHEMA)]
Message = Annotated[StrictStr | None, _shown("string")]
Int64 = Annotated[Whole | None, INT64, WithJsonSchema(INT64_SCHEMA)]
Int32 = Annotated[Whole | None, Field(ge=-(2**31), le=2**31 - 1), _shown("integer", format="int32")]
Flag = Annotated[StrictBool | None, _shown("boolean")]
Machines = Annotated[
    list[Annotated[StrictStr, Field(max_length=MAX_TEXT)]] | None,
    _shown("array", items=STRING_SCHEMA),
]
Keys = Annotated[list[Annotated[Whole, INT64]] | None, _shown("array", items=INT64_SCHEMA)]


def about(description: str) -> Any:
    """An optional field (absent: None) with its description."""
    return Field(None, description=description)


class _Body(BaseModel):
    """Every property optional, as in the document; absent is None, but an explicit null is
    refused (the document's types are not nullable)."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                if value is None and name in cls.model_fields:
                    raise ValueError(f"{name} must not be null")
        return data


class StandardResponse(_Body):
    message: Message = about("why it failed; empty on success")
    success: Flag = about("whether the call did what it asked")


class _MachineTxn(_Body):
    """A machine, by either of its two names, and the third party's transaction."""

    id: Text = about("the machine's id (older name of vm_id)")
    vm_id: Text = about("the machine's id")
    txnRef: Text = about("the third party's transaction id")  # noqa: N815


class LockRequest(_MachineTxn):
    balance: Int64 = about("the customer's balance in minor units; 65535 when unknown")


class LockResponse(StandardResponse):
    timeout: Int64 = about("seconds the machine stays locked at most")


class TransactionPaidRequest(_Body):
    discount: Int64 = about("discount in minor units")
    price: Int64 = about("the price before discount and surcharge, in minor units")
    surcharge: Int64 = about("the third party's surcharge in minor units")
    txnRef: Text = about("the third party's transaction id")  # noqa: N815


class TransactionPaidResponse(StandardResponse):
    pass


class CancelRequest(_MachineTxn):
    pass


class CancelResponse(StandardResponse):
    pass


class KeypadItem(_Body):
    id: Int64 = about("the key's index")
    display_value: Text = about("the key's label")
    h: Int32 = about("rows the key spans")
    w: Int32 = about("columns the key spans")
    x: Int32 = about("the key's column, from 0")
    y: Int32 = about("the key's row, from 0")


class KeypadConfiguration(_Body):
    keypad_items: list[KeypadItem] | None = None
    total_action_needed: Int32 = about("keys pressed for one selection")
    total_column_number: Int32 = about("the keypad's columns")
    total_row_number: Int32 = about("the keypad's rows")
    virtual_keypad_enabled: Flag = about("whether selections can be made remotely")


class VendingMachine(_Body):
    address: Text = about("where the machine stands")
    business_address: Text = about("the merchant's address")
    busy: Flag = about("a transaction, voucher or credit is open")
    company_external_name: Text = about("the merchant's name")
    id: Text = about("the machine's id")
    keypad_configuration: KeypadConfiguration | None = None
    online: Flag = about("connected to the broker")
    operator_contact_number: Text = about("the operator's phone")
    operator_name: Text = about("the operator")
    photo_url: Text = about("a photo of the machine")


class BulkSearchRequest(_Body):
    vms: Machines = about("the machines' ids")


class BulkSearchResponse(StandardResponse):
    vendingMachines: list[VendingMachine] | None = None  # noqa: N815


class SearchRequest(_Body):
    vm_id: Text = about("the machine's id")


class SearchResponse(StandardResponse):
    vendingMachine: VendingMachine | None = None  # noqa: N815


class UserKeysRequest(_Body):
    keys: Keys = about("the keypad items pressed, by index")
    txnRef: Text = about("the third party's transaction id")  # noqa: N815
    vm_id: Text = about("the machine's id")


class UserKeysResponse(StandardResponse):
    pass
