"""The `x-agentrt-code` keyword: an agent's own code, read (never run) at create and update.

Beside the template-validation tests of `test_registry_domain.py`; the descriptor is the
schema pydantic makes of a config shaped like the executors' `custom` template.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from registry_support import CODE, CTX, NODE, PYTHON, executor_document, executor_report

from agent_registry.adapters.memory import InMemoryTemplateCatalog
from agent_registry.application.registry import AgentRegistry
from agent_registry.domain.code import MAX_CODE_BYTES
from agent_registry.domain.executors import ExecutorReport, SandboxRuntime, fleet_of
from agent_registry.domain.templates import TemplateDescriptor
from agent_registry.errors import InvalidAgent

RUNTIMES = (PYTHON, NODE)
PREFIX = "spec.template_config."


def problems(
    content: str,
    language: str | None = "python",
    *,
    runtimes: tuple[SandboxRuntime, ...] = RUNTIMES,
    version: str | None = None,
    **source: Any,
) -> dict[str, str]:
    """The violations of a custom agent's config, by path inside `template_config`."""
    runtime: dict[str, Any] = {}
    if language is not None:
        runtime["language"] = language
    if version is not None:
        runtime["version"] = version
    config: dict[str, Any] = {"codeSource": {"type": "inline", "content": content, **source}}
    if runtime:
        config["runtime"] = runtime
    found = CODE.validate_config(config, runtimes=runtimes)
    return {v.field.removeprefix(PREFIX): v.description for v in found}


PY_MAIN = "import json\n\nasync def main(messages, agent):\n    return json.dumps(messages)\n"
JS_MAIN = "const path = require('path');\n\nfunction main(messages, agent) {\n  return 'hi';\n}\n"


# ------------------------------------------------------------------ Python


def test_good_python_code_passes() -> None:
    assert problems(PY_MAIN) == {}
    assert problems(PY_MAIN, dependencies=["json", "asyncio"], version="3.11") == {}


def test_the_language_defaults_as_the_schema_says() -> None:
    # No `runtime` at all: the schema's default language (python) applies.
    assert problems("def main(m, a):\n    return 1\n", language=None) == {}
    assert problems("function main() {}", language=None) == {
        "codeSource.content": "does not parse: line 1, column 10: invalid syntax"
    }


def test_python_that_does_not_parse_is_refused_with_its_line_and_column() -> None:
    code = "def main(messages, agent):\n    return (1,\n\nx = 2\n"
    assert problems(code) == {
        "codeSource.content": "does not parse: line 2, column 12: '(' was never closed"
    }
    assert problems("def main():\n  pass\n   oops\n") == {
        "codeSource.content": "does not parse: line 3, column 3: unexpected indent"
    }


@pytest.mark.parametrize(
    "code",
    [
        "def main(m, a):\n    return 1\n",
        "async def main(m, a):\n    return 1\n",
        "@decorated\ndef main(m, a):\n    return 1\n",
        "main = lambda m, a: 1\n",
        "handler = main = lambda m, a: 1\n",
        "main: object = lambda m, a: 1\n",
    ],
)
def test_a_python_entry_point_is_a_top_level_function_or_lambda(code: str) -> None:
    assert problems(code) == {}


@pytest.mark.parametrize(
    "code",
    [
        "def other(m, a):\n    return 1\n",
        "class Agent:\n    def main(self):\n        return 1\n",
        "if True:\n    def main(m, a):\n        return 1\n",
        "def outer():\n    def main():\n        pass\n",
        "main = 5\n",
        "from helpers import main\n",
    ],
)
def test_a_python_entry_point_only_nested_imported_or_not_a_function_is_missing(code: str) -> None:
    assert problems(code) == {"codeSource.entryPoint": "no top-level function main in the code"}


def test_another_entry_point_is_looked_for_by_its_name() -> None:
    assert problems("def handle(m, a):\n    return 1\n", entryPoint="handle") == {}
    assert problems(PY_MAIN, entryPoint="handle") == {
        "codeSource.entryPoint": "no top-level function handle in the code"
    }
    assert problems(PY_MAIN, entryPoint="not-a-name") == {
        "codeSource.entryPoint": "'not-a-name' is not a python identifier"
    }
    assert problems(PY_MAIN, entryPoint="class") == {
        "codeSource.entryPoint": "'class' is not a python identifier"
    }


