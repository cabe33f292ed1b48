"""Adapter: how routes are registered — both slash forms, and the methods of a path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute


def both(router: APIRouter, path: str, method: str = "GET", **options: Any) -> Callable[[Any], Any]:
    """Register a route at `path` and at `path/` (the latter left out of the schema).

    Old clients call both (`agents/`, `health/`); neither redirects.
    """

    def register(handler: Any) -> Any:
        router.add_api_route(path, handler, methods=[method], **options)
        router.add_api_route(
            path + "/",
            handler,
            methods=[method],
            include_in_schema=False,
            **{k: v for k, v in options.items() if k != "operation_id"},
        )
        return handler

    return register


class Methods:
    """Every method each path is served with, for the `Allow` of a 405 (RFC 9110).

    Each method has a route of its own, so the router's 405 names only the methods of
    the first route whose path matched.
    """

    def __init__(self, *routers: APIRouter) -> None:
        self._routes = [
            (route.path_regex, route.methods or set())
            for router in routers
            for route in router.routes
            if isinstance(route, APIRoute)
        ]

    def allowed(self, path: str) -> str:
        """The methods `path` is served with, as an `Allow` value."""
        found: set[str] = set()
        for pattern, methods in self._routes:
            if pattern.match(path):
                found |= methods
        return ", ".join(sorted(found))
