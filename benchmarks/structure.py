"""Measures of the code's structure that the one-path work is judged by:

- import cycles between hlmcli's modules (every import, including those inside functions),
  counted as elementary cycles of the module graph;
- imports that go up the layers (LAYERS below), every import statement counted and listed;
- private names (`_x`) imported across modules;
- the longest function, and how many functions run over 60 lines;
- the number of parameters of the `fit` command's function;
- the share of the lines a two-level linear fit runs that a three-level fit and an HGLM fit also run.

    python benchmarks/structure.py          # prints the measures as JSON
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hlmcli"

# The layers, bottom up (../shared/docs/architecture.md): a module may import its own layer and those below.
LAYERS = ("errors", "spec", "engine", "io", "language", "data", "analysis", "results", "report", "cli", "package")
# Where the top-level modules sit: errors, version and lazy are used by every layer; capabilities is the table
# of what the spec allows; results (and levels_results, views) are the fitted model the report reads; api is
# an entry point beside the command line; the package itself (hlmcli/__init__.py) is above all, and installs
# the report layer's writers into views (see views.py).
TOP_LEVEL = {"errors": "errors", "version": "errors", "lazy": "errors", "spec": "spec", "capabilities": "spec",
             "results": "results", "levels_results": "results", "views": "results", "api": "cli"}


def layer(module: str) -> str:
    """The layer of an hlmcli module: its subpackage's, or TOP_LEVEL's for a top-level module."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in LAYERS:
        return parts[1]
    if parts[1] not in TOP_LEVEL:
        raise KeyError(f"{module}: not placed in a layer; add it to TOP_LEVEL in benchmarks/structure.py")
    return TOP_LEVEL[parts[1]]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _import_nodes(tree: ast.AST):
    """The import statements of a module, those inside functions too; not those under `if TYPE_CHECKING:`
    (for type checkers only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def imports(mods: dict[str, Path]) -> list[tuple[str, str, list[str], int]]:
    """Every import of one hlmcli module by another: (importer, imported module, names taken, line)."""
    out = []
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.ImportFrom):
                src = resolve(name, is_package, node.level, node.module) if node.level else (node.module or "")
                names = [a.name for a in node.names]
                submodules = [a for a in names if f"{src}.{a}" in mods]
                for a in submodules:  # `from . import design` imports the module hlmcli.data.design
                    targets.append((f"{src}.{a}", []))
                others = [a for a in names if a not in submodules]
                if src in mods and others:  # a name defined in the module (or package) itself
                    targets.append((src, others))
            else:
                targets = [(a.name, []) for a in node.names if a.name in mods]
            out += [(name, src, names, node.lineno) for src, names in targets if src != name]
    return out


def import_graph(mods: dict[str, Path], found: list | None = None) -> tuple[dict[str, set[str]], list[str]]:
    """The module graph and the private names imported across modules; `found`: imports(mods), if made."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private: list[str] = []
    for name, src, names, _ in imports(mods) if found is None else found:
        graph[name].add(src)
        private += [f"{name} <- {src}.{n}" for n in names if n.startswith("_") and not n.startswith("__")
                    and f"{src}.{n}" not in mods]
    return graph, private


def upward_imports(mods: dict[str, Path], found: list | None = None) -> list[str]:
    """Each import statement of a module in a layer above the importer's, as `importer:line -> imported`."""
    rank = {name: k for k, name in enumerate(LAYERS)}
    found = imports(mods) if found is None else found
    return [f"{name}:{line} -> {src}" for name, src, _, line in sorted(found, key=lambda i: (i[0], i[3], i[1]))
            if rank[layer(src)] > rank[layer(name)]]


