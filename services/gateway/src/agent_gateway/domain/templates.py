"""Domain: templates as old clients read them.

A template object has exactly `id, framework, name, description, version, config`;
`config` is the field list of the template's config schema (COMPAT.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def template_view(descriptor: Mapping[str, Any]) -> dict[str, Any]:
    """The template object of a catalogue descriptor.

    Raises:
        ValueError: the descriptor lacks its id or version.
    """
    try:
        template_id, version = descriptor["id"], descriptor["version"]
    except KeyError as e:
        raise ValueError(f"template descriptor lacks {e}") from None
    return {
        "id": str(template_id),
        "framework": str(descriptor.get("framework") or ""),
        "name": str(descriptor.get("name") or ""),
        "description": str(descriptor.get("description") or ""),
        "version": str(version),
        "config": list(descriptor.get("config_fields") or []),
    }