def test_python_dependencies_must_be_in_the_sandboxs_standard_library() -> None:
    got = problems(PY_MAIN, dependencies=["json", "numpy", "xml.etree.ElementTree", "requests"])
    assert got == {
        "codeSource.dependencies[1]": "'numpy' is not provided by the sandbox's python runtime "
        "(only its standard library is)",
        "codeSource.dependencies[3]": "'requests' is not provided by the sandbox's python "
        "runtime (only its standard library is)",
    }


# ------------------------------------------------------------------ JavaScript


def test_good_javascript_code_passes() -> None:
    assert problems(JS_MAIN, "javascript") == {}
    assert (
        problems(
            JS_MAIN, "javascript", dependencies=["path", "node:fs", "fs/promises"], version="20"
        )
        == {}
    )
    # A hashbang line and a top-level `return` are fine in a CommonJS module.
    assert problems("#!/usr/bin/env node\nfunction main() {}\nreturn;\n", "javascript") == {}


@pytest.mark.parametrize(
    ("code", "where"),
    [
        ("function main(messages {\n  return 1;\n}\n", "line 1, column 23: missing ')'"),
        ("function main() {\n  const x = ;\n}\n", "line 2, column 11: syntax error at '='"),
        ("function main() {\n  if (x) {\n    return 1;\n}\n", "line 4, column 2: missing '}'"),
        ("const a = 1;\n\nfoo(1 2);\nfunction main() {}\n", "line 3, column 7: syntax error at"),
        # Columns count characters, not the bytes tree-sitter counts.
        ("const é = 'é'; foo(1 2);\nfunction main() {}\n", "line 1, column 22: syntax error"),
    ],
)
def test_javascript_that_does_not_parse_is_refused_at_its_first_error(
    code: str, where: str
) -> None:
    got = problems(code, "javascript")
    assert list(got) == ["codeSource.content"]
    assert got["codeSource.content"].startswith(f"does not parse: {where}")


def test_es_module_syntax_and_top_level_await_do_not_run_as_commonjs() -> None:
    exported = problems("export function main() {}\n", "javascript")
    assert exported == {
        "codeSource.content": "does not parse: line 1, column 1: export is ES module syntax; "
        "the code runs as a CommonJS module (use require and module.exports)"
    }
    imported = problems("import fs from 'fs';\nfunction main() {}\n", "javascript")
    assert imported["codeSource.content"].startswith(
        "does not parse: line 1, column 1: import is ES module syntax"
    )
    for code, line in [
        ("const data = await load();\nfunction main() {}\n", "line 1, column 14"),
        ("function main() {}\nfor await (const x of xs) {}\n", "line 2, column 5"),
        ("function main() {}\nif (x) { y = [await z]; }\n", "line 2, column 15"),
    ]:
        got = problems(code, "javascript")["codeSource.content"]
        assert got.startswith(f"does not parse: {line}: await outside a function"), got
    # Inside any function, `await` is the code's own business.
    inside = (
        "async function main() { await a; for await (const x of xs) {} }\n"
        "const f = async () => { await b; };\n"
        "class C { async m() { await c; } }\n"
    )
    assert problems(inside, "javascript") == {}


@pytest.mark.parametrize(
    "code",
    [
        "function main(messages, agent) { return 'x'; }",
        "async function main(messages, agent) { return 'x'; }",
        "const main = function (messages) { return 'x'; };",
        "let main = (messages) => 'x';",
        "var main = async (messages) => 'x';",
        "const other = 1, main = async function () {};",
        "module.exports.main = async (messages) => 'x';",
        "exports.main = function () {};",
        "function run() {}\nmodule.exports.main = run;",
        "function main() {}\nmodule.exports = { main };",
        "module.exports = { other: 1, main: () => 'x' };",
        "module.exports = { 'main': () => 'x' };",
        "module.exports = { async main(messages) { return 'x'; } };",
    ],
)
def test_a_javascript_entry_point_may_take_each_documented_form(code: str) -> None:
    assert problems(code, "javascript") == {}


