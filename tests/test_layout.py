"""The layout rules of ../shared/docs/architecture.md, checked on the source (benchmarks/structure.py reads
it with ast; nothing is imported or run): no import cycles, no module importing one in a layer above its
own, no private name (`_x`) imported from another module. Every import counts, those inside functions too."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def structure():
    spec = importlib.util.spec_from_file_location("hlmcli_structure", ROOT / "benchmarks" / "structure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def package(structure):
    """hlmcli's modules and their imports, read once."""
    mods = structure.modules()
    return mods, structure.imports(mods)


def test_no_import_cycles(structure, package):
    graph, _ = structure.import_graph(*package)
    assert [" -> ".join(c) for c in structure.elementary_cycles(graph)] == []


def test_no_private_name_is_imported_across_modules(structure, package):
    assert structure.import_graph(*package)[1] == []


def test_every_module_has_a_layer_and_imports_none_above_it(structure, package):
    mods, found = package
    assert all(structure.layer(m) in structure.LAYERS for m in mods)
    assert structure.upward_imports(mods, found) == []


def test_the_checks_find_what_they_look_for(structure, tmp_path):
    """A made-up package with one of each fault: the engine importing the report, a private name taken from
    another module, and two modules importing each other."""
    files = {"hlmcli.engine.solve": "from ..report import text\nfrom .maths import _step\n",
             "hlmcli.engine.maths": "def _step():\n    from .solve import run\n",
             "hlmcli.report.text": "import json\n"}
    mods = {}
    for name, source in files.items():
        path = tmp_path / (name.replace(".", "_") + ".py")
        path.write_text(source, encoding="utf-8")
        mods[name] = path
    g, private = structure.import_graph(mods)
    assert structure.upward_imports(mods) == ["hlmcli.engine.solve:1 -> hlmcli.report.text"]
    assert private == ["hlmcli.engine.solve <- hlmcli.engine.maths._step"]
    assert structure.elementary_cycles(g) == [["hlmcli.engine.maths", "hlmcli.engine.solve"]]
    with pytest.raises(KeyError, match="not placed in a layer"):
        structure.layer("hlmcli.newthing")
