"""How an Executive port frames the 9th bit of a word (mark, space or none), apart from the
port: vmcd's configuration checks it on every machine without loading the driver."""

from __future__ import annotations

from enum import StrEnum


class ModeBit(StrEnum):
    MARK = "mark"
    SPACE = "space"
    NONE = "none"
