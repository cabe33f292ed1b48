"""Application: the agent registry's commands and per-agent queries.

`AgentRegistry` is an eventsourcing `Application` (synchronous: callers run it in
a thread pool). Every command loads the aggregates it touches, decides, and saves
all resulting events in one transaction. A lost race shows up as an
`IntegrityError` from the store; the command is then re-run against the new state
(so no update is lost), unless the caller pinned `expected_version`, in which
case the caller is told its version is stale.
"""

from __future__ import annotations

import base64
import binascii
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, Notification

from agent_registry.application.ports import TemplateCatalog
from agent_registry.application.records import AgentState
from agent_registry.domain.agent import (
    AGENT_EVENT_TOPICS,
    Agent,
    AgentName,
    CommandContext,
    HistoryEntry,
    agent_uuid,
    describe,
    name_uuid,
)
from agent_registry.domain.executors import ExecutorFleet, check_llm_config_id
from agent_registry.domain.spec import (
    REQUIRED_FIELDS,
    SPEC_FIELDS,
    complete,
    name_key,
    validate_agent_id,
    validate_fields,
    validate_size,
)
from agent_registry.domain.status import Status
from agent_registry.errors import (
    AgentNotFound,
    CatalogUnavailable,
    ConcurrentModification,
    InvalidAgent,
    NameTaken,
    VersionMismatch,
)
from agentrt_kit.errors import FieldViolation, invalid

log = logging.getLogger(__name__)

T = TypeVar("T")

TEMPLATE_FIELDS = frozenset({"template_id", "template_version_id", "template_config"})
TEMPLATE_PATHS = tuple(f"spec.{f}" for f in sorted(TEMPLATE_FIELDS))
MAX_PAGE = 1000


class _Collision(Exception):
    """Another writer saved first (the store refused our versions)."""


def page_size(requested: int, default: int, field: str = "page_size") -> int:
    """0 → default; negative → error; above MAX_PAGE → MAX_PAGE."""
    if requested < 0:
        raise invalid(field, f"must be between 0 and {MAX_PAGE}")
    return min(requested or default, MAX_PAGE)


