"""Adapter: the language runtimes the sandbox binds in, found on this host at start-up.

A runtime is the interpreter, the shared libraries it and its standard library's
extension modules load (`ldd`), and the standard library itself; nothing else of
the host is bound into a sandbox. Python's site-packages are hidden where they
lie inside the standard library's folder (a pyenv or python.org build), so code
sees the standard library only. Each runtime also reports the modules it
provides (Python's importable standard library, Node.js's built-in modules):
the registry checks a custom agent's `dependencies` against them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tool_service.domain.sandbox import Language, Runtime

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 20.0

_PYTHON_PROBE = r"""
import importlib.util, json, os, sys, sysconfig
paths = sysconfig.get_paths()
modules = sorted(
    m for m in sys.stdlib_module_names
    if not m.startswith("_") and importlib.util.find_spec(m) is not None
)
print(json.dumps({
    "version": "%d.%d.%d" % sys.version_info[:3],
    "executable": os.path.realpath(sys.executable),
    "stdlib": os.path.realpath(paths["stdlib"]),
    "platstdlib": os.path.realpath(paths["platstdlib"]),
    "site": [os.path.realpath(paths[k]) for k in ("purelib", "platlib")],
    "modules": modules,
}))
"""

_NODE_PROBE = (
    "console.log(JSON.stringify({version: process.versions.node, "
    "modules: require('module').builtinModules.filter(m => !m.startsWith('_'))}))"
)

_LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


class RuntimeMissing(Exception):
    """A runtime cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class RuntimeImage:
    """What a sandbox binds to run one language, and how to start it."""

    runtime: Runtime
    interpreter: str
    # Host paths bound read-only at the same path inside the sandbox.
    binds: tuple[str, ...]
    # Paths inside `binds` hidden by an empty tmpfs (site-packages).
    masks: tuple[str, ...] = ()
    # Interpreter options before the script.
    options: tuple[str, ...] = ()
    suffix: str = ".py"

    @property
    def python(self) -> bool:
        """Whether this is the Python runtime (else Node.js: JavaScript or TypeScript)."""
        return self.runtime.language is Language.PYTHON

    def harness(self, kind: str) -> str:
        """The sandbox harness file of `kind` ("run" or "agent") for this runtime."""
        return f"{kind}.py" if self.python else f"{kind}.js"

    def command(self, script: str, *args: str) -> list[str]:
        """The command running `script` with this runtime."""
        return [self.interpreter, *self.options, script, *args]


def _run(argv: Sequence[str], *, check: bool = True) -> str:
    """The command's stdout (RuntimeMissing when it cannot run, or fails and `check`)."""
    try:
        done = subprocess.run(  # noqa: S603 - our own probes of configured runtimes
            list(argv),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeMissing(f"{argv[0]}: {e}") from None
    if check and done.returncode != 0:
        raise RuntimeMissing(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def shared_libraries(files: Sequence[str]) -> list[str]:
    """Every shared library `files` load (with the dynamic loader), as `ldd` finds them.

    `ldd` fails for a file that is not dynamic (a static interpreter): what it found for
    the others still counts.
    """
    if not files:
        return []
    output = _run([shutil.which("ldd") or "/usr/bin/ldd", *files], check=False)
    found = dict.fromkeys(m.group(1) for m in _LDD_PATH.finditer(output))
    # glibc loads libgcc_s at run time (pthread_exit and cancellation unwind with it), so
    # ldd never lists it: it lies beside libc.
    for library in list(found):
        if os.path.basename(library) == "libc.so.6":
            found.setdefault(os.path.join(os.path.dirname(library), "libgcc_s.so.1"))
    return [p for p in found if os.path.exists(p)]


def _resolve(path: str) -> str:
    found = shutil.which(path) if os.sep not in path else path
    if not found or not os.path.exists(found):
        raise RuntimeMissing(f"{path}: not found")
    return os.path.realpath(found)


def python_image(path: str) -> RuntimeImage:
    """The Python runtime at `path` (an interpreter name or path)."""
    interpreter = _resolve(path)
    facts = json.loads(_run([interpreter, "-I", "-c", _PYTHON_PROBE]))
    stdlib = {facts["stdlib"], facts["platstdlib"]}
    extensions = [
        str(p)
        for folder in stdlib
        for p in sorted((Path(folder) / "lib-dynload").glob("*.so"))
        if p.is_file()
    ]
    libraries = shared_libraries([facts["executable"], *extensions])
    inside = tuple(
        sorted(
            {
                site
                for site in facts["site"]
                if os.path.isdir(site) and any(site.startswith(s + os.sep) for s in stdlib)
            }
        )
    )
    return RuntimeImage(
        runtime=Runtime(Language.PYTHON, facts["version"], tuple(facts["modules"])),
        interpreter=facts["executable"],
        binds=tuple(dict.fromkeys([facts["executable"], *sorted(stdlib), *libraries])),
        masks=inside,
        # Isolated (no PYTHON* variables, no user site), no .pyc writes, UTF-8 whatever
        # the locale.
        options=("-I", "-B", "-X", "utf8"),
        suffix=".py",
    )


def node_images(path: str) -> list[RuntimeImage]:
    """The Node.js runtime at `path`: JavaScript, and TypeScript where it strips types."""
    interpreter = _resolve(path)
    facts = json.loads(_run([interpreter, "-e", _NODE_PROBE]))
    binds = tuple(dict.fromkeys([interpreter, *shared_libraries([interpreter])]))
    modules = tuple(sorted(facts["modules"]))
    images = [
        RuntimeImage(
            runtime=Runtime(Language.JAVASCRIPT, facts["version"], modules),
            interpreter=interpreter,
            binds=binds,
            suffix=".js",
        )
    ]
    try:
        _run([interpreter, "--experimental-strip-types", "--no-warnings", "-e", "1"])
    except RuntimeMissing:
        log.info("typescript not offered: node cannot strip types", extra={"node": facts})
    else:
        images.append(
            RuntimeImage(
                runtime=Runtime(Language.TYPESCRIPT, facts["version"], modules),
                interpreter=interpreter,
                binds=binds,
                options=("--experimental-strip-types", "--no-warnings"),
                suffix=".ts",
            )
        )
    return images


@lru_cache(maxsize=8)
def _discover(python: str, node: str) -> tuple[tuple[RuntimeImage, ...], tuple[str, ...]]:
    images, problems = _find(python, node)
    return tuple(images.values()), tuple(problems)


def discover(python: str, node: str) -> tuple[dict[Language, RuntimeImage], list[str]]:
    """The runtimes found (by language) and why others are missing.

    Probed once per process and pair of paths: a runtime's files do not change under a
    running service (a new image restarts it).
    """
    images, problems = _discover(python, node)
    return {image.runtime.language: image for image in images}, list(problems)


def _find(python: str, node: str) -> tuple[dict[Language, RuntimeImage], list[str]]:
    images: dict[Language, RuntimeImage] = {}
    problems: list[str] = []
    if python:
        try:
            images[Language.PYTHON] = python_image(python)
        except (RuntimeMissing, ValueError, KeyError) as e:
            problems.append(f"python: {e}")
    if node:
        try:
            for image in node_images(node):
                images[image.runtime.language] = image
        except (RuntimeMissing, ValueError, KeyError) as e:
            problems.append(f"javascript: {e}")
    return images, problems
