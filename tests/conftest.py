"""Shared fixtures: where the third-party models and data live (../shared, or $LIPVERIFY_SHARED)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """../shared beside the checkout, or the folder named by LIPVERIFY_SHARED; None when absent."""
    env = os.environ.get("LIPVERIFY_SHARED")
    candidate = Path(env) if env else REPO.parent / "shared"
    return candidate if candidate.is_dir() else None


def zoo_models() -> list[Path]:
    root = shared_dir()
    return sorted((root / "zoo").glob("*/*.onnx")) if root else []


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from verifier.commands.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture
def zoo() -> Path:
    root = shared_dir()
    if root is None or not (root / "zoo").is_dir():
        pytest.skip("third-party models absent: no ../shared/zoo (set LIPVERIFY_SHARED to the shared folder)")
    return root / "zoo"


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    """The hostile-input tests' workspace (``tests/hostile.py``), the current folder while the test runs."""
    from .hostile import make_workspace

    monkeypatch.chdir(tmp_path)
    return make_workspace(tmp_path)
