"""Small modules and short functions: no module of the packages over ~400 lines of code and no function body over
~60 lines, unless its docstring says why (a sentence starting "Long because"). Docstrings do not count: a long
explanation of a rule is welcome."""
from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

FOLDERS = ("verifier", "frontends", "training", "benchmarks", "models", "scripts")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
REASON = "Long because"


def _sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py"))


def _docstring_lines(body: list[ast.stmt]) -> int:
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body after its docstring (the signature and the docstring do not count)."""
    statements = fn.body[1:] if _docstring_lines(fn.body) else fn.body
    return statements[-1].end_lineno - statements[0].lineno + 1 if statements else 0


def long_modules() -> list[str]:
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        code = len(path.read_text().splitlines()) - _docstring_lines(tree.body)
        if code > MAX_MODULE_LINES and REASON not in (ast.get_docstring(tree) or ""):
            found.append(f"{path.relative_to(REPO)}: {code} lines")
    return found


def long_functions() -> list[str]:
    found = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _body_lines(node)
                if n > MAX_FUNCTION_LINES and REASON not in (ast.get_docstring(node) or ""):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    return found


def test_no_long_module_without_a_reason():
    assert long_modules() == []


def test_no_long_function_without_a_reason():
    assert long_functions() == []


def test_the_check_sees_long_code(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    tree = ast.parse(f'def f():\n    """Short."""\n{body}\n')
    assert _body_lines(tree.body[0]) == MAX_FUNCTION_LINES + 1