@pytest.mark.parametrize(
    "code",
    [
        "function other() {}",
        "const main = 5;",
        "const main = require('./main');",
        "function outer() { function main() {} }",
        "if (x) { function main() {} }",
        "module.exports = { other: main };",
        "exports = { main: () => 1 };",
        "module.exports.other = () => 1;",
        "thing.exports.main = () => 1;",
        "function* main() {}",
    ],
)
def test_a_javascript_entry_point_elsewhere_or_not_a_function_is_missing(code: str) -> None:
    assert problems(code, "javascript") == {
        "codeSource.entryPoint": "no top-level function main in the code"
    }


def test_a_javascript_entry_point_must_be_an_identifier() -> None:
    assert problems("function run() {}", "javascript", entryPoint="run") == {}
    assert problems("function $run() {}", "javascript", entryPoint="$run") == {}
    assert problems(JS_MAIN, "javascript", entryPoint="main()") == {
        "codeSource.entryPoint": "'main()' is not a javascript identifier"
    }


def test_javascript_dependencies_must_be_built_in_modules() -> None:
    got = problems(JS_MAIN, "javascript", dependencies=["fs", "node:path", "lodash", "node:nope"])
    assert got == {
        "codeSource.dependencies[2]": "'lodash' is not provided by the sandbox's javascript "
        "runtime (only its built-in modules are)",
        "codeSource.dependencies[3]": "'node:nope' is not provided by the sandbox's javascript "
        "runtime (only its built-in modules are)",
    }


# ------------------------------------------------------------------ runtimes and bounds


def test_without_a_published_runtime_dependencies_cannot_be_checked() -> None:
    assert problems(PY_MAIN, dependencies=["json"], runtimes=()) == {
        "codeSource.dependencies": "cannot be checked because no executor offers a sandboxed "
        "python runtime now"
    }
    # Only the language's own runtimes count.
    assert problems(JS_MAIN, "javascript", dependencies=["fs"], runtimes=(PYTHON,)) == {
        "codeSource.dependencies": "cannot be checked because no executor offers a sandboxed "
        "javascript runtime now"
    }
    # No dependency, nothing to check; the version is not checked either.
    assert problems(PY_MAIN, runtimes=(), version="2.7") == {}
    # The code itself is read all the same.
    assert problems("def main(:\n", runtimes=()) == {
        "codeSource.content": "does not parse: line 1, column 10: invalid syntax"
    }


@pytest.mark.parametrize(
    ("version", "ok"),
    [("", True), ("3", True), ("3.11", True), ("3.11.2", True), ("3.1", False), ("3.12", False)],
)
def test_the_runtime_version_must_lead_a_published_version(version: str, ok: bool) -> None:
    other = SandboxRuntime("python", "3.13.0", frozenset({"json"}))
    got = problems(PY_MAIN, version=version, runtimes=(PYTHON, other, NODE))
    if ok:
        assert got == {}
    else:
        assert got == {
            "runtime.version": f"{version!r} matches no sandboxed python runtime the executors "
            "offer (3.11.2, 3.13.0)"
        }
    assert problems(JS_MAIN, "javascript", version="20.19") == {}
    assert list(problems(JS_MAIN, "javascript", version="18")) == ["runtime.version"]


def test_dependencies_are_held_to_the_runtimes_of_the_version_asked_for() -> None:
    newer = SandboxRuntime("python", "3.13.0", frozenset({"json", "tomllib"}))
    runtimes = (PYTHON, newer)
    assert problems(PY_MAIN, dependencies=["tomllib"], runtimes=runtimes) == {}
    assert problems(PY_MAIN, dependencies=["tomllib"], version="3.13", runtimes=runtimes) == {}
    got = problems(PY_MAIN, dependencies=["tomllib"], version="3.11", runtimes=runtimes)
    assert list(got) == ["codeSource.dependencies[0]"]


