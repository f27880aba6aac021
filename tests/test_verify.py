"""Deciding VNN-LIB properties (verifier.decisions): verdicts on properties built so that the answer is known,
counterexamples confirmed by onnxruntime, complete search by input splitting and by ReLU splitting, and every
'holds' attacked (PGD with many restarts and random points: no counterexample may exist)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from frontends.vnnlib import read_vnnlib
from verifier.commands.verify_run import run_verify, vnncomp_result
from verifier.decisions import verify as verify_module
from verifier.decisions.falsify import pgd_box
from verifier.decisions.spec import RegionSpec

from .conftest import run_main, shared_dir
from .onnx_graphs import make_model, node, rand


def mlp(n_in: int, hidden: tuple[int, ...], n_out: int, seed: int = 0) -> onnx.ModelProto:
    nodes, inits, prev, width = [], {}, "x", n_in
    for k, h in enumerate(hidden):
        inits[f"W{k}"] = rand(h, width, seed=seed + k, scale=1 / np.sqrt(width))
        inits[f"b{k}"] = rand(h, seed=seed + 50 + k)
        nodes += [node("Gemm", [prev, f"W{k}", f"b{k}"], [f"h{k}"], transB=1), node("Relu", [f"h{k}"], [f"r{k}"])]
        prev, width = f"r{k}", h
    inits["Wo"], inits["bo"] = rand(n_out, width, seed=seed + 99, scale=1 / np.sqrt(width)), rand(n_out, seed=seed + 98)
    nodes.append(node("Gemm", [prev, "Wo", "bo"], ["y"], transB=1))
    return make_model(nodes, (n_in,), inits)


def forward(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.asarray(x, dtype=np.float32).reshape(-1, model.graph.input[0].type.tensor_type
                                                                             .shape.dim[1].dim_value)})[0]


def declarations(n: int, k: int) -> list[str]:
    return [f"(declare-const X_{i} Real)" for i in range(n)] + [f"(declare-const Y_{j} Real)" for j in range(k)]


def write_property(path: Path, lower, upper, k: int, outputs: str) -> Path:
    lines = declarations(len(lower), k)
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        lines += [f"(assert (>= X_{i} {float(lo)!r}))", f"(assert (<= X_{i} {float(hi)!r}))"]
    path.write_text("\n".join(lines + [outputs]) + "\n")
    return path


def setup(tmp_path: Path, model: onnx.ModelProto, lower, upper, outputs: str) -> tuple[Path, Path]:
    onnx.save(model, tmp_path / "m.onnx")
    k = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    return tmp_path / "m.onnx", write_property(tmp_path / "p.vnnlib", lower, upper, k, outputs)


def assert_no_counterexample(model_path: Path, prop_path: Path, restarts: int = 200, samples: int = 20000) -> None:
    """The attack pass on a 'holds': PGD with many restarts and uniform random points (through the IR, which
    matches onnxruntime) find nothing."""
    from frontends import load_onnx

    module = load_onnx(model_path)
    shape = tuple(module.graph.sample_shape)

    def model(x: torch.Tensor) -> torch.Tensor:
        return module(x.reshape(len(x), *shape)).reshape(len(x), -1)

    gen = np.random.default_rng(0)
    for region in read_vnnlib(prop_path).regions:
        spec = RegionSpec.of(region)
        lo, hi = torch.tensor(region.lower).float()[None], torch.tensor(region.upper).float()[None]
        _, v = pgd_box(model, lo, hi, spec, steps=100, restarts=restarts, seed=1)
        assert float(v[0]) < 0, "PGD found a counterexample of a property reported to hold"
        x = gen.uniform(region.lower, region.upper, size=(samples, len(region.lower)))
        x = torch.tensor(x, dtype=torch.float32)
        with torch.no_grad():
            assert float(spec.violation(model(x)).max()) < 0, "a random point is a counterexample"


def sampled_max(model: onnx.ModelProto, lower, upper, row: np.ndarray, n: int = 200) -> float:
    """max over a grid (2 inputs) of row . y: a point value, so a lower bound of the true maximum."""
    g = np.stack(np.meshgrid(*[np.linspace(lo, hi, n) for lo, hi in zip(lower, upper)]), -1).reshape(-1, len(lower))
    return float((forward(model, g) @ row).max())


# ------------------------------------------------------------------------------------------------ verdicts
def test_violated_by_construction_carries_a_confirmed_counterexample(tmp_path):
    model = mlp(3, (16, 16), 3, seed=1)
    x0 = np.array([0.2, -0.1, 0.3], np.float32)
    y0 = forward(model, x0)[0]
    cond = f"(assert (>= Y_0 {float(y0[0]) - 0.05!r}))\n(assert (<= Y_1 {float(y0[1]) + 0.05!r}))"
    m, p = setup(tmp_path, model, x0 - 0.01, x0 + 0.01, cond)
    result = run_verify(str(m), str(p), timeout=30)
    assert result["status"] == "violated" and result["vnncomp"] == "sat"
    x, y = np.array(result["counterexample"]["x"], np.float32), np.array(result["counterexample"]["y"])
    np.testing.assert_allclose(forward(model, x)[0], y, rtol=0, atol=0)  # y is onnxruntime's, at x itself
    assert read_vnnlib(p).regions[0].violated_by(x, y)
    text = vnncomp_result(result)
    assert text.startswith("sat\n((X_0 ") and text.rstrip().endswith(")")


def test_holds_by_construction_and_no_attack_breaks_it(tmp_path):
    model = mlp(3, (16, 16), 3, seed=2)
    lower, upper = np.full(3, -0.5), np.full(3, 0.5)
    x = np.random.default_rng(0).uniform(lower, upper, (5000, 3))
    bound = float(np.abs(forward(model, x)).max()) * 4 + 10  # far above anything the model reaches
    m, p = setup(tmp_path, model, lower, upper, f"(assert (>= Y_0 {bound!r}))")
    result = run_verify(str(m), str(p), timeout=30)
    assert result["status"] == "holds" and result["method"] in ("crown", "alpha-crown"), result
    assert "counterexample" not in result
    assert_no_counterexample(m, p)


@pytest.mark.parametrize("split", ["inputs", "relus"])
def test_branch_and_bound_decides_near_the_true_maximum(tmp_path, monkeypatch, split):
    """A 2-input MLP; thresholds just above and just below the sampled maximum of Y_0 - Y_1: the first must be
    proved (only by branching: CROWN and alpha-CROWN alone do not), the second violated (a grid point is a
    counterexample). ReLU splitting is forced by allowing no input splitting."""
    if split == "relus":
        monkeypatch.setattr(verify_module, "INPUT_SPLIT_MAX", 0)
    model = mlp(2, (24, 24), 2, seed=3)
    lower, upper = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    top = sampled_max(model, lower, upper, np.array([1.0, -1.0]))
    gap = 0.05 * max(1.0, abs(top))
    m, p = setup(tmp_path, model, lower, upper, f"(assert (>= (- Y_0 Y_1) {top + gap!r}))")
    result = run_verify(str(m), str(p), timeout=120)
    assert result["status"] == "holds" and "branch and bound" in result["method"], result
    assert_no_counterexample(m, p)
    m, p = setup(tmp_path, model, lower, upper, f"(assert (>= (- Y_0 Y_1) {top - gap!r}))")
    result = run_verify(str(m), str(p), timeout=120)
    assert result["status"] == "violated", result


def test_several_input_boxes(tmp_path):
    """(or (and box-1 cond) (and box-2 cond)): violated in the second box only, and the counterexample lies there."""
    model = mlp(2, (8,), 2, seed=4)
    x1, x2 = np.array([0.5, 0.5], np.float32), np.array([-0.5, -0.5], np.float32)
    y2 = forward(model, x2)[0]
    cond = f"(>= Y_0 {float(y2[0]) - 1e-3!r})"
    box = lambda c: " ".join(f"(>= X_{i} {float(v) - 0.01!r}) (<= X_{i} {float(v) + 0.01!r})" for i, v in enumerate(c))
    text = "\n".join(declarations(2, 2))
    text += f"\n(assert (or (and {box(x1)} (>= Y_0 1000.0)) (and {box(x2)} {cond})))\n"
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "p.vnnlib").write_text(text)
    assert len(read_vnnlib(tmp_path / "p.vnnlib").regions) == 2
    result = run_verify(str(tmp_path / "m.onnx"), str(tmp_path / "p.vnnlib"), timeout=30)
    assert result["status"] == "violated" and result["counterexample"]["region"] == 1
    assert np.abs(np.array(result["counterexample"]["x"]) - x2).max() <= 0.01 + 1e-6


def test_no_time_gives_timeout_not_holds(tmp_path):
    model = mlp(2, (24, 24), 2, seed=3)
    lower, upper = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    top = sampled_max(model, lower, upper, np.array([1.0, -1.0]))
    m, p = setup(tmp_path, model, lower, upper, f"(assert (>= (- Y_0 Y_1) {top + 0.05 * max(1, abs(top))!r}))")
    result = run_verify(str(m), str(p), timeout=0.0)
    assert result["status"] in ("timeout", "unknown")


# ---------------------------------------------------------------------------------------------- command line
def test_cli_exit_codes_result_file_and_json(tmp_path, capsys):
    model = mlp(3, (8,), 2, seed=5)
    x0 = np.zeros(3, np.float32)
    y0 = forward(model, x0)[0]
    m, p = setup(tmp_path, model, x0 - 0.01, x0 + 0.01, f"(assert (>= Y_0 {float(y0[0]) - 1.0!r}))")
    code, out, err = run_main(capsys, "verify", str(m), str(p), "--result", str(tmp_path / "r.txt"))
    assert code == 1 and "violated" in out and err == ""
    lines = (tmp_path / "r.txt").read_text().split("\n")
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and "(Y_1 " in lines[-2]
    p.write_text(p.read_text().replace(f"(assert (>= Y_0 {float(y0[0]) - 1.0!r}))", "(assert (>= Y_0 1000.0))"))
    code, out, err = run_main(capsys, "verify", str(m), str(p), "--json", "--result", str(tmp_path / "r.txt"))
    assert code == 0 and '"status": "holds"' in out and (tmp_path / "r.txt").read_text() == "unsat\n"
    code, out, err = run_main(capsys, "verify", str(m), str(p), "--result", str(p))
    assert code == 2 and "lipverify: error:" in err and len(err.strip().splitlines()) == 1
    bad = write_property(tmp_path / "bad.vnnlib", [0.0] * 5, [1.0] * 5, 2, "(assert (>= Y_0 0.0))")
    code, out, err = run_main(capsys, "verify", str(m), str(bad))
    assert code == 2 and "declares 5 inputs" in err


# ---------------------------------------------------------------------------------------------- the zoo
@pytest.mark.slow
def test_zoo_test_benchmark_known_answers():
    """VNN-COMP's 'test' benchmark: nano, tiny, small and unsat hold; sat is violated."""
    root = shared_dir()
    if root is None or not (root / "zoo" / "test").is_dir():
        pytest.skip("../shared/zoo absent (set LIPVERIFY_SHARED)")
    folder = root / "zoo" / "test"
    expected = {"test_nano.onnx": "holds", "test_tiny.onnx": "holds", "test_small.onnx": "holds",
                "test_sat.onnx": "violated", "test_unsat.onnx": "holds"}
    for line in (folder / "instances.csv").read_text().split():
        onnx_name, prop_name, timeout = line.split(",")
        result = run_verify(str(folder / onnx_name), str(folder / prop_name), float(timeout))
        assert result["status"] == expected[onnx_name], (onnx_name, result)
        if result["status"] == "holds":
            assert_no_counterexample(folder / onnx_name, folder / prop_name, restarts=50, samples=5000)


