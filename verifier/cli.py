"""The `lipverify` command line.

Exit codes: 0 success; 1 a check or gate failed (e.g. parity); 2 bad input (one line on stderr, never a
traceback); 3 an internal error (one line; set LIPVERIFY_DEBUG=1 for the traceback).
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import click

from .errors import LipverifyError, UnsupportedOpsError

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
    from .inspect import format_report, inspect_model

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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every error is one line on stderr with its exit code."""
    warnings.filterwarnings("ignore")
    try:
        cli.main(args=argv, prog_name="lipverify", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"lipverify: error: {e.format_message()}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("lipverify: aborted", err=True)
        sys.exit(130)
    except (UnsupportedOpsError, LipverifyError) as e:
        click.echo(f"lipverify: error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        click.echo("lipverify: interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("LIPVERIFY_DEBUG"):
            raise
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        click.echo(f"lipverify: internal error: {type(e).__name__}: {text} (LIPVERIFY_DEBUG=1 shows the "
                   f"traceback)", err=True)
        sys.exit(EXIT_INTERNAL)
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
