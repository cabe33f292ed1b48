"""Messages filled from plain values, and Structs back to plain values."""

from __future__ import annotations

from agentrt.registry.v1 import registry_pb2 as pb
from agentrt_kit.grpc.structs import fill, struct_to_dict


def test_fill_sets_scalars_updates_structs_extends_repeated_and_skips_none() -> None:
    message = fill(
        pb.AgentSpec(name="kept"),
        {
            "template_id": "simple-test",
            "template_config": {"steps": 3, "nested": {"a": [1, 2]}},
            "toolsets": ("read_lines", "fetch_url"),
            "description": None,
        },
    )
    assert message.name == "kept"
    assert message.template_id == "simple-test"
    assert struct_to_dict(message.template_config) == {"steps": 3, "nested": {"a": [1, 2]}}
    assert list(message.toolsets) == ["read_lines", "fetch_url"]
    assert not message.description
    assert fill(message, {"toolsets": ["custom"]}).toolsets[-1] == "custom"
