"""What a client sends: strict JSON and a bounded body, refused before any route runs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from gateway_support import World, auth

from agent_gateway.domain.json_input import BadJson, check_json


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": Infinity}', "Infinity is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"name": "x", "name": "y"}', "appears twice"),
        (b'{"a": {"b": 1, "b": 2}}', "appears twice"),
        (b'{"a": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
        (b"[" * 33 + b"]" * 33, "nested deeper than 32"),
        (b"[" * 5000 + b"]" * 5000, "nested deeper than 32"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": 1', "not valid JSON"),
    ],
)
def test_json_that_is_not_strict_is_refused_saying_why(raw: bytes, problem: str) -> None:
    with pytest.raises(BadJson, match=problem):
        check_json(raw)


def test_strict_json_passes() -> None:
    check_json(b'{"name": "ok", "n": [1, 2.5, -3e2], "s": "\\ud83d\\ude00", "t": true}')
    check_json(b"[" * 32 + b"]" * 32)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "Twice", "name": "Again", "template_id": "simple-test"}',
        b'{"name": "Nan", "template_id": "simple-test", "template_config": {"t": NaN}}',
        b'{"name": "\\ud800", "template_id": "simple-test"}',
        b'{"name": "Deep", "template_id": "simple-test", "metadata": '
        + b'{"a": ' * 40
        + b"1"
        + b"}" * 40
        + b"}",
    ],
)
async def test_a_body_that_is_not_strict_json_is_a_400_and_creates_nothing(
    world: World, raw: bytes
) -> None:
    reply = await world.client.post(
        "/v1/agents", content=raw, headers={**auth(), "Content-Type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["error"] == "VALIDATION_ERROR"
    assert (await world.client.get("/v1/agents", headers=auth())).json() == []


async def test_a_body_over_the_cap_is_a_413_whether_its_length_is_declared_or_not(
    world: World,
) -> None:
    big = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    declared = await world.client.post(
        "/v1/agents", content=big, headers={**auth(), "Content-Type": "application/json"}
    )
    assert (declared.status_code, declared.json()["error"]) == (413, "REQUEST_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    streamed = await world.client.post(
        "/v1/agents", content=chunks(), headers={**auth(), "Content-Type": "application/json"}
    )
    assert (streamed.status_code, streamed.json()["error"]) == (413, "REQUEST_TOO_LARGE")
    small = await world.client.post(
        "/v1/agents", json={"name": "Small", "template_id": "simple-test"}, headers=auth()
    )
    assert small.status_code == 201


@pytest.mark.parametrize(
    "raw",
    [b'{"x": 1e999}', b'{"x": -1e999}', b'{"x": ' + b"9" * 400 + b"}", b"[" + b"1" * 309 + b"]"],
)
def test_numbers_no_double_can_hold_are_refused(raw: bytes) -> None:
    with pytest.raises(BadJson, match="range of a double"):
        check_json(raw)


def test_large_numbers_a_double_holds_are_taken() -> None:
    check_json(b'{"x": 1e308, "y": ' + b"9" * 308 + b', "z": -2.5e-300}')
