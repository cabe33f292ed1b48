"""Adapter: the template catalogue (the application's `Templates` port) over the kit's watch.

The executors publish templates into a NATS KV bucket; the kit's `CatalogWatcher`
keeps a copy current. A template asked for by id that the copy lacks is read from
the bucket itself (it may have been written a moment ago). The executors' own
entries (their code sandboxes) come from the same copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from agentrt_kit.catalog import CatalogWatcher, entry_key

TemplateView = dict[str, Any]


class TemplateCatalogue:
    """Template objects by id, from the watched catalogue bucket."""

    def __init__(self, watcher: CatalogWatcher[TemplateView]) -> None:
        self._watcher = watcher

    @property
    def synced(self) -> asyncio.Event:
        """Set once the first copy of the catalogue has arrived."""
        return self._watcher.synced

    def latest(self) -> dict[str, TemplateView]:
        """The latest object of every template, by id."""
        return self._watcher.latest()

    async def lookup(self, template_id: str) -> TemplateView | None:
        """One template read from the bucket; None when absent or not a template id."""
        key = entry_key(template_id)
        return None if key is None else await self._watcher.lookup(key)

    def executor_entries(self) -> list[Mapping[str, Any]]:
        """Every executor's entry the copy holds, expired ones too."""
        return list(self._watcher.executors.values())
