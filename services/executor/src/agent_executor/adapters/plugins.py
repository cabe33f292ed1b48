"""Adapter: template plugins loaded from folders, and reloaded when their files change.

A plugin is a folder inside a configured plugin directory whose `__init__.py`
lists `__agents__` (AgentTemplate subclasses). Each folder is imported under a
fresh module name on every load, so a reload really runs the new code; a
folder that fails to import keeps its previous templates serving and is
reported (`ListTemplates` shows the problem). Folders without `__agents__`
(tool plugins, say) are left to the tools service. `watch` follows the
directories with watchfiles: adding, changing or removing a plugin takes
effect without a restart.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import logging
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from watchfiles import awatch

from agent_executor.application.templates import AgentTemplate, LoadedTemplate, TemplateCatalog

log = logging.getLogger(__name__)

MODULE_PREFIX = "agentrt_template_plugins"
_generation = itertools.count(1)
Changed = Callable[[Sequence[LoadedTemplate], Sequence[str]], None]
BlockingCall = Callable[..., Awaitable[Any]]


class NotAPlugin(Exception):
    """The folder lists no `__agents__`."""


def _module_name(folder: Path) -> str:
    slug = re.sub(r"[^A-Za-z0-9_]", "_", folder.name) or "plugin"
    return f"{MODULE_PREFIX}.{slug}_{next(_generation)}"


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles a plugin module from its source every time.

    Cached bytecode is validated by the source's size and mtime (whole seconds):
    an edit of the same size within a second would reload stale code.
    """

    def get_code(self, fullname: str) -> Any:
        return self.source_to_code(self.get_data(self.path), self.path)


class _PluginFinder(importlib.abc.MetaPathFinder):
    """Finds the submodules of plugin packages and loads them with `_SourceLoader`."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not fullname.startswith(MODULE_PREFIX + ".") or not path:
            return None
        found = importlib.machinery.PathFinder.find_spec(fullname, path)
        if found is None or not isinstance(found.loader, importlib.machinery.SourceFileLoader):
            return found
        return _source_spec(fullname, Path(str(found.origin)), found.submodule_search_locations)


_FINDER = _PluginFinder()


def _source_spec(
    name: str, file: Path, search: Sequence[str] | None
) -> importlib.machinery.ModuleSpec | None:
    return importlib.util.spec_from_file_location(
        name,
        file,
        loader=_SourceLoader(name, str(file)),
        submodule_search_locations=list(search) if search is not None else None,
    )


def _forget(name: str) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def import_plugin(
    folder: Path, *, known: bool = False
) -> tuple[str, list[type[AgentTemplate]], list[str]]:
    """Import a plugin folder under a fresh name: (module name, template classes, problems).

    Raises:
        NotAPlugin: the folder's `__init__.py` does not mention `__agents__` and it
            served no templates before (`known`): a tool plugin, say, is not imported.
        Exception: whatever importing the plugin raised.
    """
    init = folder / "__init__.py"
    if not known and "__agents__" not in init.read_text(encoding="utf-8", errors="replace"):
        raise NotAPlugin(str(folder))
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    name = _module_name(folder)
    spec = _source_spec(name, init, [str(folder)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        _forget(name)
        raise
    entries = getattr(module, "__agents__", None)
    if not isinstance(entries, list | tuple):
        _forget(name)
        raise TypeError("__agents__ must be a list of AgentTemplate classes")
    classes: list[type[AgentTemplate]] = []
    problems: list[str] = []
    for entry in entries:
        cls = entry if isinstance(entry, type) else type(entry)
        if issubclass(cls, AgentTemplate) and cls is not AgentTemplate:
            classes.append(cls)
        else:
            problems.append(f"{entry!r} in __agents__ is not an AgentTemplate subclass")
    return name, classes, problems


class TemplatePlugins:
    """Loads plugin folders into the catalogue and keeps them current."""

    def __init__(
        self,
        directories: Sequence[Path],
        catalog: TemplateCatalog,
        *,
        run_blocking: BlockingCall,
        on_change: Changed = lambda added, removed: None,
        debounce_ms: int = 300,
    ) -> None:
        self.directories = [d.resolve() for d in directories]
        self.catalog = catalog
        self.run_blocking = run_blocking
        self.on_change = on_change
        self.debounce_ms = debounce_ms
        self._modules: dict[str, str] = {}  # source folder -> module name serving now
        self.reloads = 0

    def folders(self) -> list[Path]:
        """Every plugin folder present now."""
        out = []
        for directory in self.directories:
            if directory.is_dir():
                out.extend(sorted(p for p in directory.iterdir() if (p / "__init__.py").is_file()))
        return out

    async def load_all(self) -> None:
        """Load every plugin folder."""
        for folder in await self.run_blocking(self.folders):
            await self.reload(folder)

    async def reload(self, folder: Path) -> None:
        """(Re)load one plugin folder, or drop its templates when it is gone."""
        source = str(folder)
        present = await self.run_blocking((folder / "__init__.py").is_file)
        if not present:
            added, removed = self.catalog.replace_source(source, [])
            self._retire(source, None)
        else:
            try:
                name, classes, problems = await self.run_blocking(
                    import_plugin, folder, known=source in self.catalog.sources()
                )
            except NotAPlugin:
                added, removed = self.catalog.replace_source(source, [])
                self._retire(source, None)
            except Exception as e:
                detail = "".join(traceback.format_exception_only(e)).strip()
                log.warning("template plugin failed to load", extra={"plugin": source})
                added, removed = self.catalog.replace_source(
                    source, None, [f"import failed: {detail}"[:2000]]
                )
            else:
                added, removed = self.catalog.replace_source(source, classes, problems)
                self._retire(source, name)
        self.reloads += 1
        self.on_change(added, removed)

    def _retire(self, source: str, new_module: str | None) -> None:
        old = self._modules.pop(source, None)
        if old is not None and old != new_module:
            _forget(old)
        if new_module is not None:
            self._modules[source] = new_module

    def _folder_of(self, path: Path) -> Path | None:
        for directory in self.directories:
            if path.is_relative_to(directory) and path != directory:
                return directory / path.relative_to(directory).parts[0]
        return None

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload plugin folders as their files change, until `stop` is set."""
        watched = [str(d) for d in self.directories if d.is_dir()]
        if not watched:
            return
        async for changes in awatch(
            *watched, stop_event=stop, debounce=self.debounce_ms, step=50, recursive=True
        ):
            folders = {self._folder_of(Path(p)) for _, p in changes}
            for folder in sorted(f for f in folders if f is not None):
                if folder.name == "__pycache__":
                    continue
                try:
                    await self.reload(folder)
                except Exception:
                    log.exception("template plugin reload failed", extra={"plugin": str(folder)})
