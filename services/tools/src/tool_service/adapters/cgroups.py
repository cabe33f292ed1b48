"""Adapter: one control group per sandbox slot, where the host lets this service make them.

cgroup v2 is used when this process's cgroup is writable with the memory and pids
controllers: the service moves itself into a `service` leaf (the "no internal
processes" rule) and makes `slot-<n>` siblings beside it. On a cgroup v1 host
(this project's build machines) the memory and pids hierarchies get a
`agentrt-sandbox-<pid>/slot-<n>` folder each. Where neither works (an unprivileged
container, the usual Kubernetes pod) there are no slots, and the sandbox relies on
rlimits alone (the tools service reports which).

A slot serves one program at a time: its limits are set before the program
starts, its counters (OOM kills, refused forks) read as deltas after, and any
process still in it is killed when the program ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class Counters:
    """A slot's event counters at one moment."""

    oom_kills: int = 0
    pids_refused: int = 0


def _read_key(path: Path, key: str) -> int:
    """The value of `key` in a flat-keyed cgroup file (0 when absent or unreadable)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _write(path: Path, value: str) -> None:
    path.write_text(value)


class Slots:
    """Control groups for `count` sandbox slots (base class: no control groups)."""

    version = "none"

    def __init__(self, count: int) -> None:
        self.count = count

    def procs_files(self, slot: int) -> list[str]:
        """The `cgroup.procs` files a program of `slot` joins (empty: none)."""
        return []

    def prepare(self, slot: int, memory_bytes: int, pids: int) -> Counters:
        """Set the slot's limits for the next program; its counters now."""
        return Counters()

    def counters(self, slot: int) -> Counters:
        """The slot's counters now."""
        return Counters()

    def peak_memory_kb(self, slot: int) -> int:
        """The slot's peak memory since `prepare` (0 when unknown)."""
        return 0

    def kill(self, slot: int) -> int:
        """Kill every process left in the slot; how many there were."""
        return 0

    def close(self) -> None:
        """Remove the slots' groups."""


class V1Slots(Slots):
    """Slots in the cgroup v1 memory and pids hierarchies."""

    version = "v1"

    def __init__(self, count: int, memory: Path, pids: Path) -> None:
        super().__init__(count)
        self.memory_base, self.pids_base = memory, pids
        for base in (memory, pids):
            base.mkdir(exist_ok=True)
            for slot in range(count):
                (base / f"slot-{slot}").mkdir(exist_ok=True)
        self._swap = (memory / "slot-0" / "memory.memsw.limit_in_bytes").exists()

    def _memory(self, slot: int) -> Path:
        return self.memory_base / f"slot-{slot}"

    def _pids(self, slot: int) -> Path:
        return self.pids_base / f"slot-{slot}"

    def procs_files(self, slot: int) -> list[str]:
        """The slot's `cgroup.procs` files."""
        return [str(self._memory(slot) / "cgroup.procs"), str(self._pids(slot) / "cgroup.procs")]

    def prepare(self, slot: int, memory_bytes: int, pids: int) -> Counters:
        """Set the slot's limits; its counters now."""
        memory = self._memory(slot)
        if self._swap:  # memsw must stay >= the memory limit: raise it first, lower it after
            _write(memory / "memory.memsw.limit_in_bytes", "-1")
        _write(memory / "memory.limit_in_bytes", str(memory_bytes))
        if self._swap:
            _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
        with contextlib.suppress(OSError):
            _write(memory / "memory.max_usage_in_bytes", "0")
        _write(self._pids(slot) / "pids.max", str(pids))
        return self.counters(slot)

    def counters(self, slot: int) -> Counters:
        """The slot's counters now."""
        return Counters(
            oom_kills=_read_key(self._memory(slot) / "memory.oom_control", "oom_kill"),
            pids_refused=_read_key(self._pids(slot) / "pids.events", "max"),
        )

    def peak_memory_kb(self, slot: int) -> int:
        """The slot's peak memory in KiB (0 when unknown)."""
        try:
            return int((self._memory(slot) / "memory.max_usage_in_bytes").read_text()) // 1024
        except (OSError, ValueError):
            return 0

    def kill(self, slot: int) -> int:
        """Kill what is left in the slot; how many there were."""
        return _kill_listed(
            [self._memory(slot) / "cgroup.procs", self._pids(slot) / "cgroup.procs"]
        )

    def close(self) -> None:
        """Remove the slots' groups."""
        for base in (self.memory_base, self.pids_base):
            for slot in range(self.count):
                with contextlib.suppress(OSError):
                    (base / f"slot-{slot}").rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()


