"""Template plugins: folders of `__agents__` loaded, reloaded and removed at run time.

Plugins are real folders in the test's temporary directory, imported by
`TemplatePlugins` into a real `TemplateCatalog`; their templates build real
LangGraph graphs that the tests invoke, so "serves the new version" means the
new code answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import textwrap
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from executor_support import eventually
from langchain_core.messages import HumanMessage
from pydantic import BaseModel, Field

from agent_executor.adapters.plugins import MODULE_PREFIX, TemplatePlugins
from agent_executor.application.builtin.simple_test import SimpleTest
from agent_executor.application.templates import (
    BUILTIN,
    AgentTemplate,
    AgentView,
    LoadedTemplate,
    TemplateCatalog,
    TemplateProblem,
)
from agent_executor.domain.agents import AgentSnapshot

HEADER = """\
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import BaseModel, Field

from agent_executor.application.templates import AgentTemplate
"""


def template_code(
    cls: str = "Greeter",
    template_id: str = "greeter",
    version: str = "1.0.0",
    reply: str = "hello",
    *,
    reply_expr: str | None = None,
) -> str:
    """A template class whose graph appends one AI message: `<greeting> <reply>`."""
    expr = reply_expr or repr(reply)
    return textwrap.dedent(f"""
        class {cls}Config(BaseModel):
            greeting: str = Field("hi", max_length=20, description="Said first.")


        class {cls}(AgentTemplate):
            id = {template_id!r}
            name = "{cls} template"
            description = "Greets."
            version = {version!r}
            Config = {cls}Config

            def build(self, agent, model, tools):
                text = agent.config.greeting + " " + {expr}

                def answer(state):
                    return {{"messages": [AIMessage(content=text)]}}

                graph = StateGraph(MessagesState)
                graph.add_node("answer", answer)
                graph.add_edge(START, "answer")
                graph.add_edge("answer", END)
                return graph.compile()
        """)


def plugin(directory: Path, name: str, body: str, **files: str) -> Path:
    """Write plugin folder `name` (its `__init__.py` is HEADER + body) and extra files."""
    folder = directory / name
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "__init__.py", HEADER + body)
    for filename, text in files.items():
        write(folder / f"{filename}.py", text)
    return folder


def write(path: Path, text: str) -> None:
    """Replace a file atomically (a watcher never sees it half written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def reply_of(loaded: LoadedTemplate | None, greeting: str = "hi") -> str:
    """What the template's graph answers to one user message."""
    assert loaded is not None
    agent = AgentSnapshot(
        id="agent-1",
        version=1,
        status="active",
        name="Agent",
        template_id=loaded.id,
        template_config={"greeting": greeting},
    )
    graph = loaded.template.build(loaded.template.view(agent), None, [])  # type: ignore[arg-type]
    state = await graph.ainvoke({"messages": [HumanMessage("hello?")]})
    return str(state["messages"][-1].content)


def plugin_modules() -> list[str]:
    return sorted(k for k in sys.modules if k.startswith(MODULE_PREFIX + "."))


class Changes:
    """Records every `on_change(added, removed)` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[str, str]], list[str]]] = []

    def __call__(self, added: Sequence[LoadedTemplate], removed: Sequence[str]) -> None:
        self.calls.append(([(t.id, t.version) for t in added], list(removed)))


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    return directory


@pytest.fixture
def catalog() -> TemplateCatalog:
    return TemplateCatalog([SimpleTest])


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
def plugins(plugin_dir: Path, catalog: TemplateCatalog, changes: Changes) -> TemplatePlugins:
    return TemplatePlugins(
        [plugin_dir, plugin_dir.parent / "missing"],
        catalog,
        run_blocking=asyncio.to_thread,
        on_change=changes,
        debounce_ms=50,
    )


@pytest.fixture(autouse=True)
def _isolated_imports() -> Any:
    """No plugin modules before or after a test."""
    for key in plugin_modules():
        del sys.modules[key]
    yield
    for key in plugin_modules():
        del sys.modules[key]


# ------------------------------------------------------------------ loading


async def test_load_all_serves_a_plugin_template(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog, changes: Changes
) -> None:
    folder = plugin(plugin_dir, "greeter", template_code() + "\n__agents__ = [Greeter]\n")

    await plugins.load_all()

    loaded = catalog.get("greeter")
    assert loaded is not None
    assert loaded.source == str(folder.resolve())
    assert loaded.version == "1.0.0"
    assert loaded.descriptor["name"] == "Greeter template"
    assert loaded.descriptor["config_schema"]["properties"]["greeting"]["maxLength"] == 20
    assert [f["key"] for f in loaded.descriptor["config_fields"]] == ["greeting"]
    assert await reply_of(loaded, greeting="hey") == "hey hello"
    assert catalog.get("simple-test") is not None  # built-ins still served
    assert catalog.problems() == []
    assert changes.calls == [([("greeter", "1.0.0")], [])]


async def test_folders_without_agents_are_left_alone(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog
) -> None:
    tools = plugin_dir / "tools_only"
    tools.mkdir()
    (tools / "__init__.py").write_text(
        "raise RuntimeError('a tools plugin is never imported here')\n"
    )
    (plugin_dir / "no_init").mkdir()
    (plugin_dir / "no_init" / "x.py").write_text("__agents__ = []\n")
    (plugin_dir / "loose.py").write_text("__agents__ = []\n")

    await plugins.load_all()

    assert [t.id for t in catalog.templates()] == ["simple-test"]
    assert catalog.problems() == []
    assert catalog.sources() == set()
    assert plugin_modules() == []


async def test_a_plugin_that_fails_to_import_is_reported_and_serves_nothing(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog, changes: Changes
) -> None:
    folder = plugin(
        plugin_dir, "broken", "raise RuntimeError('no API key for the greeter')\n__agents__ = []\n"
    )
    plugin(plugin_dir, "fine", template_code() + "\n__agents__ = [Greeter]\n")

    await plugins.load_all()

    problems = catalog.problems()
    assert [p.source for p in problems] == [str(folder.resolve())]
    assert "import failed" in problems[0].error
    assert "no API key for the greeter" in problems[0].error
    assert [t.id for t in catalog.templates()] == ["greeter", "simple-test"]
    assert [m for m in plugin_modules() if ".broken_" in m] == []
    assert changes.calls == [([], []), ([("greeter", "1.0.0")], [])]


async def test_a_failed_reload_keeps_the_previous_version_serving(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog, changes: Changes
) -> None:
    folder = plugin(plugin_dir, "greeter", template_code(reply="v1") + "\n__agents__ = [Greeter]\n")
    await plugins.load_all()
    serving = catalog.get("greeter")

    plugin(plugin_dir, "greeter", template_code(reply="v2") + "\n__agents__ = [Greeter\n")  # syntax
    await plugins.reload(folder)

    assert catalog.get("greeter") is serving
    assert await reply_of(catalog.get("greeter")) == "hi v1"
    [problem] = catalog.problems()
    assert problem.source == str(folder.resolve())
    assert "SyntaxError" in problem.error
    assert changes.calls[-1] == ([], [])

    plugin(
        plugin_dir,
        "greeter",
        template_code(reply="v3", version="3.0.0") + "\n__agents__ = [Greeter]\n",
    )
    await plugins.reload(folder)
    assert await reply_of(catalog.get("greeter")) == "hi v3"
    assert catalog.problems() == []


async def test_agents_that_are_not_a_list_fail_the_import(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog
) -> None:
    plugin(plugin_dir, "odd", template_code() + "\n__agents__ = Greeter\n")
    await plugins.load_all()
    assert catalog.get("greeter") is None
    [problem] = catalog.problems()
    assert "__agents__ must be a list" in problem.error
    assert plugin_modules() == []


async def test_bad_entries_are_problems_while_the_rest_is_served(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog
) -> None:
    body = "\n".join(
        [
            template_code("Good", "good"),
            template_code("Twin", "good"),  # the same id again
            template_code("BadId", "bad id!"),
            template_code("BadVersion", "bad-version", version="1 0"),
            template_code("Clash", "simple-test"),  # a built-in's id
            template_code("BadConfig", "bad-config"),
            "BadConfig.Config = dict",
            textwrap.dedent("""
                class NoBuild(AgentTemplate):
                    id = "no-build"
                    name = "No build"
            """),
            "__agents__ = [Good, Twin, BadId, BadVersion, Clash, BadConfig, NoBuild,"
            " 'text', dict, AgentTemplate]",
        ]
    )
    folder = plugin(plugin_dir, "alpha", body)
    other = plugin(
        plugin_dir,
        "beta",
        template_code("Taken", "good")
        + template_code("Own", "beta-own")
        + "\n__agents__ = [Taken, Own]\n",
    )

    await plugins.load_all()

    assert [t.id for t in catalog.templates()] == ["beta-own", "good", "simple-test"]
    assert catalog.get("good").source == str(folder.resolve())  # type: ignore[union-attr]
    assert catalog.get("simple-test").source == BUILTIN  # type: ignore[union-attr]
    by_source: dict[str, list[str]] = {}
    for problem in catalog.problems():
        by_source.setdefault(problem.source, []).append(problem.error)
    alpha = "\n".join(by_source[str(folder.resolve())])
    for expected in (
        "Twin: id 'good' listed twice",
        "BadId: id 'bad id!' must be",
        "BadVersion: version '1 0' must be",
        "Clash: id 'simple-test' is served by builtin",
        "BadConfig: Config must be a pydantic model class",
        "NoBuild: build() is not defined",
        "'text' in __agents__ is not an AgentTemplate subclass",
        "<class 'dict'> in __agents__ is not an AgentTemplate subclass",
        "AgentTemplate'> in __agents__ is not an AgentTemplate subclass",
    ):
        assert expected in alpha
    assert len(by_source[str(folder.resolve())]) == 9
    assert by_source[str(other.resolve())] == [f"Taken: id 'good' is served by {folder.resolve()}"]


async def test_a_template_that_cannot_be_instantiated_is_a_problem_not_a_crash(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog
) -> None:
    plugin(
        plugin_dir,
        "alpha",
        template_code("Needy", "needy")
        + "\nNeedy.__init__ = lambda self, key: None\n__agents__ = [Needy]\n",
    )
    plugin(plugin_dir, "beta", template_code() + "\n__agents__ = [Greeter]\n")
    await plugins.load_all()
    assert catalog.get("greeter") is not None
    assert any("Needy" in p.error for p in catalog.problems())


# ------------------------------------------------------------------ reload and removal


def package_plugin(directory: Path, version: str, reply: str) -> Path:
    """A plugin whose template lives in a submodule that imports another submodule."""
    return plugin(
        directory,
        "echo",
        "from .graph import Echo\n\n__agents__ = [Echo]\n",
        graph=HEADER
        + "from .texts import REPLY\n"
        + template_code("Echo", "echo", version, reply_expr="REPLY"),
        texts=f"REPLY = {reply!r}\n",
    )


async def test_reload_runs_the_changed_code_of_every_submodule(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog, changes: Changes
) -> None:
    folder = package_plugin(plugin_dir, "1.0.0", "first answer")
    await plugins.load_all()
    before = catalog.get("echo")
    assert before is not None
    assert await reply_of(before) == "hi first answer"

    package_plugin(plugin_dir, "1.1.0", "second answer, longer")
    await plugins.reload(folder)

    after = catalog.get("echo")
    assert after is not None
    assert after is not before
    assert after.version == "1.1.0"
    assert after.descriptor["version"] == "1.1.0"
    assert await reply_of(after) == "hi second answer, longer"
    assert await reply_of(before) == "hi first answer"  # a run holding the old one keeps it
    assert changes.calls == [([("echo", "1.0.0")], []), ([("echo", "1.1.0")], [])]
    assert plugins.reloads == 2


async def test_reload_runs_changed_code_even_when_the_file_size_and_mtime_match(
    plugins: TemplatePlugins,
    plugin_dir: Path,
    catalog: TemplateCatalog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Python validates cached bytecode by the source's size and mtime (in whole seconds): an
    # edit of the same size within the same second is not seen when bytecode is written.
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    folder = package_plugin(plugin_dir, "1.0.0", "one")
    await plugins.load_all()
    assert await reply_of(catalog.get("echo")) == "hi one"
    texts = folder / "texts.py"
    stat = texts.stat()
    texts.write_text("REPLY = 'two'\n")
    os.utime(texts, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    await plugins.reload(folder)

    assert await reply_of(catalog.get("echo")) == "hi two"


async def test_removing_a_plugin_removes_its_templates(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog, changes: Changes
) -> None:
    folder = plugin(
        plugin_dir,
        "pair",
        template_code("One", "one") + template_code("Two", "two") + "\n__agents__ = [One, Two]\n",
    )
    await plugins.load_all()
    assert {"one", "two"} <= {t.id for t in catalog.templates()}

    plugin(plugin_dir, "pair", template_code("One", "one") + "\n__agents__ = [One]\n")
    await plugins.reload(folder)
    assert catalog.get("two") is None
    assert changes.calls[-1] == ([("one", "1.0.0")], ["two"])

    shutil.rmtree(folder)
    await plugins.reload(folder)

    assert [t.id for t in catalog.templates()] == ["simple-test"]
    assert changes.calls[-1] == ([], ["one"])
    assert catalog.sources() == set()
    assert plugin_modules() == []


async def test_removing_a_broken_plugin_clears_its_problem(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog
) -> None:
    folder = plugin(plugin_dir, "broken", "import no_such_module_here\n__agents__ = []\n")
    await plugins.load_all()
    assert "No module named 'no_such_module_here'" in catalog.problems()[0].error
    shutil.rmtree(folder)
    await plugins.reload(folder)
    assert catalog.problems() == []


async def test_reloads_do_not_pile_up_modules(
    plugins: TemplatePlugins, plugin_dir: Path, catalog: TemplateCatalog
) -> None:
    folder = package_plugin(plugin_dir, "1.0.0", "a")
    plugin(plugin_dir, "greeter", template_code() + "\n__agents__ = [Greeter]\n")
    await plugins.load_all()
    loaded_once = plugin_modules()
    assert len(loaded_once) == 4  # echo, echo.graph, echo.texts, greeter

    for i in range(5):
        package_plugin(plugin_dir, f"1.0.{i + 1}", f"reply {i}")
        await plugins.reload(folder)
    plugin(plugin_dir, "echo", "raise ImportError('half written')\n__agents__ = []\n")
    await plugins.reload(folder)  # a failed import adds nothing either

    assert len(plugin_modules()) == 4
    assert [m for m in plugin_modules() if m in loaded_once] == [
        m for m in loaded_once if ".greeter_" in m
    ]
    assert catalog.get("echo").version == "1.0.5"  # type: ignore[union-attr]

    shutil.rmtree(folder)
    await plugins.reload(folder)
    assert len(plugin_modules()) == 1


# ------------------------------------------------------------------ watching


@contextlib.asynccontextmanager
async def watching(plugins: TemplatePlugins) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(plugins.watch(stop))
    await asyncio.sleep(0.2)  # the watcher is set up
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_the_watcher_applies_added_changed_and_removed_plugins(
    plugins: TemplatePlugins,
    plugin_dir: Path,
    catalog: TemplateCatalog,
    changes: Changes,
    tmp_path: Path,
) -> None:
    await plugins.load_all()
    async with watching(plugins) as task:
        # Added: prepared elsewhere and moved in whole.
        staged = plugin(
            tmp_path / "staging", "greeter", template_code() + "\n__agents__ = [Greeter]\n"
        )
        staged.rename(plugin_dir / "greeter")
        await eventually(lambda: catalog.get("greeter"), timeout=3)
        assert await reply_of(catalog.get("greeter")) == "hi hello"

        # Changed.
        plugin(
            plugin_dir,
            "greeter",
            template_code(version="2.0.0", reply="again") + "\n__agents__ = [Greeter]\n",
        )
        await eventually(lambda: catalog.get("greeter").version == "2.0.0", timeout=3)  # type: ignore[union-attr]
        assert await reply_of(catalog.get("greeter")) == "hi again"

        # Broken: the running version keeps serving.
        plugin(plugin_dir, "greeter", "raise ValueError('oops')\n__agents__ = []\n")
        await eventually(catalog.problems, timeout=3)
        assert catalog.get("greeter").version == "2.0.0"  # type: ignore[union-attr]

        # Removed.
        shutil.rmtree(plugin_dir / "greeter")
        await eventually(lambda: catalog.get("greeter") is None, timeout=3)
        assert catalog.problems() == []
        assert not task.done()
    assert task.done()
    assert ([("greeter", "2.0.0")], []) in changes.calls
    assert ([], ["greeter"]) in changes.calls


async def test_watch_returns_at_once_without_plugin_directories(catalog: TemplateCatalog) -> None:
    plugins = TemplatePlugins(
        [Path("/nonexistent/plugins")], catalog, run_blocking=asyncio.to_thread
    )
    await asyncio.wait_for(plugins.watch(asyncio.Event()), 1)
    await plugins.load_all()
    assert [t.id for t in catalog.templates()] == ["simple-test"]


# ------------------------------------------------------------------ the catalogue itself


class Alpha(AgentTemplate):
    id = "alpha"
    name = "Alpha"
    version = "1.0.0"

    def build(self, agent: AgentView, model: Any, tools: Any) -> Any:
        return None


class Beta(Alpha):
    id = "beta"
    name = "Beta"


class AlphaTwo(Alpha):
    version = "2.0.0"


class Nameless(Alpha):
    id = "nameless"
    name = None  # type: ignore[assignment]


class Unbuildable(AgentTemplate):
    id = "unbuildable"
    name = "Unbuildable"


class Limits(BaseModel):
    steps: int = Field(3, ge=1, le=10)


class Configured(Alpha):
    id = "configured"
    Config = Limits


def test_the_catalog_serves_builtins_and_refuses_broken_ones() -> None:
    catalog = TemplateCatalog([SimpleTest, Configured])
    assert [t.id for t in catalog.templates()] == ["configured", "simple-test"]
    assert {t.source for t in catalog.templates()} == {BUILTIN}
    assert catalog.sources() == set()
    fields = catalog.get("configured").descriptor["config_fields"]  # type: ignore[union-attr]
    assert fields[0]["key"] == "steps"
    assert fields[0]["validation"] == {"min": 1, "max": 10}
    with pytest.raises(TypeError, match=r"Unbuildable: build\(\) is not defined"):
        TemplateCatalog([Unbuildable])


def test_replace_source_swaps_what_one_source_serves() -> None:
    catalog = TemplateCatalog([SimpleTest])
    generation = catalog.generation

    added, removed = catalog.replace_source("plugins/a", [Alpha, Beta])
    assert [(t.id, t.source) for t in added] == [("alpha", "plugins/a"), ("beta", "plugins/a")]
    assert removed == []
    assert catalog.generation == generation + 1
    first_alpha = catalog.get("alpha")

    added, removed = catalog.replace_source("plugins/a", [AlphaTwo])
    assert [(t.id, t.version) for t in added] == [("alpha", "2.0.0")]
    assert removed == ["beta"]
    assert catalog.get("alpha") is not first_alpha
    assert catalog.get("beta") is None

    # A failed load keeps what served and records why.
    assert catalog.replace_source("plugins/a", None, ["import failed: boom"]) == ([], [])
    assert catalog.get("alpha").version == "2.0.0"  # type: ignore[union-attr]
    assert catalog.problems() == [TemplateProblem("plugins/a", "import failed: boom")]
    assert catalog.sources() == {"plugins/a"}

    # Another source cannot take an id that is served; the built-in's neither.
    added, removed = catalog.replace_source("plugins/b", [Alpha, Beta])
    assert [t.id for t in added] == ["beta"]
    assert catalog.get("alpha").source == "plugins/a"  # type: ignore[union-attr]
    assert catalog.problems() == [
        TemplateProblem("plugins/a", "import failed: boom"),
        TemplateProblem("plugins/b", "Alpha: id 'alpha' is served by plugins/a"),
    ]

    # A successful load clears the source's problems; an empty one removes everything.
    catalog.replace_source("plugins/a", [AlphaTwo])
    assert [p.source for p in catalog.problems()] == ["plugins/b"]
    added, removed = catalog.replace_source("plugins/a", [])
    assert (added, removed) == ([], ["alpha"])
    added, _ = catalog.replace_source("plugins/b", [Alpha, Beta])  # now free
    assert [t.id for t in added] == ["alpha", "beta"]
    assert catalog.problems() == []
    assert catalog.sources() == {"plugins/b"}
    assert [t.id for t in catalog.templates()] == ["alpha", "beta", "simple-test"]


def test_replace_source_reports_templates_that_cannot_be_served() -> None:
    catalog = TemplateCatalog([SimpleTest])

    class Clash(Alpha):
        id = "simple-test"

    added, removed = catalog.replace_source("p", [Alpha, Nameless, Unbuildable, Clash, Alpha])
    assert [t.id for t in added] == ["alpha"]
    assert removed == []
    assert [p.error for p in catalog.problems()] == [
        "Nameless: name must be a string",
        "Unbuildable: build() is not defined",
        "Clash: id 'simple-test' is served by builtin",
        "Alpha: id 'alpha' listed twice",
    ]
    assert catalog.get("simple-test").source == BUILTIN  # type: ignore[union-attr]
