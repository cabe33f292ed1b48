"""Domain: what the registry can tell of an agent's own code before it runs (`x-agentrt-code`).

A template whose agents bring their code (the executors' `custom`) marks its config's
root object with `x-agentrt-code: {source: <field>, runtime: <field>}`, naming the
object that holds the code (`{type: inline|file, content, entryPoint = "main",
dependencies = []}`) and the one that says how it runs (`{language: python|javascript,
version = ""}`). The code itself runs only in the tools service's sandbox; here it is
only read, so a mistake is refused at create or update instead of failing every run:

- Inline code (`type: inline`, `content` the source) must be at most `MAX_CODE_BYTES`
  and parse: Python with `ast.parse`, JavaScript with tree-sitter as a CommonJS module
  (a tree with an ERROR or MISSING node does not parse, nor does `import`/`export`,
  nor `await` outside a function). Its entry point must be an identifier defined at
  top level: in Python a `def`/`async def`, or a name assigned a lambda; in JavaScript
  a `function` declaration, a `const|let|var` bound to a function or arrow, or an
  export (`module.exports.<name> = …`, `exports.<name> = …`,
  `module.exports = {<name>, …}`). Code read from a workspace file (`type: file`) is
  read only at run time, so only the checks below apply to it.
- Each dependency must be a module of the language's sandbox runtimes the executors
  publish (`modules`: Python's standard library, Node.js's built-in modules; a Python
  submodule counts by its top-level package, a `node:` prefix is optional). When no
  executor offers a runtime of the language, a dependency cannot be checked, so any
  is refused; none passes.
- A non-empty `version` must match a published runtime of the language by its leading
  dot components ("3.11" matches "3.11.2"); not checked when none is published. The
  dependencies are then held to the runtimes of that version.

Python is parsed by the registry's own interpreter, whose grammar may be newer than the
sandbox's. Values the schema refuses (a wrong type, a missing key, a content or entry
point its length or pattern refuses) are left to it: one violation says what is wrong.
"""

from __future__ import annotations

import ast
import bisect
import keyword
import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import tree_sitter_javascript
from tree_sitter import Language, Node, Parser, Query, QueryCursor

from agent_registry.domain.executors import SandboxRuntime

MAX_CODE_BYTES = 256 * 1024
DEFAULT_ENTRY_POINT = "main"

Path = tuple[str | int, ...]
Problem = tuple[Path, str]

_JAVASCRIPT = Language(tree_sitter_javascript.language())
_JS_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_JS_FUNCTIONS = frozenset({"function_expression", "arrow_function"})
# What a CommonJS module may not hold, found by tree-sitter (in C, not by walking the tree
# here): `await` (or `for await`) outside every function, and ES module statements.
_COMMONJS = Query(
    _JAVASCRIPT,
    """
    (await_expression) @await
    (for_in_statement "await" @await)
    (program [(import_statement) (export_statement)] @module)
    [(function_declaration) (function_expression) (arrow_function) (method_definition)
     (generator_function) (generator_function_declaration) (class_static_block)] @scope
    """,
)
_PROVIDED = {"python": "its standard library is", "javascript": "its built-in modules are"}


def code_problems(
    config: Mapping[str, Any],
    rule: Mapping[str, Any],
    runtimes: Sequence[SandboxRuntime],
    schema: Mapping[str, Any],
) -> list[Problem]:
    """What `x-agentrt-code` refuses in `config`: (path inside it, why) pairs.

    `schema` is the schema holding the keyword (the config's root, where `$defs` are):
    a value the config leaves out takes the default the schema gives it
    (`runtime.language`, `codeSource.entryPoint`).
    """
    source_field, runtime_field = rule.get("source"), rule.get("runtime")
    if not isinstance(source_field, str) or not isinstance(runtime_field, str):
        return []
    source, run = config.get(source_field), config.get(runtime_field, {})
    if not isinstance(source, Mapping) or not isinstance(run, Mapping):
        return []
    language = _value(run, "language", _properties(schema, runtime_field))
    if language not in _PROVIDED:
        return []
    fields = _properties(schema, source_field)
    problems: list[Problem] = []
    content = source.get("content")
    if (
        source.get("type") == "inline"
        and isinstance(content, str)
        and not _refused(fields.get("content", {}), content)
    ):
        entry = _value(source, "entryPoint", fields, DEFAULT_ENTRY_POINT)
        if isinstance(entry, str) and _refused(fields.get("entryPoint", {}), entry):
            entry = None
        problems.extend(
            ((source_field, *path), message)
            for path, message in _inline_problems(content, language, entry)
        )
    offered = [r for r in runtimes if r.language == language]
    version = run.get("version", "")
    if isinstance(version, str) and version.strip() and offered:
        matching = [r for r in offered if _version_matches(version.strip(), r.version)]
        if not matching:
            versions = ", ".join(sorted({r.version for r in offered}))
            problems.append(
                (
                    (runtime_field, "version"),
                    f"{version[:40]!r} matches no sandboxed {language} runtime the executors "
                    f"offer ({versions})",
                )
            )
        else:
            offered = matching
    dependencies = _value(source, "dependencies", fields, [])
    if isinstance(dependencies, list):
        problems.extend(
            ((source_field, *path), message)
            for path, message in _dependency_problems(dependencies, language, offered)
        )
    return problems


