"""Domain: the JSON a client may send.

Python's `json` accepts what JSON does not (NaN, Infinity) and what is ambiguous
(a key given twice, of which it keeps the last), and builds strings holding lone
UTF-16 surrogates that break encoding later; it also reads numbers no double can
hold (`1e999` as infinity, a 400-digit integer), which the services, carrying
numbers as doubles, cannot. A body with any of these, nested deeper than
`MAX_DEPTH` or not UTF-8 is refused before a route sees it.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32
MAX_INTEGER_DIGITS = 308  # every integer this long fits a double (max ≈ 1.8e308)


class BadJson(ValueError):
    """Why a body is refused."""


def _no_constants(name: str) -> Any:
    raise BadJson(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BadJson(f"key {key[:100]!r} appears twice in one object")
        out[key] = value
    return out


def check_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> None:
    """Accept `raw` only as strict JSON.

    Raises:
        BadJson: what is wrong with it.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadJson("the body is not UTF-8") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constants,
            parse_float=_finite,
            parse_int=_integer,
        )
    except BadJson:
        raise
    except RecursionError:
        raise BadJson(f"the body is nested deeper than {max_depth} levels") from None
    except ValueError as e:
        raise BadJson(f"the body is not valid JSON: {e}") from None
    _walk(value, 0, max_depth)


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent; `1e999` would become infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"the number {text[:40]} is beyond the range of a double")
    return value


def _integer(text: str) -> int:
    """A JSON integer that a double can hold (services carry numbers as doubles)."""
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise BadJson(f"the integer {text[:40]}... is beyond the range of a double")
    return int(text)


def _walk(value: Any, depth: int, max_depth: int) -> None:
    if depth >= max_depth:
        raise BadJson(f"the body is nested deeper than {max_depth} levels")
    if isinstance(value, str):
        _text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _text(key)
            _walk(item, depth + 1, max_depth)
    elif isinstance(value, list):
        for item in value:
            _walk(item, depth + 1, max_depth)


def _text(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadJson("a string holds a lone UTF-16 surrogate") from None
