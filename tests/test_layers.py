"""The packages' layers import only downward, and no module imports itself back through others.

Every ``import`` of every module of ``verifier``, ``frontends`` and ``training`` is read with ``ast`` (lazy imports
inside functions and ``TYPE_CHECKING`` imports included). Each module has a layer; an import may only reach a
module of the same layer or a lower one, and the import graph has no cycle. A new module must be given a layer
here (the test names it otherwise).
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

from .conftest import REPO

PACKAGES = ("verifier", "frontends", "training")

#: layer of each module, lowest first; a prefix ending in '.' covers a package's modules
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("numeric kit and value types", ("verifier", "verifier.errors", "verifier.rounding", "verifier.fused",
                                     "verifier.box", "verifier.jacobian", "verifier.conv_norms", "verifier.margins",
                                     "verifier.last_layer", "verifier.problem", "verifier.linear",
                                     "verifier.relaxations", "verifier.patches")),
    ("ops", ("verifier.ops", "verifier.ops.")),
    ("IR", ("verifier.ir", "verifier.rewrite")),
    ("engines and frontends", ("verifier.engines", "verifier.engines.", "frontends", "frontends.")),
    ("certificates and decisions", ("verifier.certificates", "verifier.certificates.", "verifier.decisions",
                                    "verifier.decisions.")),
    ("training", ("training", "training.methods", "training.arch", "training.bcp_bound", "training.checkpoint",
                  "training.estimates", "training.evaluate", "training.loop", "training.losses")),
    ("command runners", ("verifier.commands", "verifier.commands.report", "verifier.commands.plot",
                         "verifier.commands.progress", "verifier.commands.logits", "verifier.commands.loading",
                         "verifier.commands.certify_run", "verifier.commands.attack_run", "verifier.commands.inspect",
                         "verifier.commands.verify_run", "verifier.commands.api",
                         "training.run")),
    ("command line", ("verifier.commands.cli", "verifier.commands.cli_values")),
]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def layer_of(name: str) -> int | None:
    for rank, (_, members) in enumerate(LAYERS):
        if name in members or any(m.endswith(".") and name.startswith(m) for m in members):
            return rank
    return None


def import_graph() -> nx.DiGraph:
    """module -> module for every import between the project's modules (``from a import b`` counts as a
    dependency on ``a.b`` when that is a module, else on ``a``)."""
    mods = modules()
    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph.add_edge(name, target)
    return graph


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert cycles == [], f"import cycles: {cycles}"


def test_imports_go_only_downward():
    upward = [(a, LAYERS[layer_of(a)][0], b, LAYERS[layer_of(b)][0]) for a, b in import_graph().edges
              if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a)]
    assert upward == [], "\n".join(f"{a} ({la}) imports {b} ({lb})" for a, la, b, lb in upward)


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path, monkeypatch):
    """The graph builder finds imports inside functions and under TYPE_CHECKING (so the test can fail)."""
    import tests.test_layers as me

    root = tmp_path / "repo"
    (root / "verifier").mkdir(parents=True)
    (root / "verifier" / "__init__.py").write_text("")
    (root / "verifier" / "a.py").write_text("def f():\n    from .b import g\n")
    (root / "verifier" / "b.py").write_text("from typing import TYPE_CHECKING\n"
                                            "if TYPE_CHECKING:\n    from . import a\n")
    monkeypatch.setattr(me, "REPO", root)
    monkeypatch.setattr(me, "PACKAGES", ("verifier",))
    graph = me.import_graph()
    assert graph.has_edge("verifier.a", "verifier.b") and graph.has_edge("verifier.b", "verifier.a")


def test_every_package_is_installed():
    """pyproject's package list names every package directory: a plain (non-editable) install would leave out an
    unlisted one, and its imports would fail only there."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for name in PACKAGES
             for p in (REPO / name).rglob("__init__.py")}
    assert found == listed
