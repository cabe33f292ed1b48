"""Plain JSON values to and from `google.protobuf.Struct`.

Struct numbers are doubles on the wire; integral values come back as ints so a
JSON client sees `10`, not `10.0` (up to 2**53, beyond which doubles stop
counting exactly).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

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
