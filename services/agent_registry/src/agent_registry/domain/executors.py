"""Domain: what the executors can run, as they publish it, and the checks it allows.

Every executor writes an entry into the template catalogue: the model provider ids
an agent's `llm_config_id` may name and the ceilings it holds every run to
(`run_timeout_seconds`, `max_steps`, ...), valid until its `expires_at`. Any
executor may pick up any run, so an agent must suit all of them: the registry
takes the providers every live executor serves (the intersection) and, per limit,
the lowest ceiling. When no entry is live (no executor up now) the newest entry
stands for the deployment as it was last seen; when there is none at all (no
executor ever ran) nothing can be checked, and the caller says so in a warning.

An entry also tells the code sandbox its tools service offers (`sandbox`, null when
the executor could not ask): the registry keeps the runtimes of the sandboxes that
are available, and the fleet offers the union of those of the same executors the
providers and ceilings come from, so an agent's code is held to what can run it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agentrt_kit.errors import FieldViolation


@dataclass(frozen=True)
class SandboxRuntime:
    """A language the code sandbox runs: its version and the modules code may import."""

    language: str
    version: str
    modules: frozenset[str] = frozenset()

    @classmethod
    def from_document(cls, doc: object) -> SandboxRuntime:
        """Parse `{language, version, modules}`.

        Raises:
            ValueError: a key is missing or of the wrong type.
        """
        if not isinstance(doc, Mapping):
            raise ValueError("executor entry: a sandbox runtime must be an object")
        language, version, modules = doc.get("language"), doc.get("version"), doc.get("modules")
        if not isinstance(language, str) or not isinstance(version, str):
            raise ValueError("executor entry: a sandbox runtime needs a language and a version")
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise ValueError("executor entry: a sandbox runtime's modules must be a list of names")
        return cls(language, version, frozenset(modules))


def _sandbox_runtimes(sandbox: object) -> tuple[SandboxRuntime, ...]:
    """The runtimes of a published `sandbox` that is available; () when not (or unknown)."""
    if sandbox is None:
        return ()
    if not isinstance(sandbox, Mapping):
        raise ValueError("executor entry: sandbox must be an object or null")
    runtimes = sandbox.get("runtimes") or []
    if not isinstance(runtimes, list):
        raise ValueError("executor entry: sandbox runtimes must be a list")
    parsed = tuple(SandboxRuntime.from_document(r) for r in runtimes)
    return parsed if sandbox.get("available") is True else ()


@dataclass(frozen=True)
class ExecutorReport:
    """One executor's entry (`runtimes`: those of its sandbox, when it is available)."""

    executor_id: str
    providers: frozenset[str]
    expires_at: float
    published_at: float = 0.0
    limits: Mapping[str, float] = field(default_factory=dict)
    runtimes: tuple[SandboxRuntime, ...] = ()

    @classmethod
    def from_document(cls, doc: Mapping[str, object]) -> ExecutorReport:
        """Parse a published entry.

        Raises:
            ValueError: a key is missing or of the wrong type.
        """
        providers, limits = doc.get("providers"), doc.get("limits") or {}
        if not isinstance(providers, list) or not all(isinstance(p, str) for p in providers):
            raise ValueError("executor entry: providers must be a list of ids")
        if not isinstance(limits, Mapping) or not all(_is_bound(v) for v in limits.values()):
            raise ValueError("executor entry: limits must map names to positive numbers")
        try:
            return cls(
                executor_id=str(doc["executor_id"]),
                providers=frozenset(providers),
                expires_at=float(doc["expires_at"]),  # type: ignore[arg-type]
                published_at=float(doc.get("published_at") or 0.0),  # type: ignore[arg-type]
                limits={str(k): float(v) for k, v in limits.items()},
                runtimes=_sandbox_runtimes(doc.get("sandbox")),
            )
        except KeyError as e:
            raise ValueError(f"executor entry lacks {e}") from None
        except (TypeError, ValueError):
            raise ValueError("executor entry: times must be numbers") from None


def _is_bound(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


@dataclass(frozen=True)
class ExecutorFleet:
    """What every executor can run: provider ids, the ceilings of run limits, sandbox runtimes.

    `providers` is None when no executor has ever published (nothing is known).
    `runtimes` is every runtime an available sandbox of these executors offers.
    """

    providers: frozenset[str] | None = None
    limits: Mapping[str, float] = field(default_factory=dict)
    runtimes: tuple[SandboxRuntime, ...] = ()

    @property
    def known(self) -> bool:
        """Whether any executor has published."""
        return self.providers is not None


UNKNOWN = ExecutorFleet()


def fleet_of(reports: Iterable[ExecutorReport], now: float) -> ExecutorFleet:
    """The fleet the registry validates against at `now` (see the module docstring)."""
    every = list(reports)
    chosen = [r for r in every if r.expires_at > now]
    if not chosen and every:
        chosen = [max(every, key=lambda r: (r.published_at, r.expires_at))]
    if not chosen:
        return UNKNOWN
    providers = frozenset.intersection(*(r.providers for r in chosen))
    limits: dict[str, float] = {}
    for report in chosen:
        for name, bound in report.limits.items():
            limits[name] = min(bound, limits.get(name, bound))
    runtimes = {runtime: None for report in chosen for runtime in report.runtimes}
    return ExecutorFleet(
        providers, limits, tuple(sorted(runtimes, key=lambda r: (r.language, r.version)))
    )


def check_llm_config_id(
    llm_config_id: str, fleet: ExecutorFleet, path: str = "spec.llm_config_id"
) -> list[FieldViolation]:
    """A violation when `llm_config_id` names no provider every executor serves.

    An empty id means the executors' default provider and is always accepted; so is
    any id while the fleet is unknown (the caller warns that it was not checked).
    """
    if not llm_config_id or fleet.providers is None or llm_config_id in fleet.providers:
        return []
    known = ", ".join(sorted(fleet.providers)) or "none"
    return [
        FieldViolation(
            path,
            f"names no model provider the executors serve: {llm_config_id!r} "
            f"(known provider ids: {known}; leave it empty for the default)",
        )
    ]