def _inline_problems(code: str, language: str, entry: Any) -> list[Problem]:
    """Size, syntax and entry point of inline code; paths relative to the source object."""
    size = len(code.encode("utf-8", "surrogatepass"))
    if size > MAX_CODE_BYTES:
        return [
            (
                ("content",),
                f"is {size} bytes; inline code may be at most {MAX_CODE_BYTES} bytes (256 KiB)",
            )
        ]
    defines = _parse_python(code) if language == "python" else _parse_javascript(code)
    if isinstance(defines, str):
        return [(("content",), f"does not parse: {defines}")]
    if not isinstance(entry, str):
        return []  # the schema says what is wrong with it
    if not _is_identifier(entry, language):
        return [(("entryPoint",), f"{entry[:64]!r} is not a {language} identifier")]
    if not defines(entry):
        return [(("entryPoint",), f"no top-level function {entry} in the code")]
    return []


def _parse_python(code: str) -> Callable[[str], bool] | str:
    """Whether a name is an entry point of the module, or why the code does not parse."""
    try:
        module = ast.parse(code, "<agent code>")
    except SyntaxError as e:
        return f"line {e.lineno or 1}, column {e.offset or 1}: {e.msg}"
    except ValueError as e:  # a NUL character (3.11)
        return str(e)
    except (RecursionError, MemoryError):
        return "nested too deeply"
    return partial(_python_defines, module)


def _python_defines(module: ast.Module, name: str) -> bool:
    """A top-level `def`/`async def` named `name`, or `name` assigned a lambda."""
    for node in module.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Lambda):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def _parse_javascript(code: str) -> Callable[[str], bool] | str:
    """Whether a name is an entry point of the program, or why it is no CommonJS module."""
    data = code.encode("utf-8", "surrogatepass")
    root = Parser(_JAVASCRIPT).parse(data).root_node
    if root.has_error:
        bad = _first_error(root)
        if bad.is_missing:
            what = bad.type if bad.is_named else repr(bad.type)
            return f"{_position(data, bad)}: missing {what}"
        return f"{_position(data, bad)}: syntax error at {_snippet(bad)!r}"
    found = QueryCursor(_COMMONJS).captures(root)
    if modular := found.get("module"):
        statement = min(modular, key=lambda n: n.start_byte)
        return (
            f"{_position(data, statement)}: {statement.type.split('_')[0]} is ES module "
            "syntax; the code runs as a CommonJS module (use require and module.exports)"
        )
    awaiting = _top_level_await(found.get("await", []), found.get("scope", []))
    if awaiting is not None:
        return (
            f"{_position(data, awaiting)}: await outside a function (the code runs as a "
            "CommonJS module, where top-level await is not allowed)"
        )
    return partial(_javascript_defines, root)


def _first_error(root: Node) -> Node:
    """The first ERROR or MISSING node in document order (`root` has one)."""
    node = root
    while True:
        for child in node.children:
            if child.is_error or child.is_missing:
                return child
            if child.has_error:
                node = child
                break
        else:
            return node  # its error lies in no child: the node itself


def _top_level_await(awaits: Sequence[Node], scopes: Sequence[Node]) -> Node | None:
    """The first of `awaits` in no function (`scopes`: every function-like node)."""
    outermost: list[tuple[int, int]] = []
    for start, end in sorted((n.start_byte, n.end_byte) for n in scopes):
        if outermost and start < outermost[-1][1]:
            continue  # inside the one before
        outermost.append((start, end))
    starts = [start for start, _ in outermost]
    for node in sorted(awaits, key=lambda n: n.start_byte):
        i = bisect.bisect_right(starts, node.start_byte) - 1
        if i < 0 or node.start_byte >= outermost[i][1]:
            return node
    return None


def _javascript_defines(root: Node, name: str) -> bool:
    """A top-level function, a binding to a function or arrow, or an export named `name`."""
    for statement in root.named_children:
        kind = statement.type
        if kind == "function_declaration" and _text(statement.child_by_field_name("name")) == name:
            return True
        if kind in ("lexical_declaration", "variable_declaration"):
            for declarator in statement.named_children:
                value = declarator.child_by_field_name("value")
                if (
                    _text(declarator.child_by_field_name("name")) == name
                    and value is not None
                    and value.type in _JS_FUNCTIONS
                ):
                    return True
        if (
            kind == "expression_statement"
            and statement.named_child_count
            and _exports(statement.named_children[0], name)
        ):
            return True
    return False


def _exports(expression: Node, name: str) -> bool:
    """`module.exports.<name> = …`, `exports.<name> = …` or `module.exports = {<name>, …}`."""
    if expression.type != "assignment_expression":
        return False
    left, right = expression.child_by_field_name("left"), expression.child_by_field_name("right")
    if left is None or right is None or left.type != "member_expression":
        return False
    target, prop = left.child_by_field_name("object"), left.child_by_field_name("property")
    if prop is not None and _text(prop) == name and _is_exports(target):
        return True
    if _is_exports(left) and right.type == "object":
        for member in right.named_children:
            key: Node | None = member
            if member.type == "pair":
                key = member.child_by_field_name("key")
            elif member.type == "method_definition":
                key = member.child_by_field_name("name")
            if key is not None and _key_text(key) == name:
                return True
    return False


