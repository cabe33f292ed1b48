"""Application: the built-in tools, in one place."""

from __future__ import annotations

from tool_service.application.file_tools import FILE_TOOLS
from tool_service.application.ports import Tool
from tool_service.application.url_tools import URL_TOOLS

BUILTIN_TOOLS: tuple[Tool, ...] = (*FILE_TOOLS, *URL_TOOLS)
