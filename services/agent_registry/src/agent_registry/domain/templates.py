"""Domain: template descriptors and validation of an agent's template config.

Executors publish a descriptor (id, version, JSON Schema, field list) per
template; an agent's `template_config` must satisfy its template's schema.
Violations name the path inside the config, e.g.
`spec.template_config.steps[0].name`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from agentrt_kit.errors import FieldViolation

MAX_VIOLATIONS = 50


@dataclass(frozen=True)
class TemplateDescriptor:
    """What the registry knows of a template: enough to validate configs."""

    id: str
    version: str
    config_schema: Mapping[str, Any]
    name: str = ""
    description: str = ""
    framework: str = ""
    config_fields: list[Any] = field(default_factory=list)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> TemplateDescriptor:
        """Parse a published descriptor document.

        Raises:
            ValueError: when required keys are missing or the schema is not a valid JSON Schema.
        """
        try:
            descriptor = cls(
                id=str(doc["id"]),
                version=str(doc["version"]),
                config_schema=dict(doc.get("config_schema") or {"type": "object"}),
                name=str(doc.get("name", "")),
                description=str(doc.get("description", "")),
                framework=str(doc.get("framework", "")),
                config_fields=list(doc.get("config_fields") or []),
            )
            Draft202012Validator.check_schema(descriptor.config_schema)
        except (KeyError, TypeError) as e:
            raise ValueError(f"template descriptor lacks {e}") from None
        except SchemaError as e:
            raise ValueError(f"template schema is invalid: {e.message}") from None
        return descriptor

    def to_document(self) -> dict[str, Any]:
        """The published form of this descriptor."""
        return {
            "id": self.id,
            "version": self.version,
            "name": self.name,
            "description": self.description,
            "framework": self.framework,
            "config_schema": dict(self.config_schema),
            "config_fields": list(self.config_fields),
        }

    @cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.config_schema)

    def validate_config(
        self, config: Mapping[str, Any], path: str = "spec.template_config"
    ) -> list[FieldViolation]:
        """One violation per schema error, at the path of the offending value."""
        out: list[FieldViolation] = []
        errors = sorted(self._validator.iter_errors(config), key=lambda e: list(e.absolute_path))
        for error in errors[:MAX_VIOLATIONS]:
            out.append(FieldViolation(json_path(path, error.absolute_path), error.message))
        return out


def json_path(prefix: str, parts: Any) -> str:
    """`prefix.key[0].other` for a jsonschema error path."""
    out = prefix
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
