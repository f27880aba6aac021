"""The `lipverify` command line.

Exit codes: 0 success; 1 a check or gate failed (e.g. parity; for ``verify``: the property is violated); 2 bad
input (one line on stderr, never a traceback; numbers are checked as the command line is parsed, ``cli_values``,
and output paths before any work, ``frontends.outputs``); 3 an internal error (one line; set LIPVERIFY_DEBUG=1
for the traceback); 4 ``verify`` could not decide (unknown or timeout). The README's "Exit codes and errors"
states the contract.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import click

from frontends.outputs import OutputPaths
from training.methods import METHODS as TRAINING_METHODS
from verifier.certificates.methods import BEST, METHODS
from verifier.certificates.methods import help_text as method_help
from verifier.commands.cli_values import COUNT, FRACTION, POSITIVE, RADIUS, SEED, Number, Shape, Values
from verifier.errors import LipverifyError, UnsupportedOpsError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, default=_json_default))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lipverify", prog_name="lipverify")
def cli() -> None:
    """Robustness certificates for ONNX models from any framework."""


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--output", "output", metavar="NAME", help="Which graph output to use (default: the first).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def inspect(model: str, output: str | None, as_json: bool) -> None:
    """Inputs, outputs, ops and their rules, and IR-vs-onnxruntime parity for MODEL.

    Exit 0 when the IR matches onnxruntime (relative difference <= 1e-4 of the output magnitude), 1 when it
    does not, 2 when the model cannot be imported.
    """
    from verifier.commands.inspect import format_report, inspect_model

    try:
        report = inspect_model(model, output)
    except LipverifyError as e:
        if as_json:
            ops = [{"op": op, "node": node} for op, node in getattr(e, "ops", [])]
            emit_json({"model": model, "error": str(e), "unsupported_ops": ops})
        raise
    if as_json:
        emit_json(report)
    else:
        click.echo(format_report(report))
    sys.exit(EXIT_OK if report["parity"]["ok"] else EXIT_FAILED)


NORM = click.Choice(["2", "inf"])


def _stack(*options):
    """Several click options as one decorator (for the options commands share)."""
    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


#: where the inputs come from (certify, attack)
data_options = _stack(
    click.option("--data", "data_path", required=True, type=str,
                 help=".npz with arrays x and y, or a folder of MNIST-format IDX files."),
    click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
                 help="Which IDX split to read."),
    click.option("--norm", type=NORM, default="2", show_default=True),
)
#: how to run and report (certify, attack)
run_options = _stack(
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option("--input-scale", type=POSITIVE, default=None, help="Multiply the data by this before the model."),
    click.option("--mean", type=Values(), default=None, help="Subtract (scalar or comma-separated per channel)."),
    click.option("--std", type=Values(positive=True), default=None,
                 help="Then divide (scalar or comma-separated per channel)."),
    click.option("--output", "output", metavar="NAME", help="Which graph output to use (default: the first)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table."),
    click.option("--report", "report_path", type=str, help="Also write the JSON report here."),
)


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--norm", type=NORM, default="2", show_default=True, help="l2 or l_inf operator norms.")
@click.option("--output", "output", metavar="NAME", help="Which graph output to use (default: the first).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--method", type=click.Choice(["naive", "liplt"]), default="naive", show_default=True,
              help="naive: per-node bounds composed over the graph (LMT); liplt: also the loop-transformed bounds "
                   "(CRM §3, Theorem 3.3) beside the naive ones, with their ratio.")
@click.option("--pairwise", is_flag=True, help="With --method liplt: the L_ij table of every class pair.")
def lipschitz(model: str, norm: str, output: str | None, as_json: bool, method: str, pairwise: bool) -> None:
    """Guaranteed upper bounds of MODEL's Lipschitz constant (LMT §4-5): the global bound (input -> logits),
    L_sub before the last affine layer, and each node's bound with the method used; with --method liplt, LipLT's
    global, per-class and pairwise bounds beside the naive ones."""
    from verifier.commands.loading import import_model, norm_value
    from verifier.commands.report import format_liplt, format_lipschitz
    from verifier.engines.lipschitz import graph_lipschitz

    _, module = import_model(model, output)
    report = graph_lipschitz(module, norm_value(norm))
    improved = None
    if method == "liplt":
        from verifier.engines.liplt import liplt

        improved = liplt(module, norm_value(norm), naive=report)
    if as_json:
        emit_json({"model": model, **report.to_json(), **({"liplt": improved.to_json()} if improved else {})})
    else:
        click.echo(format_lipschitz(report, model))
        if improved is not None:
            click.echo(format_liplt(improved, pairwise))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@data_options
@click.option("--eps", "eps_list", type=RADIUS, multiple=True, help="Radii to report certified accuracy at "
              "(repeatable; default 0.1 0.25 0.5 1.0 for l2, 0.01 0.03 0.1 for l_inf).")
@click.option("--method", type=click.Choice([*METHODS, BEST]), default=None, help=method_help())
@click.option("--limit", type=COUNT, default=None, help="Use the first N inputs.")
@click.option("--batch-size", type=COUNT, default=256, show_default=True)
@run_options
@click.option("--plot", "plot_path", type=str, help="Write the certified accuracy curve (PNG; .pdf or .svg by "
              "the file's suffix).")
@click.option("--min-certified-accuracy", "gate", type=FRACTION, default=None,
              help="Exit 1 unless the certified accuracy at --at-eps reaches this fraction (0-1).")
@click.option("--at-eps", "gate_eps", type=RADIUS, default=None, help="The eps the gate is checked at.")
@click.option("--attack", "attack", is_flag=True, help="Also attack every input (PGD, as `lipverify attack`) and "
              "report the attack radius beside the certified one and the median ratio certified / attack; exit 3 "
              "if an attack breaks a certified radius.")
@click.option("--attack-steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="PGD steps per probe of --attack.")
@click.option("--attack-restarts", type=click.IntRange(min=1), default=5, show_default=True,
              help="PGD restarts per probe of --attack.")
def certify(model: str, data_path: str, split: str, norm: str, eps_list: tuple[float, ...], method: str | None,
            limit: int | None, batch_size: int, device: str, input_scale: float | None, mean: str | None,
            std: str | None, output: str | None, as_json: bool, report_path: str | None, plot_path: str | None,
            gate: float | None, gate_eps: float | None, attack: bool, attack_steps: int,
            attack_restarts: int) -> None:
    """Certified radii (LMT Propositions 1 and 2, IBP, BCP, local Cross-Lipschitz, or the best of them) for every
    input of --data: a proof that no perturbation of smaller norm changes MODEL's prediction. Exit 0 ok, 1 when
    --min-certified-accuracy is not met, 2 bad input, 3 when --attack finds an adversarial example inside a
    certified radius (a soundness bug)."""
    from frontends.onnx_io import read_model
    from verifier.commands.certify_run import run_certify
    from verifier.commands.plot import certify_curves, plot_curve, plot_format

    if (gate is None) != (gate_eps is None):
        raise click.UsageError("--min-certified-accuracy and --at-eps go together")
    outputs = OutputPaths({"--report": report_path, "--plot": plot_path}, inputs=[model, data_path])
    fmt = plot_format(plot_path) if plot_path else None
    source = read_model(model, outputs)  # once, before any work; its files are inputs too
    result = run_certify(model, data_path, split=split, norm=norm, eps_list=eps_list, method=method, limit=limit,
                         batch_size=batch_size, device=device, input_scale=input_scale, mean=mean, std=std,
                         output=output, gate=gate, gate_eps=gate_eps, attack=attack,
                         attack_steps=attack_steps, attack_restarts=attack_restarts, source=source)
    _write_report(result, outputs)
    outputs.write("--plot", lambda f: plot_curve(certify_curves(result), f, fmt, result["norm"], model))
    if as_json:
        emit_json(result)
    else:
        from verifier.commands.report import format_certify

        click.echo(format_certify(result))
    if result.get("attack_unconfirmed"):
        idx = result["attack_unconfirmed"]
        click.echo(f"lipverify: warning: {len(idx)} attack example(s) inside a certified radius change the IR's "
                   f"prediction but not that of {result['logits_from']} (a float disagreement at a decision "
                   f"boundary): inputs {', '.join(map(str, idx[:10]))}{' ...' if len(idx) > 10 else ''}", err=True)
    violations = result.get("soundness_violations")
    if violations:
        first = violations[0]
        click.echo(f"SOUNDNESS VIOLATION: {len(violations)} input(s) have an adversarial example closer than their "
                   f"certified radius (method {result['method']}, l{result['norm']}); first: input {first['input']}, "
                   f"certified {first['certified']:.6g} > attack {first['attack']:.6g}", err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(EXIT_FAILED if "gate" in result and not result["gate"]["passed"] else EXIT_OK)


def _write_report(result: dict[str, Any], outputs: OutputPaths) -> None:
    outputs.write_bytes("--report", json.dumps(result, default=_json_default).encode())


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@data_options
@click.option("--eps", "eps_list", type=RADIUS, multiple=True, help="Radii to report the attack success rate and "
              "the robust accuracy bound at (repeatable; default 0.1 0.25 0.5 1.0 for l2, 0.01 0.03 0.1 for l_inf).")
@click.option("--method", type=click.Choice(["pgd", "deepfool"]), default="pgd", show_default=True,
              help="pgd: the smallest radius at which PGD succeeds, by bisection; deepfool: DeepFool's distance.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="PGD steps per probe (DeepFool: iterations).")
@click.option("--restarts", type=click.IntRange(min=1), default=5, show_default=True,
              help="PGD restarts per probe (random and per-class targeted).")
@click.option("--limit", type=COUNT, default=None, help="Use the first N inputs.")
@click.option("--batch-size", type=COUNT, default=256, show_default=True,
              help="Inputs attacked (bisected) together.")
@run_options
def attack(model: str, data_path: str, split: str, norm: str, eps_list: tuple[float, ...], method: str,
           steps: int, restarts: int, limit: int | None, batch_size: int, device: str, input_scale: float | None,
           mean: str | None, std: str | None, output: str | None, as_json: bool, report_path: str | None) -> None:
    """Upper bounds on the robust radius of every input of --data: the distance of the closest adversarial
    example found (PGD with bisection, or DeepFool), in the data's own space and inside its box ([0, 1] for
    IDX pixels). 0 for misclassified inputs; inf (JSON null) when nothing is found. Exit 0 ok, 2 bad input."""
    from frontends.onnx_io import read_model
    from verifier.commands.attack_run import format_attack, run_attack

    outputs = OutputPaths({"--report": report_path}, inputs=[model, data_path])
    source = read_model(model, outputs)
    result = run_attack(model, data_path, split=split, norm=norm, eps_list=eps_list, limit=limit,
                        batch_size=batch_size, device=device, input_scale=input_scale, mean=mean, std=std,
                        output=output, steps=steps, restarts=restarts, method=method, source=source)
    _write_report(result, outputs)
    if as_json:
        emit_json(result)
    else:
        click.echo(format_attack(result))
    sys.exit(EXIT_OK)



@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.argument("prop", type=click.Path(dir_okay=False, path_type=str))
@click.option("--timeout", type=POSITIVE, default=300.0, show_default=True, help="Seconds for the whole run.")
@click.option("--output", "output", metavar="NAME", help="Which graph output to use (default: the first).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the verdict line.")
@click.option("--result", "result_path", type=str, help="Write the VNN-COMP result file here (sat with the "
              "counterexample, unsat, unknown or timeout).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the attacks' random restarts.")
def verify(model: str, prop: str, timeout: float, output: str | None, as_json: bool, result_path: str | None,
           seed: int) -> None:
    """Decide the VNN-LIB property PROP on MODEL: holds (no input of its regions gives outputs that meet its
    output condition; proved), violated (a counterexample, confirmed with onnxruntime), or unknown / timeout.
    Exit 0 holds, 1 violated, 4 unknown or timeout, 2 bad input."""
    from frontends.onnx_io import read_model
    from verifier.commands.verify_run import EXIT_CODES, format_verify, run_verify, vnncomp_result

    outputs = OutputPaths({"--result": result_path}, inputs=[model, prop])
    source = read_model(model, outputs)
    result = run_verify(model, prop, timeout, output, seed, source)
    outputs.write_bytes("--result", vnncomp_result(result).encode())
    emit_json(result) if as_json else click.echo(format_verify(result))
    sys.exit(EXIT_CODES[result["status"]])

@cli.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option("--arch", help="Build this architecture instead of reading MODEL: 2C2F, 4C3F, 6C2F (the seeds' mCnF) "
              "or mlp-H1-H2-...")
@click.option("--width", type=POSITIVE, default=1.0, show_default=True, help="With --arch: scale every width.")
@click.option("--input-shape", type=Shape(), default="1,28,28", show_default=True,
              help="With --arch: the sample shape (C,H,W).")
@click.option("--classes", type=click.IntRange(min=2), default=10, show_default=True,
              help="With --arch: the number of classes.")
@click.option("--data", "data_path", type=str, default=None, help="Training data (.npz or IDX folder; its train "
              "split). Default: Fashion-MNIST from ../shared/data or /usr/share/datasets.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Which IDX split to train on (the last --val samples are held out).")
@click.option("--method", type=click.Choice(TRAINING_METHODS),
              default="standard", show_default=True)
@click.option("--eps", type=RADIUS, default=1.0, show_default=True, help="Target l2 radius (the data's space).")
@click.option("--epochs", type=COUNT, default=10, show_default=True)
@click.option("--batch-size", type=COUNT, default=128, show_default=True)
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--ramp", type=FRACTION, default=0.4, show_default=True, help="Fraction of the steps over which eps "
              "goes 0 -> target and lambda 0 -> 1.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--val", type=COUNT, default=5000, show_default=True, help="Samples held out (the last ones).")
@click.option("--limit", type=COUNT, default=None, help="Use the first N training samples.")
@click.option("--lmt-c", type=RADIUS, default=None, help="LMT's c (default: --eps).")
@click.option("--lmt-prop1", is_flag=True, help="LMT with sqrt(2) c L (Prop. 1) instead of Prop. 2's pairs.")
@click.option("--lmt-plus", is_flag=True, help="LMT++: the margin only where the prediction is correct.")
@click.option("--crm-lambda", type=Number(low=0.0), default=10.0, show_default=True)
@click.option("--crm-t", type=POSITIVE, default=None, help="CRM's soft-min temperature (default 4 / eps).")
@click.option("--cross-lambda", type=Number(low=0.0), default=1.0, show_default=True,
              help="Cross-Lipschitz weight.")
@click.option("--checkpoint", type=str, default=None, help="Save after every epoch here (safetensors; never a "
              "pickle).")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--input-scale", type=POSITIVE, default=None, help="Multiply the data by this before the model.")
@click.option("--mean", type=Values(), default=None, help="Subtract (scalar or comma-separated per channel).")
@click.option("--std", type=Values(positive=True), default=None,
              help="Then divide (scalar or comma-separated per channel).")
@click.option("--out", required=True, type=str, help="Where to write the trained ONNX.")
@click.option("--output", "output", metavar="NAME", help="Which graph output to train on (default: the first; a "
              "label output is trained through its scores, as certify reads it).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
def train(model: str | None, arch: str | None, width: float, input_shape: tuple[int, ...], classes: int,
          data_path: str | None, split: str, method: str, eps: float, epochs: int, batch_size: int, lr: float,
          optimizer: str, lr_schedule: str, ramp: float, seed: int,
          val: int, limit: int | None, lmt_c: float | None, lmt_prop1: bool, lmt_plus: bool, crm_lambda: float,
          crm_t: float | None, cross_lambda: float, checkpoint: str | None, resume: bool, device: str,
          input_scale: float | None, mean: str | None, std: str | None, out: str, output: str | None,
          as_json: bool) -> None:
    """Retrain MODEL (or a new --arch) with a robust method (LMT, CRM, BCP, Cross-Lipschitz) or plain
    cross-entropy, and write the same ONNX graph with the new weights to --out. Exit 0 ok, 1 when the export
    does not match onnxruntime, 2 bad input."""
    from training.loop import TrainConfig
    from training.losses import Options
    from training.run import format_train, run_train

    if resume and not checkpoint:
        raise click.UsageError("--resume needs --checkpoint")
    options = Options(lmt_c=lmt_c, lmt_pairwise=not lmt_prop1, lmt_plus=lmt_plus, crm_lambda=crm_lambda,
                      crm_t=crm_t, cross_lambda=cross_lambda)
    config = TrainConfig(method=method, eps=eps, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                         lr_schedule=lr_schedule, ramp=ramp, seed=seed, options=options)
    result = run_train(model, arch=arch, width=width, input_shape=input_shape, classes=classes, data_path=data_path,
                       split=split, val=val, limit=limit, out=out, output=output,
                       config=config, device=device, input_scale=input_scale, mean=mean, std=std,
                       checkpoint=checkpoint, resume=resume, progress=not as_json)
    if as_json:
        emit_json(result)
    else:
        click.echo(format_train(result))
    ok = result["export"]["parity"] and result["export"]["same_nodes"]
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


#: what click raises for a command line with no command (click >= 8.2; older versions exit 0 with the help)
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())
#: the longest error line printed (a message naming thousands of nodes is cut, saying how much was left out)
MAX_LINE = 1000


def _one_line(text: str) -> str:
    """``text`` as one line of at most ``MAX_LINE`` characters."""
    line = " ".join(text.split())
    if len(line) > MAX_LINE:
        line = f"{line[:MAX_LINE]}... ({len(line) - MAX_LINE} more characters)"
    return line


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every error is one line on stderr with its exit code."""
    warnings.filterwarnings("ignore")
    try:
        cli.main(args=argv, prog_name="lipverify", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        if isinstance(e, _NO_ARGS) and e.ctx is not None:  # `lipverify` alone: the help, for a person
            click.echo(e.ctx.get_help(), err=True)
        else:
            click.echo(f"lipverify: error: {_one_line(e.format_message())}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("lipverify: aborted", err=True)
        sys.exit(130)
    except (UnsupportedOpsError, LipverifyError) as e:
        click.echo(f"lipverify: error: {_one_line(str(e))}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as e:  # the file system refused something the user named (a read or a write)
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"lipverify: error: {where}{e.strerror or _one_line(str(e)) or type(e).__name__}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo("lipverify: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("LIPVERIFY_DEBUG"):
            raise
        click.echo(f"lipverify: internal error: {type(e).__name__}: {_one_line(str(e))} (LIPVERIFY_DEBUG=1 "
                   f"shows the traceback)", err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
