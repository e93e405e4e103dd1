"""Money on the MDB bus versus money inside vmc.

On the bus a value is ``raw * scale_factor / 10**decimal_places`` in the currency's major unit
(MDB 4.2 §7.4 reader config). Inside vmc every amount is an integer count of the currency's
minor unit (cents, kopecks). Conversions that would lose value are refused, never rounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.errors import MoneyError

UNKNOWN_FUNDS_16 = 0xFFFF
UNKNOWN_FUNDS_32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class BusMoney:
    """Scale factor and decimal places of the bus, and the decimals of vmc's minor unit."""

    scale_factor: int = 1
    decimal_places: int = 2
    minor_decimals: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.scale_factor <= 255:
            raise MoneyError(f"scale factor {self.scale_factor} is outside 1..255")
        if not 0 <= self.decimal_places <= 9 or not 0 <= self.minor_decimals <= 9:
            raise MoneyError("decimal places must be within 0..9")

    def to_minor(self, raw: int) -> int:
        """Bus value -> minor units; refuses a value that is not a whole minor unit."""
        shift = self.minor_decimals - self.decimal_places
        if shift >= 0:
            return int(raw * self.scale_factor * 10**shift)
        num = raw * self.scale_factor
        div = int(10**-shift)
        if num % div:
            raise MoneyError(f"bus value {raw} is not a whole number of minor units")
        return int(num // div)

    def to_bus(self, minor: int, *, wide: bool = False) -> int:
        """Minor units -> bus value; refuses amounts the bus cannot carry exactly."""
        if minor < 0:
            raise MoneyError(f"amount {minor} is negative")
        shift = self.minor_decimals - self.decimal_places
        if shift >= 0:
            unit = self.scale_factor * int(10**shift)
            if minor % unit:
                raise MoneyError(
                    f"{minor} minor units is not a multiple of the bus unit ({unit} minor units)"
                )
            raw = minor // unit
        else:
            num = minor * int(10**-shift)
            if num % self.scale_factor:
                raise MoneyError(f"{minor} minor units is not a multiple of the scale factor")
            raw = num // self.scale_factor
        limit = UNKNOWN_FUNDS_32 if wide else UNKNOWN_FUNDS_16
        if raw >= limit:
            raise MoneyError(f"{minor} minor units does not fit the {32 if wide else 16}-bit field")
        return raw
