"""Application: invoking a tool — validate, claim the idempotency key, run, record, audit.

At-most-once tools need an idempotency key. The key is claimed in the ledger
before the tool acts and the result recorded after, so a repeated key replays
the recorded result without acting again: that is what lets a crashed run
resume safely. Claim, run and record go on when the caller goes away (an executor
that died mid-call): its retry finds the outcome, not a key in progress. A key
still marked in progress (another replica is on it) is refused with ABORTED while it
may still be running, and answered OUTCOME_UNKNOWN once that is no longer
plausible (the service may have died mid-way; whether the effect happened
cannot be known).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator

from agentrt_kit.concurrency import BlockingRunner
from agentrt_kit.context import current_actor, current_request_id
from agentrt_kit.errors import AgentrtError, FieldViolation, InvalidArgument, invalid
from tool_service.application.environment import Limits, ToolEnv
from tool_service.application.ports import (
    AuditEntry,
    AuditSink,
    Fetcher,
    Ledger,
    LedgerEntry,
    Tool,
    Workspaces,
)
from tool_service.domain.paths import PathRefused, workspace_parts
from tool_service.domain.tools import (
    InvocationContext,
    SideEffect,
    ToolFailure,
    ToolResult,
    ToolSpec,
)
from tool_service.errors import (
    IdempotencyKeyReused,
    InvocationInProgress,
    PathOutsideWorkspace,
    UnknownTool,
)

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 256


def _compile(schema: Mapping[str, Any]) -> Callable[[Any], Any] | None:
    """A fastjsonschema validator (validates and fills defaults), or None if it cannot compile."""
    try:
        return fastjsonschema.compile(dict(schema))
    except (fastjsonschema.JsonSchemaDefinitionException, ValueError, KeyError):
        return None


class ToolCatalog:
    """The tools on offer, with each one's compiled argument validators.

    Valid arguments take the fast path (fastjsonschema: compiled Python, about ten times
    quicker than jsonschema, on every call); invalid ones are explained by jsonschema,
    which reports every violation rather than the first.
    """

    def __init__(self, tools: Sequence[Tool], problems: Sequence[tuple[str, str]] = ()) -> None:
        self._tools = {t.spec.name: t for t in tools}
        self._validators = {
            name: Draft202012Validator(t.spec.arguments_schema) for name, t in self._tools.items()
        }
        self._fast = {name: _compile(t.spec.arguments_schema) for name, t in self._tools.items()}
        self.problems = list(problems)

    def specs(self) -> list[ToolSpec]:
        """Descriptions of every tool, by name."""
        return [self._tools[name].spec for name in sorted(self._tools)]

    def get(self, name: str) -> Tool:
        """The tool called `name` (UnknownTool otherwise)."""
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(name) from None

    def arguments(self, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Arguments checked against the tool's schema, with its top-level defaults filled in.

        Raises:
            InvalidArgument: one violation per bad argument, named `arguments.<path>`.
        """
        fast = self._fast[name]
        if fast is not None:
            try:
                return dict(fast(dict(arguments)))
            except fastjsonschema.JsonSchemaValueException:
                pass  # explained below, field by field
        validator = self._validators[name]
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            violations = [v for error in errors[:50] for v in _violations(error)]
            raise InvalidArgument(
                "invalid tool arguments", violations=list(dict.fromkeys(violations))
            )
        schema = self._tools[name].spec.arguments_schema
        filled = dict(arguments)
        for key, prop in schema.get("properties", {}).items():
            if key not in filled and "default" in prop:
                filled[key] = prop["default"]
        return filled


def _violations(error: Any) -> list[FieldViolation]:
    """The field violations of a jsonschema error, each naming the argument at fault.

    A missing or unexpected argument is reported on the argument itself
    (`arguments.filename`), not on the object that lacks or carries it.
    """
    path = "arguments" + "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
    )
    instance, schema = error.instance, error.schema
    if error.validator == "required" and isinstance(instance, Mapping):
        missing = [p for p in error.validator_value if p not in instance]
        return [FieldViolation(f"{path}.{p}", "is required") for p in missing]
    if (
        error.validator == "additionalProperties"
        and error.validator_value is False
        and isinstance(instance, Mapping)
        and "patternProperties" not in schema
    ):
        known = schema.get("properties", {})
        extra = [k for k in instance if k not in known]
        return [FieldViolation(f"{path}.{k}", "is not an argument of this tool") for k in extra]
    return [FieldViolation(path, error.message)]