def test_code_over_256_kib_is_refused_before_it_is_parsed() -> None:
    filler = "# " + "x" * 1000 + "\n"
    big = filler * (MAX_CODE_BYTES // len(filler) + 1) + PY_MAIN
    assert len(big.encode()) > MAX_CODE_BYTES
    assert problems(big) == {
        "codeSource.content": f"is {len(big.encode())} bytes; inline code may be at most "
        f"{MAX_CODE_BYTES} bytes (256 KiB)"
    }
    # Counted in bytes: 100,000 three-byte characters are over, though fewer characters.
    wide = "def main(m, a):\n    return '" + "€" * 100_000 + "'\n"
    assert len(wide) < MAX_CODE_BYTES < len(wide.encode())
    assert list(problems(wide)) == ["codeSource.content"]
    just = PY_MAIN + "#" * (MAX_CODE_BYTES - len(PY_MAIN.encode()))
    assert problems(just) == {}


def test_code_in_a_workspace_file_is_read_at_run_time_but_its_needs_are_checked() -> None:
    config = {
        "codeSource": {"type": "file", "content": "agent/main.py", "dependencies": ["numpy"]},
        "runtime": {"language": "python", "version": "3.12"},
    }
    found = {v.field: v.description for v in CODE.validate_config(config, runtimes=RUNTIMES)}
    assert set(found) == {
        f"{PREFIX}codeSource.dependencies[0]",
        f"{PREFIX}runtime.version",
    }


def test_values_the_schema_refuses_are_left_to_the_schema() -> None:
    config = {"codeSource": {"type": "inline", "content": 42}, "runtime": {"language": "ruby"}}
    found = CODE.validate_config(config, runtimes=RUNTIMES)
    assert {v.field for v in found} == {
        f"{PREFIX}codeSource.content",
        f"{PREFIX}runtime.language",
    }
    assert all("does not parse" not in v.description for v in found)


def test_what_the_schemas_own_constraints_refuse_is_reported_once() -> None:
    # As the executors' `custom` bounds them: content by characters, entryPoint by a pattern.
    schema = copy.deepcopy(dict(CODE.config_schema))
    fields = schema["$defs"]["_CodeSource"]["properties"]
    fields["content"]["maxLength"] = 1_000
    fields["entryPoint"]["pattern"] = "^[A-Za-z_$][A-Za-z0-9_$]*$"
    bounded = TemplateDescriptor("custom", "2.0.0", schema)

    def found(**source: Any) -> dict[str, str]:
        config = {
            "codeSource": {"type": "inline", **source},
            "runtime": {"language": "python"},
        }
        got = bounded.validate_config(config, runtimes=RUNTIMES)
        return {v.field.removeprefix(PREFIX): v.description for v in got}

    too_long = found(content="def main(:\n" + "#" * 1_000)
    assert list(too_long) == ["codeSource.content"]
    assert "is too long" in too_long["codeSource.content"]  # not parsed, not "does not parse"
    bad_name = found(content=PY_MAIN, entryPoint="a-b")
    assert list(bad_name) == ["codeSource.entryPoint"]
    assert "does not match" in bad_name["codeSource.entryPoint"]
    # What the pattern lets through but Python cannot name is still told.
    assert found(content=PY_MAIN, entryPoint="$main") == {
        "codeSource.entryPoint": "'$main' is not a python identifier"
    }


# ------------------------------------------------------------------ runtimes the fleet offers


def test_the_fleet_offers_the_runtimes_of_every_available_sandbox() -> None:
    newer = SandboxRuntime("python", "3.13.0", frozenset({"json"}))
    one = executor_report("one", runtimes=(PYTHON,))
    two = executor_report("two", runtimes=(PYTHON, NODE, newer))
    without = executor_report("without")
    assert fleet_of([one, two, without], time.time()).runtimes == (NODE, PYTHON, newer)
    # An expired executor's sandbox counts only when no executor is live (like its ceilings).
    gone = executor_report("gone", runtimes=(newer,), expires_in=-60)
    assert fleet_of([gone, one], time.time()).runtimes == (PYTHON,)
    assert fleet_of([gone], time.time()).runtimes == (newer,)


def test_sandbox_runtimes_are_read_from_executor_entries() -> None:
    doc = executor_document(executor_report("e1", runtimes=(PYTHON, NODE)))
    assert ExecutorReport.from_document(doc).runtimes == (PYTHON, NODE)
    unavailable = {**doc, "sandbox": {**doc["sandbox"], "available": False}}
    assert ExecutorReport.from_document(unavailable).runtimes == ()
    for unknown in ({**doc, "sandbox": None}, {k: v for k, v in doc.items() if k != "sandbox"}):
        assert ExecutorReport.from_document(unknown).runtimes == ()
    for bad in (
        {**doc, "sandbox": "bubblewrap"},
        {**doc, "sandbox": {"available": True, "runtimes": {"python": "3.11"}}},
        {**doc, "sandbox": {"available": True, "runtimes": [{"language": "python"}]}},
        {
            **doc,
            "sandbox": {
                "available": True,
                "runtimes": [{"language": "python", "version": "3", "modules": "json"}],
            },
        },
    ):
        with pytest.raises(ValueError, match="executor entry"):
            ExecutorReport.from_document(bad)


# ------------------------------------------------------------------ at create and update


def custom_spec(content: str, *dependencies: str, language: str = "python") -> dict[str, Any]:
    return {
        "name": "Coder",
        "template_id": "custom",
        "template_config": {
            "codeSource": {
                "type": "inline",
                "content": content,
                "dependencies": list(dependencies),
            },
            "runtime": {"language": language},
        },
    }


def refusal(command: Any) -> dict[str, str]:
    with pytest.raises(InvalidAgent) as info:
        command()
    return {v.field: v.description for v in info.value.violations}


def test_create_and_update_hold_code_to_the_runtimes_live_executors_publish() -> None:
    catalog = InMemoryTemplateCatalog([CODE])
    app = AgentRegistry({"PERSISTENCE_MODULE": "eventsourcing.popo"}, catalog)
    # No executor offers a sandbox yet: a dependency cannot be checked.
    assert refusal(lambda: app.create_agent("c1", custom_spec(PY_MAIN, "json"), None, CTX)) == {
        f"{PREFIX}codeSource.dependencies": "cannot be checked because no executor offers a "
        "sandboxed python runtime now"
    }
    catalog.put_executor(executor_report("no-sandbox"))
    catalog.put_executor(executor_report("sandboxed", runtimes=(PYTHON,)))
    state, _ = app.create_agent("c1", custom_spec(PY_MAIN, "json"), None, CTX)
    assert state.version == 1

    def update(**config: Any) -> Any:
        current = app.get_agent("c1").spec["template_config"]
        change = {"template_config": {**current, **config}}
        return lambda: app.update_agent("c1", change, None, CTX)

    broken = {"type": "inline", "content": "def main(:\n"}
    assert refusal(update(codeSource=broken)) == {
        f"{PREFIX}codeSource.content": "does not parse: line 1, column 10: invalid syntax"
    }
    numpy = {"type": "inline", "content": PY_MAIN, "dependencies": ["numpy"]}
    assert list(refusal(update(codeSource=numpy))) == [f"{PREFIX}codeSource.dependencies[0]"]
    javascript = {"type": "inline", "content": JS_MAIN, "dependencies": ["fs"]}
    assert list(refusal(update(codeSource=javascript, runtime={"language": "javascript"}))) == [
        f"{PREFIX}codeSource.dependencies"
    ]
    # The sandboxed executor is gone: its runtimes go with it.
    catalog.put_executor(executor_report("sandboxed", runtimes=(PYTHON,), expires_in=-1))
    assert list(refusal(update(runtime={"language": "python", "version": "3.11"}))) == [
        f"{PREFIX}codeSource.dependencies"
    ]
    catalog.put_executor(executor_report("sandboxed", runtimes=(PYTHON, NODE)))
    state, _ = app.update_agent(
        "c1",
        {"template_config": custom_spec(JS_MAIN, "fs", language="javascript")["template_config"]},
        None,
        CTX,
    )
    assert state.version == 2
