"""Reading server-sent event bodies in tests."""

from __future__ import annotations

import json
from typing import Any


def events_of(text: str) -> list[dict[str, Any]]:
    """The frames of an SSE body: `{id?, event, data}` each (`data` parsed as JSON).

    Comment lines (keepalives) are left out.
    """
    found: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        if fields:
            found.append(fields)
    return found
