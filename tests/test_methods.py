"""The certificate-method registry (``verifier.certificates.methods``): one place for every name, duplicates
refused, the command line and ``--method best`` read it, and "certified at eps" has one definition."""
from __future__ import annotations

import ast

import pytest
import torch

from verifier.certificates.certify import certified_accuracy, certified_at
from verifier.certificates.methods import BEST, LMT, METHODS, Method, register

from .conftest import REPO


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register(Method(LMT.name, "again", LMT.compute))
    with pytest.raises(ValueError, match="registered twice"):
        register(Method(BEST, "the portfolio's name", LMT.compute))
    # the portfolio's order
    assert list(METHODS) == ["lmt", "lmt-pairwise", "liplt", "ibp", "bcp", "crown", "alpha-crown", "local",
                            "kernel"]


def test_the_command_line_lists_the_registry():
    from verifier.commands.cli import certify

    option = next(p for p in certify.params if p.name == "method")
    assert list(option.type.choices) == [*METHODS, BEST]
    assert all(f"{m.name}: {m.summary}" in option.help for m in METHODS.values())


def test_certificate_names_are_written_only_in_the_registry():
    """Names no other vocabulary uses (training methods share 'lmt' and 'bcp', the lipschitz command 'liplt')
    appear as string literals in verifier/certificates/methods.py alone."""
    only_here = {"lmt-pairwise", "ibp", "crown", "alpha-crown", "local", BEST}
    found = []
    for package in ("verifier", "frontends", "training"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in only_here:
                    found.append(str(path.relative_to(REPO)))
    assert set(found) == {"verifier/certificates/methods.py"}


def test_certified_at_is_strict():
    radii = torch.tensor([0.0, 0.5, 0.5000001, 2.0])
    assert certified_at(radii, 0.5).tolist() == [False, False, True, True]
    assert certified_at(radii, 0.0).tolist() == [False, True, True, True]
    assert certified_accuracy(radii, 0.5) == 0.5


def test_op_registry_refuses_duplicates():
    from verifier.ops.base import Op, rule

    with pytest.raises(ValueError, match="Relu version 14 is registered twice"):
        rule("Relu", since=14)(type("AnotherRelu", (Op,), {}))
