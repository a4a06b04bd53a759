"""The federated package's import graph: no module imports itself back through others (every
import counts, the lazy ones inside functions too), and the modules the CLI needs before Ray
start (preflight, checkpoint reading, metrics) load neither torch nor flwr."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FL = Path(__file__).resolve().parents[1] / "romsim" / "fl"
PKG = "romsim.fl"


def _imports(path: Path) -> set[str]:
    """The ``romsim.fl`` modules ``path`` imports anywhere in its body."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from romsim.fl import train``: the submodule; ``from romsim.fl.x import y``: x
            names = [f"{node.module}.{a.name}" if node.module == PKG else node.module
                     for a in node.names]  # fmt: skip
        else:
            continue
        for n in names:
            if n.startswith(PKG + "."):
                out.add(n[len(PKG) + 1 :].split(".")[0])
    return out


def _graph() -> dict[str, set[str]]:
    mods = {p.stem for p in FL.glob("*.py")}
    return {p.stem: _imports(p) & mods - {p.stem} for p in FL.glob("*.py")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_parser_sees_lazy_imports():
    g = _graph()
    assert "runner" in g["apps"]  # server_main's import inside the function
    assert {"checkpoint", "metrics", "devices"} <= g["runner"]
    assert "train" in g["rounds"]  # ``from romsim.fl import train as T``


def test_fl_package_has_no_import_cycle():
    g = _graph()
    assert _cycles(g) == [], _cycles(g)
    assert "apps" not in g["runner"] and "runner" not in g["client"]


def test_preflight_modules_load_without_torch_or_flwr():
    code = (
        "import sys\n"
        "import romsim.fl.runner, romsim.fl.checkpoint, romsim.fl.metrics, romsim.fl.devices\n"
        "import romsim.fl.messages, romsim.fl.files\n"
        "bad = sorted(m for m in ('torch', 'flwr', 'ray') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