# ------------------------------------------------------------------------------------------------ VNN-COMP
@pytest.mark.slow
def test_vnncomp_scripts_and_benchmark_table(tmp_path):
    """prepare_instance.sh and run_instance.sh as the competition calls them, then benchmarks/vnncomp.py on an
    instances.csv: the result files, and the 'sat' one passes the scorer's counterexample check."""
    import subprocess
    import sys

    from .conftest import REPO

    if not (REPO / ".venv" / "bin" / "lipverify").exists():
        pytest.skip("no .venv/bin/lipverify (scripts/setup.sh sets it up)")
    model = mlp(3, (8,), 2, seed=6)
    x0 = np.zeros(3, np.float32)
    y0 = forward(model, x0)[0]
    onnx.save(model, tmp_path / "m.onnx")
    write_property(tmp_path / "sat.vnnlib", x0 - 0.01, x0 + 0.01, 2, f"(assert (>= Y_0 {float(y0[0]) - 1.0!r}))")
    write_property(tmp_path / "unsat.vnnlib", x0 - 0.01, x0 + 0.01, 2, "(assert (>= Y_0 1000.0))")
    scripts = REPO / "vnncomp"
    for name, word in (("sat", "sat"), ("unsat", "unsat")):
        prepared = subprocess.run([scripts / "prepare_instance.sh", "v1", "t", tmp_path / "m.onnx",
                                   tmp_path / f"{name}.vnnlib"], capture_output=True)
        assert prepared.returncode == 0
        out = tmp_path / f"{name}.txt"
        done = subprocess.run([scripts / "run_instance.sh", "v1", "t", tmp_path / "m.onnx", tmp_path / f"{name}.vnnlib",
                               out, "30"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert out.read_text().split("\n")[0] == word
    assert subprocess.run([scripts / "run_instance.sh", "v2"], capture_output=True).returncode != 0
    (tmp_path / "instances.csv").write_text("m.onnx,sat.vnnlib,30\nm.onnx,unsat.vnnlib,30\n")
    table = subprocess.run([sys.executable, REPO / "benchmarks" / "vnncomp.py", "--instances",
                            tmp_path / "instances.csv", "--category", "tiny"], capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    row = table.stdout.strip().split("\n")[-1].split()
    assert row[:5] == ["tiny", "2", "1", "1", "0"] and row[-1] == "0"  # holds, violated, unknown; no wrong ce


def test_trailing_softmax_bounds_only_comparisons(tmp_path):
    """The engines bound the logits (the input of a trailing Softmax): a threshold on a probability is not a
    threshold on a logit, so such rows get no bounds (NoRuleError; the verdict comes from attacks or is
    unknown), while comparisons of two outputs (Y_i >= Y_j) keep theirs."""
    from frontends import load_onnx
    from verifier.decisions.bounds import RegionBounds
    from verifier.errors import NoRuleError

    w, b = rand(2, 3, seed=7, scale=0.01), np.array([0.3, -5.0], np.float32)  # softmax ~ (0.995, 0.005)
    model = make_model([node("Gemm", ["x", "W", "B"], ["z"], transB=1), node("Softmax", ["z"], ["y"], axis=1)],
                       (3,), {"W": w, "B": b})
    lower, upper = np.full(3, -1.0), np.full(3, 1.0)
    m, p = setup(tmp_path, model, lower, upper, "(assert (>= Y_0 0.9))")  # true everywhere; z_0 ~ 0.3 < 0.9
    module = load_onnx(m)
    with pytest.raises(NoRuleError, match="Softmax"):
        RegionBounds(module, RegionSpec.of(read_vnnlib(p).regions[0]))
    assert run_verify(str(m), str(p), timeout=30)["status"] == "violated"
    m, p = setup(tmp_path, model, lower, upper, "(assert (>= Y_1 Y_0))")
    assert RegionBounds(module, RegionSpec.of(read_vnnlib(p).regions[0])).linear
    result = run_verify(str(m), str(p), timeout=30)
    assert result["status"] == "holds" and result["method"] == "crown"


@pytest.mark.parametrize("body, needle", [
    ("(assert (>= Y_0 0.0)", "never closed"),
    ("(assert (>= (+ X_0 Y_0) 0.0))", "mixes inputs X and outputs Y"),
    ("(assert (>= Y_0 \"a\"))", "no strings"),
    ("(check-sat)", "expected (declare-const ...) or (assert ...)"),
])
def test_cli_refuses_bad_properties_in_one_line(tmp_path, capsys, body, needle):
    model = mlp(3, (4,), 2, seed=8)
    m, p = setup(tmp_path, model, np.zeros(3), np.ones(3), body)
    before = p.read_bytes()
    code, out, err = run_main(capsys, "verify", str(m), str(p), "--result", str(tmp_path / "r.txt"))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and out == ""
    assert p.read_bytes() == before and not (tmp_path / "r.txt").exists()
    code, _, err = run_main(capsys, "verify", str(m), str(tmp_path / "missing.vnnlib"))
    assert code == 2 and "not a regular file" in err
    code, _, err = run_main(capsys, "verify", str(m), str(p), "--timeout", "-1")
    assert code == 2 and "--timeout" in err


def test_branch_and_bound_gives_up_beyond_its_memory(tmp_path, monkeypatch):
    """With no room for open parts, ReLU splitting stops: unknown, never holds."""
    from verifier.decisions import bab

    monkeypatch.setattr(verify_module, "INPUT_SPLIT_MAX", 0)
    monkeypatch.setattr(bab, "MAX_STATE_BYTES", 0)
    model = mlp(2, (24, 24), 2, seed=3)
    lower, upper = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    top = sampled_max(model, lower, upper, np.array([1.0, -1.0]))
    m, p = setup(tmp_path, model, lower, upper, f"(assert (>= (- Y_0 Y_1) {top + 0.05 * max(1.0, abs(top))!r}))")
    assert run_verify(str(m), str(p), timeout=60)["status"] == "unknown"
