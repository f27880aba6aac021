"""Where the logits come from: onnxruntime on the CPU when the file runs whole batches there and its output is
the logits (it is the reference implementation, and faster than torch for small convolutions), else the IR (on
the GPU when asked). The bounds are always the IR's; a file onnxruntime cannot run in batches (any failure, or a
probe that does not match the IR) simply falls back to the IR."""
from __future__ import annotations

import torch

from verifier.commands.progress import progress
from verifier.ir import GraphModule


class LogitEngine:
    """Computes logits (the tensor before a trailing Softmax) for batches: with onnxruntime on the CPU when the
    file runs whole batches there and its output is the logits (it is the reference implementation, and faster
    than torch for small convolutions), else with the IR (on the GPU when asked). ``name`` says which."""

    def __init__(self, module: GraphModule, device: torch.device, model=None):
        self.module, self.device = module, device
        self.output = module.graph.logits_tensor()
        self.session = None
        g = module.graph
        if model is not None and device.type == "cpu" and self.output == g.output_name and g.leading_batch \
                and g.output_leading_batch:
            self.session = _batched_session(model, module)
        self.name = "onnxruntime" if self.session is not None else "ir"

    def __call__(self, chunk: torch.Tensor) -> torch.Tensor:
        self.module.check_input(chunk)
        if self.session is not None:
            run, dtype = self.session
            return torch.from_numpy(run(chunk.numpy().astype(dtype))).reshape(len(chunk), -1).float()
        chunk = chunk.to(device=self.device, dtype=self.module.float_dtype)
        g = self.module.graph
        logits = self.module.run(chunk, keep={self.output})[self.output] if self.output != g.output_name \
            else self.module(chunk)
        return logits.reshape(len(chunk), -1).cpu()


def _batched_session(model, module: GraphModule):
    """An onnxruntime runner for whole batches, if the file accepts them and matches the IR on a probe."""
    import numpy as np

    from frontends.parity import input_dtype, reference_runner

    try:
        name, run = reference_runner(model, module.graph.info.get("output"))
        if name != "onnxruntime":
            return None
        g = module.graph
        dtype = input_dtype(model, g.input_name)
        probe = torch.rand((3, *g.sample_shape), generator=torch.Generator().manual_seed(0))
        y = run(g.info.get("output", g.output_name), g.input_name, probe.numpy().astype(dtype))
        with torch.no_grad():
            ours = module(probe).numpy()
        if y.shape != ours.shape or not np.allclose(y, ours, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ours).max())):
            return None
        output = g.info.get("output", g.output_name)
        return (lambda x: run(output, g.input_name, x)), dtype
    except Exception:
        return None


def batched_logits(module: GraphModule, x: torch.Tensor, batch_size: int, device: torch.device,
                   label: str = "certifying", engine: LogitEngine | None = None) -> torch.Tensor:
    """Logits for all inputs, in batches, with a progress bar on stderr when there are many."""
    engine = engine or LogitEngine(module, device)
    chunks = list(torch.split(x, batch_size))
    with torch.no_grad(), progress(chunks, label) as bar:
        results = [engine(chunk) for chunk in bar]
    return torch.cat(results) if results else torch.zeros((0, 1))