def elementary_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each once (rooted at its smallest node): a plain DFS, fine for ~60 modules."""
    cycles = []
    nodes = sorted(graph)
    for start in nodes:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    cycles.append(path)
                elif nxt > start and nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return cycles


def tangles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module: each is a knot of mutual imports."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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


def functions(mods: dict[str, Path]) -> list[tuple[int, str]]:
    out = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    return sorted(out, reverse=True)


def fit_parameters(mods: dict[str, Path]) -> int:
    best = 0
    for name, path in mods.items():
        if not name.startswith("hlmcli.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in ("fit_cmd", "fit"):
                a = node.args
                best = max(best, len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None))
    return best


def lines_run(argv: list[str]) -> set[tuple[str, int]]:
    """The (file, line) pairs of hlmcli's own code that one in-process command runs."""
    from click.testing import CliRunner

    from hlmcli.cli import main

    seen: set[tuple[str, int]] = set()
    prefix = str(PACKAGE)

    def tracer(frame, event, arg):
        if not frame.f_code.co_filename.startswith(prefix):
            return None
        if event == "line":
            seen.add((frame.f_code.co_filename, frame.f_lineno))
        return tracer

    sys.settrace(tracer)
    try:
        result = CliRunner().invoke(main, argv)
    finally:
        sys.settrace(None)
    if result.exit_code not in (0, 3):
        raise SystemExit(f"{argv}: exit {result.exit_code}: {result.output}")
    return seen


def shares() -> dict[str, float]:
    s = ROOT / "sample_data"
    two = ["fit", str(s / "hsb/hsb1.csv"), str(s / "hsb/hsb2.csv"), "--id", "ID", "-1", "MATHACH = b0 + b1*group(SES) + r",
           "-2", "b0 = g00 + g01*SECTOR + u0", "-2", "b1 = g10 + g11*SECTOR + u1", "-q"]
    three = ["fit", str(s / "eg/eg_l1.csv"), str(s / "eg/eg_l2.csv"), str(s / "eg/eg_l3.csv"), "--id2", "CHILDID",
             "--id3", "SCHOOLID", "-1", "MATH = p0 + p1*YEAR + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10 + r1",
             "-3", "b00 = g000 + u00", "-3", "b10 = g100 + u10", "-q"]
    hsb_bin = ROOT / "tests" / "data" / "hglm"
    # an HGLM fit of the HSB data: MATHACH above its median (a binary outcome made from the shipped files)
    import tempfile

    import pandas as pd

    tmp = Path(tempfile.mkdtemp())
    l1 = pd.read_csv(s / "hsb/hsb1.csv")
    l1["HIGH"] = (l1["MATHACH"] > l1["MATHACH"].median()).astype(int)
    l1.to_csv(tmp / "l1.csv", index=False)
    hglm = ["fit", str(tmp / "l1.csv"), str(s / "hsb/hsb2.csv"), "--id", "ID", "-1", "HIGH = b0 + b1*group(SES)",
            "-2", "b0 = g00 + g01*SECTOR + u0", "-2", "b1 = g10 + u1", "--family", "bernoulli", "-q"]
    del hsb_bin
    a = lines_run(two)
    out = {}
    for label, argv in (("three_level", three), ("hglm_pql", hglm)):
        b = lines_run(argv)
        out[label] = round(len(a & b) / len(a), 3)
    return out


def main() -> None:
    os.environ.setdefault("HLMCLI_CACHE_DIR", os.path.join(__import__("tempfile").mkdtemp(), "cache"))
    sys.path.insert(0, str(ROOT))
    mods = modules()
    found = imports(mods)
    graph, private = import_graph(mods, found)
    cycles = elementary_cycles(graph)
    up = upward_imports(mods, found)
    funcs = functions(mods)
    report = {
        "modules": len(mods),
        "lines": sum(len(p.read_text(encoding="utf-8").splitlines()) for p in mods.values()),
        "import_cycles": len(cycles),
        "mutually_importing_pairs": sum(1 for a in graph for b in graph[a] if a < b and a in graph[b]),
        "import_knots": [len(k) for k in tangles(graph)],
        "shortest_cycles": [" -> ".join(c) for c in sorted(cycles, key=len)[:10]],
        "imports_up_the_layers": len(up),
        "modules_importing_up": sorted({u.split(":")[0] for u in up}),
        "up_the_layers": up,
        "private_imports_across_modules": len(private),
        "longest_function": {"name": funcs[0][1], "lines": funcs[0][0]},
        "functions_over_60_lines": sum(1 for n, _ in funcs if n > 60),
        "fit_command_parameters": fit_parameters(mods),
        "share_of_two_level_lines_run": shares(),
    }
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