def digest(tool: str, arguments: Mapping[str, Any]) -> str:
    """A fingerprint of a call, to tell a replay from a reused key."""
    canonical = json.dumps([tool, arguments], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ToolRunner:
    """Runs tools for callers: the application service behind InvokeTool and ListTools."""

    def __init__(
        self,
        catalog: ToolCatalog,
        *,
        workspaces: Workspaces,
        fetcher: Fetcher,
        ledger: Ledger,
        audit: AuditSink,
        run_blocking: BlockingRunner,
        limits: Limits | None = None,
        in_flight_timeout: float = 300.0,
    ) -> None:
        self.catalog = catalog
        self.workspaces = workspaces
        self.fetcher = fetcher
        self.ledger = ledger
        self.audit = audit
        self.run_blocking = run_blocking
        self.limits = limits or Limits()
        self.in_flight_timeout = timedelta(seconds=in_flight_timeout)

    def workspace_of(self, context: InvocationContext) -> str:
        """The workspace the call works in (its own name, or the agent id)."""
        name = context.workspace or context.agent_id
        if not name:
            raise invalid("context.workspace", "is required (or an agent id to derive it from)")
        try:
            workspace_parts(name)
        except PathRefused as e:
            field = "context.workspace" if context.workspace else "context.agent_id"
            raise invalid(field, str(e)) from None
        return name

    async def invoke(
        self, name: str, arguments: Mapping[str, Any], context: InvocationContext
    ) -> tuple[ToolResult, bool]:
        """Run tool `name`; returns its result and whether it was replayed from the ledger."""
        started = time.perf_counter()
        outcome, detail, result = "refused", "", ToolResult()
        try:
            tool = self.catalog.get(name)
            args = self.catalog.arguments(name, arguments)
            env = ToolEnv(
                context=context,
                workspace=self.workspace_of(context),
                workspaces=self.workspaces,
                fetcher=self.fetcher,
                run_blocking=self.run_blocking,
                limits=self.limits,
            )
            if tool.spec.side_effect is SideEffect.AT_MOST_ONCE:
                # Claimed, run and recorded as one, even if the caller goes away (a crashed
                # executor): its retry then replays the outcome instead of finding the key
                # in progress.
                result, replayed = await asyncio.shield(self._once(name, tool, args, env, context))
                if replayed:
                    outcome = "replayed"
                    return result, True
            else:
                result = await _attempt(tool, args, env, context)
            outcome = "failed" if result.failed else "succeeded"
            detail = result.error_code
            return result, False
        except AgentrtError as e:
            detail = e.reason
            raise
        except asyncio.CancelledError:  # the caller went away; the tool may have acted
            outcome, detail = "cancelled", "CANCELLED"
            raise
        except Exception:
            outcome, detail = "error", "INTERNAL"
            raise
        finally:
            self.audit.record(
                AuditEntry(
                    tool=name,
                    context=context,
                    outcome=outcome,
                    detail=detail,
                    duration_ms=round((time.perf_counter() - started) * 1000),
                    bytes=result.bytes,
                    request_id=current_request_id() or "",
                    actor=current_actor() or "",
                )
            )

    async def _once(
        self,
        name: str,
        tool: Tool,
        args: Mapping[str, Any],
        env: ToolEnv,
        context: InvocationContext,
    ) -> tuple[ToolResult, bool]:
        """An at-most-once call: the recorded result, or claim, run and record it."""
        recorded = await self._claim(name, args, context)
        if recorded is not None:
            return recorded, True
        try:
            result = await _attempt(tool, args, env, context)
        except AgentrtError:  # refused before it acted: the key may be used again
            await self.run_blocking(self.ledger.release, context.idempotency_key)
            raise
        await self.run_blocking(self.ledger.complete, context.idempotency_key, result)
        return result, False

    async def _claim(
        self, name: str, args: Mapping[str, Any], context: InvocationContext
    ) -> ToolResult | None:
        """Claim the key; a recorded result when the key was used before for the same call."""
        key = context.idempotency_key
        if not key:
            raise invalid("context.idempotency_key", f"is required: {name} must run at most once")
        if len(key) > MAX_KEY_CHARS:
            raise invalid("context.idempotency_key", f"must be at most {MAX_KEY_CHARS} characters")
        entry: LedgerEntry | None = await self.run_blocking(
            self.ledger.claim, key, name, digest(name, args)
        )
        if entry is None:
            return None
        if entry.tool != name or entry.digest != digest(name, args):
            raise IdempotencyKeyReused(key)
        if entry.result is not None:
            return entry.result
        if datetime.now(UTC) - entry.started_at < self.in_flight_timeout:
            raise InvocationInProgress(key)
        log.warning("invocation never completed", extra={"tool": name})
        return ToolFailure(
            "OUTCOME_UNKNOWN",
            "an earlier invocation with this key never finished; whether it took effect is unknown",
        ).result()


async def _attempt(
    tool: Tool, args: Mapping[str, Any], env: ToolEnv, context: InvocationContext
) -> ToolResult:
    """Run the tool once; a tool's own failure is its result."""
    try:
        result: ToolResult = await tool.run(args, env)
    except ToolFailure as failure:
        return failure.result()
    except PathRefused as e:  # the workspace itself cannot be opened safely (a link)
        field = "context.workspace" if context.workspace else "context.agent_id"
        raise PathOutsideWorkspace(field, str(e)) from None
    return result
