"""Plain JSON values to and from `google.protobuf.Struct`, and messages filled from them.

Struct numbers are doubles on the wire; integral values come back as ints so a
JSON client sees `10`, not `10.0` (up to 2**53, beyond which doubles stop
counting exactly).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

MAX_SAFE_INTEGER = 2**53


def plain(value: Any) -> Any:
    """A JSON value from a Struct's, with integral numbers as ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) < MAX_SAFE_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict."""
    return plain(MessageToDict(struct))  # type: ignore[no-any-return]


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A plain dict as a Struct."""
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


M = TypeVar("M", bound=Message)


def fill(message: M, values: Mapping[str, Any]) -> M:
    """Set `message`'s fields from plain values and return it.

    A dict updates a Struct (or map) field, a list or tuple extends a repeated field,
    anything else is set as is; None means "not given" and is skipped.
    """
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict):
            getattr(message, key).update(value)
        elif isinstance(value, list | tuple):
            getattr(message, key).extend(value)
        else:
            setattr(message, key, value)
    return message