class V2Slots(Slots):
    """Slots as cgroup v2 siblings of the service's own leaf."""

    version = "v2"

    def __init__(self, count: int, parent: Path) -> None:
        super().__init__(count)
        self.parent = parent
        for slot in range(count):
            (parent / f"slot-{slot}").mkdir(exist_ok=True)

    def _group(self, slot: int) -> Path:
        return self.parent / f"slot-{slot}"

    def procs_files(self, slot: int) -> list[str]:
        """The slot's `cgroup.procs` files."""
        return [str(self._group(slot) / "cgroup.procs")]

    def prepare(self, slot: int, memory_bytes: int, pids: int) -> Counters:
        """Set the slot's limits; its counters now."""
        group = self._group(slot)
        _write(group / "memory.max", str(memory_bytes))
        with contextlib.suppress(OSError):
            _write(group / "memory.swap.max", "0")
        with contextlib.suppress(OSError):  # resettable since Linux 6.12
            _write(group / "memory.peak", "reset")
        _write(group / "pids.max", str(pids))
        return self.counters(slot)

    def counters(self, slot: int) -> Counters:
        """The slot's counters now."""
        group = self._group(slot)
        return Counters(
            oom_kills=_read_key(group / "memory.events", "oom_kill"),
            pids_refused=_read_key(group / "pids.events", "max"),
        )

    def peak_memory_kb(self, slot: int) -> int:
        """The slot's peak memory in KiB (0 when unknown)."""
        try:
            return int((self._group(slot) / "memory.peak").read_text()) // 1024
        except (OSError, ValueError):
            return 0

    def kill(self, slot: int) -> int:
        """Kill what is left in the slot; how many there were."""
        group = self._group(slot)
        left = len(_pids_in(group / "cgroup.procs"))
        if left:
            with contextlib.suppress(OSError):
                _write(group / "cgroup.kill", "1")
            _kill_listed([group / "cgroup.procs"])
        return left

    def close(self) -> None:
        """Remove the slots' groups."""
        for slot in range(self.count):
            with contextlib.suppress(OSError):
                self._group(slot).rmdir()


def _pids_in(procs: Path) -> list[int]:
    try:
        return [int(line) for line in procs.read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_listed(files: list[Path]) -> int:
    """SIGKILL every process listed, until none is (new ones can appear while killing)."""
    killed: set[int] = set()
    for _ in range(20):
        pids = {pid for f in files for pid in _pids_in(f)}
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
    return len(killed)


def _own_groups() -> dict[str, str]:
    """This process's cgroup path per hierarchy ("" key: the v2 unified hierarchy)."""
    groups: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return groups
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            groups[name] = path
    return groups


def _v2(count: int) -> Slots | None:
    if not (ROOT / "cgroup.controllers").exists():
        return None
    own = ROOT / _own_groups().get("", "/").lstrip("/")
    available = (own / "cgroup.controllers").read_text().split()
    if not {"memory", "pids"} <= set(available):
        return None
    leaf = own / "service"
    leaf.mkdir(exist_ok=True)
    for pid in _pids_in(own / "cgroup.procs"):  # the whole service moves into its leaf
        with contextlib.suppress(ProcessLookupError):
            _write(leaf / "cgroup.procs", str(pid))
    _write(own / "cgroup.subtree_control", "+memory +pids")
    return V2Slots(count, own)


def _v1(count: int) -> Slots | None:
    memory_root, pids_root = ROOT / "memory", ROOT / "pids"
    if not (memory_root / "cgroup.procs").exists() or not (pids_root / "cgroup.procs").exists():
        return None
    own = _own_groups()
    name = f"agentrt-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    memory = memory_root / own.get("memory", "/").lstrip("/")
    pids = pids_root / own.get("pids", "/").lstrip("/")
    for parent in (memory, pids):
        _remove_stale(parent)
    return V1Slots(count, memory / name, pids / name)


def _remove_stale(parent: Path) -> None:
    """Remove the slot groups of services that died without removing them (kill -9)."""
    for base in parent.glob("agentrt-sandbox-*"):
        pid = base.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for slot in base.glob("slot-*"):
                _kill_listed([slot / "cgroup.procs"])
                with contextlib.suppress(OSError):
                    slot.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()


def open_slots(count: int, mode: str = "auto") -> tuple[Slots, str]:
    """Control groups for `count` slots; and why there are none, when there are none.

    `mode`: "auto" (v2, else v1, else none), "v2", "v1" or "off".
    """
    if mode == "off":
        return Slots(count), "control groups are off (setting)"
    tried: list[str] = []
    for version, make in (("v2", _v2), ("v1", _v1)):
        if mode not in ("auto", version):
            continue
        try:
            slots = make(count)
        except OSError as e:
            tried.append(f"{version}: {e.strerror or e}")
            continue
        if slots is not None:
            return slots, ""
        tried.append(f"{version}: no writable memory and pids controllers")
    return Slots(count), "; ".join(tried) or "no control groups"
