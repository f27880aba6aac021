"""`lipverify inspect`: what a model is, what lipverify can do with each of its ops, and whether the IR computes
what onnxruntime computes."""
from __future__ import annotations

import os
from typing import Any

from frontends.onnx_graph import value_shape
from frontends.parity import check_parity
from verifier.commands.loading import import_model
from verifier.ir import GraphModule

RULES = (("forward", "forward"), ("lipschitz", "lipschitz"), ("box", "interval"))


def op_rules(module: GraphModule) -> dict[str, dict[str, bool]]:
    """For each op type in the IR: which of forward / Lipschitz rule / box rule it has."""
    classes = {n.op_type: type(n.op) for n in module.graph.nodes()}
    return {op_type: {key: cls.has_rule(method) for key, method in RULES} for op_type, cls in sorted(classes.items())}


def inspect_model(path: str | os.PathLike, output: str | None = None,
                  batch_sizes: tuple[int, ...] = (1, 7)) -> dict[str, Any]:
    model, module = import_model(path, output)
    g, info = module.graph, module.graph.info
    inits = {t.name for t in model.graph.initializer}
    return {
        "model": str(path),
        "producer": info["producer"],
        "opset": info["opset"],
        "ir_version": info["ir_version"],
        "inputs": [{"name": i.name, "shape": value_shape(i), "ir_shape": ["B", *g.sample_shape]}
                   for i in model.graph.input if i.name not in inits],
        "outputs": [{**o, "selected": o["name"] == info.get("requested_output", info["output"])}
                    for o in info["outputs"]],
        "output": info["output"],
        "output_ir_shape": ["B", *g.output_shape],
        "batched": g.batched,
        "nodes": len(g.order),
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "op_counts": g.op_counts(),
        "file_op_counts": info["file_op_counts"],
        "ops": op_rules(module),
        "unsupported_ops": [],
        "parity": check_parity(model, module, batch_sizes),
        "notes": _notes(module),
    }


def _notes(module: GraphModule) -> list[str]:
    """What a user may not expect about how the IR reads the model (the import's notes first: a label output
    imported as its scores)."""
    g = module.graph
    notes = list(g.info.get("notes", []))
    declared = g.info["input"]["shape"] or []
    if not g.leading_batch and declared and isinstance(declared[0], int) and declared[0] > 1:
        notes.append(f"the input's first axis is fixed to {declared[0]} in the file, so it is read as part of one "
                     f"sample of shape {tuple(g.sample_shape)}, not as a batch axis")
    if not g.batched:
        notes.append("the graph mixes its batch axis (or has none): the IR runs it one sample at a time")
    return notes


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of ``inspect_model``'s report."""
    lines = [f"model     {report['model']}  ({report['producer'] or 'unknown producer'}, opset {report['opset']})"]
    for i in report["inputs"]:
        lines.append(f"input     {i['name']!r}  file shape {i['shape']}  -> IR input "
                     f"({', '.join(map(str, i['ir_shape']))})")
    for o in report["outputs"]:
        mark = f" -> IR output ({', '.join(map(str, report['output_ir_shape']))})" if o["selected"] else ""
        lines.append(f"output    {o['name']!r}  shape {o['shape']}{mark}{'' if o['selected'] else '  (not used)'}")
    lines.append(f"batching  {'native' if report['batched'] else 'sample by sample (the graph mixes the batch axis)'}"
                 f";  {report['nodes']} IR nodes, {report['parameters']} trainable parameters")
    lines.append("")
    lines.append(f"{'op':<20}{'count':>6}  {'forward':<8}{'lipschitz':<10}{'box':<4}")
    for op, count in sorted(report["op_counts"].items()):
        r = report["ops"][op]
        lines.append(f"{op:<20}{count:>6}  {_yes(r['forward']):<8}{_yes(r['lipschitz']):<10}{_yes(r['box']):<4}")
    for note in report.get("notes", []):
        lines.append(f"note      {note}")
    p = report["parity"]
    batches = " and ".join(map(str, p["batch_sizes"]))
    lines.append("")
    if p.get("error"):
        lines.append(f"parity: not established: {p['error']} -> MISMATCH")
        return "\n".join(lines)
    if "labels" in p:
        lines.append(f"label parity vs {p['reference']} (random inputs, batch {batches}): {p['agree']} of "
                     f"{p['labels'] - p['undecided']} labels agree ({p['undecided']} undecided by the imported "
                     f"scores) -> {'OK' if p['ok'] else 'MISMATCH'}")
        return "\n".join(lines)
    lines.append(f"parity vs {p['reference']} (random inputs, batch {batches}): max abs diff {p['max_abs_diff']:.3g}, "
                 f"max rel diff {p['max_rel_diff']:.3g} (tolerance {p['tolerance']:g}) -> "
                 f"{'OK' if p['ok'] else 'MISMATCH'}")
    return "\n".join(lines)
