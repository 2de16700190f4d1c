"""The module layout keeps its promises: imports run one way (cli -> daemon/bridge -> jobs ->
turn -> loop -> llm/tools/home), llm/ knows nothing of the home, and there is no import
cycle. Read from the source (every import, lazy ones included; only `if TYPE_CHECKING:`
blocks are left out, since they never run), so a new import that breaks a rule fails here
with its file and module, not months later as a circular-import crash."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "agentd"


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in ROOT.rglob("*.py")}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:`."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def imports(module: str) -> set[str]:
    """The agentd modules `module` imports at run time (a `from pkg import mod` counts as
    importing pkg.mod)."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_layout_is_read() -> None:
    assert {"agentd.turn", "agentd.loop", "agentd.chain", "agentd.jobs.queue",
            "agentd.llm.fallback"} <= set(GRAPH)
    assert "agentd.loop" in GRAPH["agentd.turn"]  # the walk sees real imports


NEUTRAL = ("agentd.errors", "agentd.surrogates", "agentd.toolspec")  # import no agentd


def test_llm_is_a_library_that_knows_nothing_of_the_home() -> None:
    """Only itself, its error type, the text helper and the tool-call types, which import
    nothing of agentd."""
    assert not any(GRAPH[m] for m in NEUTRAL)
    bad = {(m, d) for m, deps in GRAPH.items() if _in(m, "agentd.llm")
           for d in deps if not _in(d, "agentd.llm", *NEUTRAL)}
    assert not bad


def test_tools_know_nothing_of_models() -> None:
    """tools/ and llm/ meet only in agentd.toolspec: neither imports the other."""
    bad = {(m, d) for m, deps in GRAPH.items() for d in deps
           if (_in(m, "agentd.tools") and _in(d, "agentd.llm"))
           or (_in(m, "agentd.llm") and _in(d, "agentd.tools"))}
    assert not bad, f"tools and llm import each other: {sorted(bad)}"


@pytest.mark.parametrize("lower, higher", [
    (("agentd.llm", "agentd.tools", "agentd.loop", "agentd.turn", "agentd.chain",
      "agentd.session", "agentd.compact", "agentd.budget", "agentd.outbox", "agentd.home",
      "agentd.homefs", "agentd.config"),
     ("agentd.cli", "agentd.cli_base", "agentd.cli_daemon", "agentd.chat", "agentd.daemon",
      "agentd.bridge", "agentd.jobs")),
    (("agentd.jobs",), ("agentd.daemon", "agentd.bridge", "agentd.cli", "agentd.cli_daemon")),
    (("agentd.bridge",), ("agentd.daemon", "agentd.cli", "agentd.cli_daemon")),
])
def test_imports_run_one_way(lower: tuple[str, ...], higher: tuple[str, ...]) -> None:
    bad = sorted((m, d) for m, deps in GRAPH.items() if _in(m, *lower)
                 for d in deps if _in(d, *higher))
    assert not bad, f"imported upwards: {bad}"


def test_there_is_no_import_cycle() -> None:
    """Tarjan's strongly connected components; any component of two or more is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                cycles.append(sorted(part))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles


def test_no_module_is_over_400_lines() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_only_the_fleet_command_imports_the_fleet() -> None:
    """The single-machine runtime needs no DBOS and starts no slower: nothing outside
    agentd/fleet imports it but the `agentd fleet` command group."""
    bad = sorted((m, d) for m, deps in GRAPH.items()
                 if not _in(m, "agentd.fleet", "agentd.cli_fleet")
                 for d in deps if _in(d, "agentd.fleet"))
    assert not bad, f"imports the fleet: {bad}"
