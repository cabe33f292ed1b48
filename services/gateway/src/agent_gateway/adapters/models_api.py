"""Adapter: `GET /v1/models` and `/v1/models/{id}` — agents as OpenAI models.

`client.models.list()` of OpenAI's libraries lists the agents the caller may run;
each model's id is what `/v1/chat/completions` takes as `model`.
"""

# No `from __future__ import annotations`: the route signatures use dependencies
# built when the routes are (FastAPI evaluates annotations against module globals).

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from agent_gateway.adapters.access import Access
from agent_gateway.adapters.openai_render import model_body
from agent_gateway.adapters.openapi import SERVICE, Model, ModelList, documented
from agent_gateway.adapters.routing import both
from agent_gateway.application.models import Models
from agent_gateway.domain.auth import Principal


def model_routes(v1: APIRouter, access: Access, models: Models) -> None:
    """Add the model routes to `v1`."""
    Caller = Annotated[Principal, Depends(access.caller)]

    @both(v1, "/models", **documented(ModelList, *SERVICE, op="listModels", tag="openai"))
    async def list_models(caller: Caller) -> dict[str, Any]:
        """The agents the caller may run, as OpenAI models."""
        return {"object": "list", "data": [model_body(a) for a in await models.runnable(caller)]}

    @both(
        v1,
        "/models/{model}",
        **documented(Model, 400, 404, *SERVICE, op="getModel", tag="openai"),
    )
    async def get_model(
        caller: Caller, model: Annotated[str, Path(min_length=1, max_length=128)]
    ) -> dict[str, Any]:
        """One agent the caller may run, as an OpenAI model."""
        return model_body(await models.get(caller, model))
