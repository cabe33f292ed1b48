"""Adapter: tools from plugin folders (LangChain tools listed in `__tools__`).

Each configured directory holds plugin folders; a folder whose `__init__.py`
defines `__tools__` (LangChain tool classes, or tool instances) contributes
those tools. A plugin that fails to import, or whose tools cannot be built or
described, is reported (ListTools shows it) and skipped: never fatal. A tool
may declare `side_effect = "read_only" | "idempotent" | "at_most_once"`; the
default is at_most_once, the safe assumption for code we did not write.

Plugins are operator-installed code and run in the service's process; untrusted
code belongs in the sandbox, not here.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from langchain_core.tools import BaseTool

from tool_service.application.environment import ToolEnv
from tool_service.domain.tools import TOOL_NAME, SideEffect, ToolFailure, ToolResult, ToolSpec

log = logging.getLogger(__name__)


class PluginTool:
    """A LangChain tool, adapted to the Tool port."""

    def __init__(self, tool: BaseTool, plugin: str) -> None:
        self._tool = tool
        schema = dict(tool.get_input_jsonschema())
        schema.pop("title", None)
        try:  # e.g. a pattern Python's re cannot compile would break every catalogue
            Draft202012Validator.check_schema(schema)
        except SchemaError as e:
            raise ValueError(f"tool {tool.name!r} has an unusable schema: {e.message}") from None
        declared = getattr(tool, "side_effect", SideEffect.AT_MOST_ONCE.value)
        self.spec = ToolSpec(
            name=tool.name,
            description=tool.description,
            arguments_schema=schema,
            side_effect=SideEffect(declared),
            version=str(getattr(tool, "version", "1")),
            source=f"plugin:{plugin}",
        )

    async def run(self, arguments: Mapping[str, Any], env: ToolEnv) -> ToolResult:
        """Invoke the LangChain tool; its exceptions become a readable PLUGIN_ERROR."""
        try:
            output = await self._tool.ainvoke(dict(arguments))
        except Exception as e:
            raise ToolFailure("PLUGIN_ERROR", f"{type(e).__name__}: {e}") from None
        if isinstance(output, Mapping):
            return ToolResult(content=str(output.get("content", output)), data=dict(output))
        return ToolResult(content=str(output))


def _build(entry: Any) -> BaseTool:
    tool = entry() if isinstance(entry, type) else entry
    if not isinstance(tool, BaseTool):
        raise TypeError(f"{entry!r} is not a LangChain tool")
    if not TOOL_NAME.fullmatch(tool.name):
        raise ValueError(f"tool name {tool.name!r} must match {TOOL_NAME.pattern}")
    return tool


def load_plugins(
    directories: Sequence[Path], taken: Sequence[str] = ()
) -> tuple[list[PluginTool], list[tuple[str, str]]]:
    """Tools of every plugin under `directories`, and (plugin, problem) for those that failed."""
    tools: list[PluginTool] = []
    problems: list[tuple[str, str]] = []
    names = set(taken)
    for directory in directories:
        if not directory.is_dir():
            problems.append((str(directory), "plugin directory does not exist"))
            continue
        for folder in sorted(p for p in directory.iterdir() if (p / "__init__.py").is_file()):
            plugin = folder.name
            try:
                module = _import(folder)
                entries = getattr(module, "__tools__", None)
                if not isinstance(entries, list | tuple):
                    raise TypeError("__init__.py defines no __tools__ list")
                loaded = [PluginTool(_build(entry), plugin) for entry in entries]
                clashes = [t.spec.name for t in loaded if t.spec.name in names]
                if clashes:
                    raise ValueError(f"tool names already taken: {', '.join(clashes)}")
            except Exception as e:
                log.error("plugin skipped", extra={"plugin": plugin, "error": str(e)})
                problems.append((plugin, f"{type(e).__name__}: {e}"))
                continue
            names.update(t.spec.name for t in loaded)
            tools.extend(loaded)
            log.info("plugin loaded", extra={"plugin": plugin, "tools": len(loaded)})
    return tools, problems


def _import(folder: Path) -> Any:
    name = f"agentrt_tool_plugins.{folder.name}"
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