def _is_exports(node: Node | None) -> bool:
    """`exports` or `module.exports`."""
    if node is None:
        return False
    if node.type == "identifier":
        return _text(node) == "exports"
    return (
        node.type == "member_expression"
        and _text(node.child_by_field_name("object")) == "module"
        and _text(node.child_by_field_name("property")) == "exports"
    )


def _key_text(key: Node) -> str | None:
    if key.type in ("shorthand_property_identifier", "property_identifier"):
        return _text(key)
    if key.type == "string":
        return "".join(_text(c) or "" for c in key.named_children)
    return None


def _text(node: Node | None) -> str | None:
    return None if node is None or node.text is None else node.text.decode("utf-8", "replace")


def _position(data: bytes, node: Node) -> str:
    """`line L, column C` of a node, both 1-based (tree-sitter counts bytes from 0)."""
    row, byte = node.start_point
    start = node.start_byte - byte
    column = len(data[start : node.start_byte].decode("utf-8", "replace")) + 1
    return f"line {row + 1}, column {column}"


def _snippet(node: Node) -> str:
    text = (_text(node) or "").strip().splitlines()
    return text[0][:40] if text else ""


def _is_identifier(name: str, language: str) -> bool:
    if language == "python":
        return name.isidentifier() and not keyword.iskeyword(name)
    # A reserved word matches too, but no top-level function can bear it: not found then.
    return _JS_IDENTIFIER.fullmatch(name) is not None


def _version_matches(wanted: str, offered: str) -> bool:
    """Whether `wanted`'s dot components lead `offered`'s ("3.11" and "3.11.2")."""
    want = wanted.removeprefix("v").split(".")
    return offered.removeprefix("v").split(".")[: len(want)] == want


def _dependency_problems(
    dependencies: list[Any], language: str, offered: Sequence[SandboxRuntime]
) -> list[Problem]:
    if not offered:
        if not dependencies:
            return []
        return [
            (
                ("dependencies",),
                f"cannot be checked because no executor offers a sandboxed {language} runtime now",
            )
        ]
    modules = frozenset().union(*(r.modules for r in offered))
    problems: list[Problem] = []
    for i, dependency in enumerate(dependencies):
        if isinstance(dependency, str) and not _provided(dependency, language, modules):
            problems.append(
                (
                    ("dependencies", i),
                    f"{dependency[:100]!r} is not provided by the sandbox's {language} runtime "
                    f"(only {_PROVIDED[language]})",
                )
            )
    return problems


def _provided(dependency: str, language: str, modules: frozenset[str]) -> bool:
    if language == "python":
        return dependency in modules or dependency.split(".", maxsplit=1)[0] in modules
    bare = dependency.removeprefix("node:")
    return bare in modules or f"node:{bare}" in modules


def _value(
    obj: Mapping[str, Any],
    key: str,
    fields: Mapping[str, Mapping[str, Any]],
    fallback: Any = None,
) -> Any:
    """`obj[key]`, else the default its schema in `fields` gives it, else `fallback`."""
    if key in obj:
        return obj[key]
    return fields.get(key, {}).get("default", fallback)


def _properties(schema: Mapping[str, Any], field: str) -> dict[str, Mapping[str, Any]]:
    """The schemas of the properties of the object under `field` ($refs followed)."""
    found = _resolve(schema, (schema.get("properties") or {}).get(field))
    properties = found.get("properties")
    if not isinstance(properties, Mapping):
        return {}
    out: dict[str, Mapping[str, Any]] = {}
    for key, sub in properties.items():
        resolved = _resolve(schema, sub)
        if isinstance(sub, Mapping) and "default" in sub:  # a default may sit beside a $ref
            resolved = {**resolved, "default": sub["default"]}
        out[key] = resolved
    return out


def _refused(schema: Mapping[str, Any], value: str) -> bool:
    """Whether a string's own schema refuses it (length, pattern): the schema says why then."""
    longest, shortest, pattern = (
        schema.get("maxLength"),
        schema.get("minLength"),
        schema.get("pattern"),
    )
    if isinstance(longest, int) and len(value) > longest:
        return True
    if isinstance(shortest, int) and len(value) < shortest:
        return True
    if isinstance(pattern, str):
        try:
            return re.search(pattern, value) is None
        except re.error:
            return False
    return False


def _resolve(root: Mapping[str, Any], schema: Any, depth: int = 0) -> Mapping[str, Any]:
    """A subschema with a local `$ref` (or a lone `allOf` of one) followed."""
    if not isinstance(schema, Mapping) or depth > 8:
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = (
                target.get(part.replace("~1", "/").replace("~0", "~"))
                if isinstance(target, Mapping)
                else None
            )
        return _resolve(root, target, depth + 1)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and "properties" not in schema:
        return _resolve(root, all_of[0], depth + 1)
    return schema