def encode_token(value: str) -> str:
    """An opaque page token."""
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_token(token: str, field: str = "page_token") -> str:
    """The value inside a page token from `encode_token`."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid(field, "is not a token this service issued") from None


class AgentRegistry(Application[uuid.UUID]):
    """Agents as event-sourced aggregates, with names unique among live agents."""

    name = "AgentRegistry"  # names the tables: a persistent name, never change it
    snapshotting_intervals = {Agent: 100}

    def __init__(
        self,
        env: Mapping[str, str],
        catalog: TemplateCatalog,
        *,
        snapshot_interval: int = 100,
        max_attempts: int = 16,
    ) -> None:
        super().__init__(env=dict(env))
        # Per instance, so settings can tune it; the library reads it through self.
        self.snapshotting_intervals = {Agent: snapshot_interval}  # type: ignore[misc]
        self.catalog = catalog
        self.max_attempts = max_attempts

    # ----------------------------------------------------------------- commands

    def create_agent(
        self,
        agent_id: str,
        spec: Mapping[str, Any],
        status: Status | None,
        ctx: CommandContext,
    ) -> tuple[AgentState, list[str]]:
        """Register an agent (or re-register a deleted id); returns it and warnings.

        Raises:
            InvalidAgent: bad fields, unknown template, config breaking its schema or
                the executors' ceilings, or an `llm_config_id` no executor serves.
            AgentAlreadyExists: a live agent has this id.
            NameTaken: a live agent has this name.
        """
        agent_id = agent_id or str(uuid.uuid4())
        violations = validate_agent_id(agent_id)
        violations += [
            FieldViolation(f"spec.{f}", "is required")
            for f in REQUIRED_FIELDS
            if not isinstance(spec.get(f), str) or not spec.get(f)
        ]
        violations += validate_fields(
            spec, [f for f in spec if f not in REQUIRED_FIELDS or spec[f]]
        )
        full = complete(spec)
        if isinstance(full["name"], str):
            full["name"] = full["name"].strip()
        oversized = validate_size(full)
        if oversized:  # nothing more is validated of a spec too large to keep
            raise InvalidAgent([*violations, *oversized])
        fleet = self.catalog.executors()
        warnings = self._check_provider(full, violations, fleet)
        warnings += self._check_template(full, violations, fleet)
        if violations:
            raise InvalidAgent(violations)
        initial = status or Status.CREATED
        agent = self._retrying(lambda: self._create_once(agent_id, full, initial, ctx))
        return agent, warnings

    def _create_once(
        self, agent_id: str, spec: dict[str, Any], status: Status, ctx: CommandContext
    ) -> AgentState:
        # Usually both the id and the name are new: write them without reading first.
        # If either has history the store refuses the whole transaction, and the stored
        # state decides (re-registration, name reclaim, or a conflict).
        fresh = Agent.register(agent_id, spec, status, ctx)
        try:
            self.save(fresh, AgentName.claim_new(spec["name"], agent_id))
        except IntegrityError:
            pass
        else:
            return _state(fresh)
        try:
            agent: Agent = self.repository.get(agent_uuid(agent_id))
        except AggregateNotFoundError:
            agent = Agent.register(agent_id, spec, status, ctx)
        else:
            agent.reregister(spec, status, ctx)
        index = self._claim(spec["name"], agent_id)
        self._save(agent, index)
        return _state(agent)

    def update_agent(
        self,
        agent_id: str,
        values: Mapping[str, Any],
        expected_version: int | None,
        ctx: CommandContext,
    ) -> tuple[AgentState, list[str]]:
        """Set the given spec fields; returns the agent and warnings.

        Raises:
            InvalidAgent: bad fields, a template config that breaks the schema or the
                executors' ceilings, or an `llm_config_id` no executor serves.
            AgentNotFound: no live agent with this id.
            VersionMismatch: `expected_version` is not the agent's version.
            NameTaken: the new name belongs to another live agent.
        """
        violations = [
            FieldViolation(f"spec.{f}", "is not an agent field")
            for f in values
            if f not in SPEC_FIELDS
        ]
        violations += validate_fields(values, values)
        if violations:
            raise InvalidAgent(violations)
        values = dict(values)
        if isinstance(values.get("name"), str):
            values["name"] = values["name"].strip()
        checked = "llm_config_id" in values or bool(TEMPLATE_FIELDS & values.keys())
        # Read once, not on every retry; and only when a change is checked against it.
        fleet = self.catalog.executors() if checked else None

        def once() -> tuple[AgentState, list[str]]:
            agent = self._live(agent_id)
            _check_version(agent, expected_version)
            spec = {**agent.spec, **values}
            problems = validate_size(spec)
            warnings: list[str] = []
            if fleet is not None and not problems:
                if "llm_config_id" in values:
                    warnings += self._check_provider(spec, problems, fleet)
                if TEMPLATE_FIELDS & values.keys():
                    warnings += self._check_template(spec, problems, fleet)
            if problems:
                raise InvalidAgent(problems)
            old_name = agent.spec["name"]
            changed = agent.change_configuration(values, ctx)
            touched: list[Agent | AgentName] = [agent]
            if "name" in changed and name_key(old_name) != name_key(spec["name"]):
                touched.append(self._claim(spec["name"], agent_id))
                touched.append(self._release(old_name, agent_id))
            self._save(*touched, expected_version=expected_version)
            return _state(agent), warnings

        return self._retrying(once)

    def set_status(
        self,
        agent_id: str,
        status: Status,
        reason: str,
        expected_version: int | None,
        ctx: CommandContext,
    ) -> AgentState:
        """Move the agent to `status` (a no-op when it is there already).

        Raises:
            IllegalStatusTransition: the lifecycle forbids the move.
        """
        if len(reason) > 1000:
            raise invalid("reason", "must be at most 1000 characters")

        def once() -> AgentState:
            agent = self._live(agent_id)
            _check_version(agent, expected_version)
            if agent.change_status(status, reason, ctx):
                self._save(agent, expected_version=expected_version)
            return _state(agent)

        return self._retrying(once)

    def delete_agent(self, agent_id: str, expected_version: int | None, ctx: CommandContext) -> int:
        """Delete the agent and free its name; returns the version the deletion recorded."""

        def once() -> int:
            agent = self._live(agent_id)
            _check_version(agent, expected_version)
            agent.delete(ctx)
            self._save(
                agent,
                self._release(agent.spec["name"], agent_id),
                expected_version=expected_version,
            )
            return int(agent.version)

        return self._retrying(once)

    # ------------------------------------------------------------------ queries

    def get_agent(self, agent_id: str, version: int | None = None) -> AgentState:
        """The live agent, or the agent as of `version` (history survives deletion)."""
        if not agent_id:
            raise invalid("agent_id", "is required")
        if version is not None and version < 0:
            raise invalid("version", "must be 0 (latest) or a positive version")
        try:
            agent: Agent = self.repository.get(agent_uuid(agent_id), version=version or None)
        except AggregateNotFoundError:
            raise AgentNotFound(agent_id, version) from None
        if agent.deleted or (version and agent.version != version):
            raise AgentNotFound(agent_id, version)
        return _state(agent)

    def list_events(
        self, agent_id: str, size: int = 0, token: str = ""
    ) -> tuple[list[HistoryEntry], str]:
        """The agent's events oldest first, a page at a time; also for deleted agents."""
        if not agent_id:
            raise invalid("agent_id", "is required")
        limit = page_size(size, 100)
        after = 0
        if token:
            value = decode_token(token)
            if not value.startswith("v") or not value[1:].isdigit():
                raise invalid("page_token", "is not a token this service issued")
            after = int(value[1:])
        events = list(self.events.get(agent_uuid(agent_id), gt=after, limit=limit + 1))
        if not events and after == 0:
            raise AgentNotFound(agent_id)
        entries = [describe(e) for e in events[:limit] if isinstance(e, Agent.Event)]
        next_token = encode_token(f"v{entries[-1].version}") if len(events) > limit else ""
        return entries, next_token

    # ---------------------------------------------------------------- internals

    def _live(self, agent_id: str) -> Agent:
        if not agent_id:
            raise invalid("agent_id", "is required")
        try:
            agent: Agent = self.repository.get(agent_uuid(agent_id))
        except AggregateNotFoundError:
            raise AgentNotFound(agent_id) from None
        if agent.deleted:
            raise AgentNotFound(agent_id)
        return agent

    def _claim(self, name: str, agent_id: str) -> AgentName:
        try:
            index: AgentName = self.repository.get(name_uuid(name))
        except AggregateNotFoundError:
            return AgentName.claim_new(name, agent_id)
        if index.holder is None:
            index.reclaim(name, agent_id)
        elif index.holder != agent_id:
            raise NameTaken(name, index.holder)
        return index

    def _release(self, name: str, agent_id: str) -> AgentName:
        index: AgentName = self.repository.get(name_uuid(name))
        index.release(agent_id)
        return index

    def _save(self, *aggregates: Agent | AgentName, expected_version: int | None = None) -> None:
        try:
            self.save(*aggregates)
        except IntegrityError:
            first = aggregates[0]
            if expected_version is not None and isinstance(first, Agent):
                # The caller pinned a version: if the agent moved on, say so; if only
                # an index entry collided, the command is re-run like any other.
                current = self._live(first.agent_id)
                if current.version != expected_version:
                    raise VersionMismatch(
                        first.agent_id, expected_version, current.version
                    ) from None
            raise _Collision from None

    def _retrying(self, command: Callable[[], T]) -> T:
        for attempt in range(self.max_attempts):
            try:
                return command()
            except _Collision:
                # Back off a little so colliding writers spread out.
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        log.warning("command gave up after repeated write collisions")
        raise ConcurrentModification("the agent kept changing; retry the request")

    def _template_exists(self, template_id: str) -> bool:
        """Whether any version of the template is known (an outage counts as yes)."""
        try:
            return self.catalog.get(template_id, None) is not None
        except CatalogUnavailable:
            return True

    @staticmethod
    def _check_provider(
        spec: Mapping[str, Any], violations: list[FieldViolation], fleet: ExecutorFleet
    ) -> list[str]:
        """Check `llm_config_id` against the executors' providers; append violations.

        Returns a warning when it cannot be checked because no executor has published.
        """
        value = spec["llm_config_id"]
        if not isinstance(value, str) or any(v.field == "spec.llm_config_id" for v in violations):
            return []
        if value and not fleet.known:
            return [
                f"llm_config_id {value!r} was not checked: no executor has published "
                "its model providers yet"
            ]
        violations.extend(check_llm_config_id(value, fleet))
        return []

    def _check_template(
        self, spec: Mapping[str, Any], violations: list[FieldViolation], fleet: ExecutorFleet
    ) -> list[str]:
        """Validate template id, version and config; append violations, return warnings.

        The config is held to the template's schema, the executors' ceilings and the
        runtimes of their code sandboxes.
        Skipped when the template fields themselves are already invalid; when the
        catalogue is unreachable, other violations are still reported first.
        """
        if any(v.field.startswith(TEMPLATE_PATHS) for v in violations):
            return []
        template_id, version = spec["template_id"], spec["template_version_id"] or None
        try:
            descriptor = self.catalog.get(template_id, version)
        except CatalogUnavailable:
            if violations:
                return []
            raise
        if descriptor is None:
            if version is not None and self._template_exists(template_id):
                violations.append(
                    FieldViolation(
                        "spec.template_version_id",
                        f"template {template_id!r} has no version {version!r}",
                    )
                )
            else:
                violations.append(
                    FieldViolation("spec.template_id", f"unknown template {template_id!r}")
                )
            return []
        violations.extend(
            descriptor.validate_config(
                spec["template_config"], limits=fleet.limits, runtimes=fleet.runtimes
            )
        )
        warnings = []
        if not fleet.known and descriptor.uses_ceilings:
            warnings.append(
                "the limits in template_config were not checked against the executors' "
                "ceilings: no executor has published them yet"
            )
        if version is None:
            warnings.append(
                f"no template_version_id: the agent follows the latest version of "
                f"{template_id!r} (now {descriptor.version})"
            )
        return warnings


def agent_events(
    app: AgentRegistry, notifications: Sequence[Notification]
) -> list[tuple[int, Agent.Event]]:
    """The agent events among `notifications`, with their positions (index events skipped)."""
    return [
        (n.id, app.mapper.to_domain_event(n))  # type: ignore[misc]
        for n in notifications
        if n.topic in AGENT_EVENT_TOPICS
    ]


def _check_version(agent: Agent, expected: int | None) -> None:
    if expected is not None and agent.version != expected:
        raise VersionMismatch(agent.agent_id, expected, agent.version)


def _state(agent: Agent) -> AgentState:
    assert agent.registered_at is not None
    return AgentState(
        agent_id=agent.agent_id,
        version=agent.version,
        spec=dict(agent.spec),
        status=agent.status,
        created_at=agent.registered_at,
        updated_at=agent.modified_on,
        created_by=agent.created_by,
        updated_by=agent.updated_by,
    )
