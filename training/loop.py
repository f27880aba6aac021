"""The training loop: optimizer, learning-rate / eps / lambda schedules, seeds, checkpoint and resume, progress.

Deterministic given the seed: batch order comes from a generator seeded by (seed, epoch), the schedules from
the global step, and a checkpoint (written after every epoch) holds the weights, BatchNorm statistics,
optimizer state, the power-iteration vectors and the history, so that resuming gives the same weights as an
uninterrupted run (``tests/test_training.py`` checks it).

Schedules (per step): the learning rate decays by a half cosine to 0 (``lr_schedule='cosine'``) or stays
(``'constant'``); eps ramps linearly from 0 to the target and lambda from 0 to 1 over the first ``ramp`` of
the steps (BCP §4: "we gradually increase eps from 0 to eps_target and lambda from 0 to 1"; used for every
robust method), then stay.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from verifier.errors import LipverifyError
from verifier.ir import GraphModule

from .checkpoint import load_checkpoint, restore, save_checkpoint
from .evaluate import evaluate
from .losses import Loss, Options, Step


@dataclass
class TrainConfig:
    method: str = "standard"
    eps: float = 1.0  # target l2 radius, in the data's (user) space
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd (momentum 0.9)
    lr_schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.0
    ramp: float = 0.4  # fraction of the steps over which eps and lambda ramp up
    seed: int = 0
    eval_size: int = 500  # held-out samples evaluated after every epoch
    options: Options = field(default_factory=Options)


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    seconds: float
    note: str | None


def schedule(config: TrainConfig, step: int, total: int) -> tuple[float, float, float]:
    """(learning rate, eps fraction, lambda) at global step ``step`` of ``total``."""
    progress = step / max(total, 1)
    lr = config.lr * (0.5 * (1 + math.cos(math.pi * progress)) if config.lr_schedule == "cosine" else 1.0)
    ramp = min(1.0, progress / config.ramp) if config.ramp > 0 else 1.0
    return lr, ramp, ramp


def _optimizer(module: GraphModule, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


class Progress:
    """One status line on stderr: redrawn in place on a terminal, one line per epoch otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def update(self, text: str, final: bool = False) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\033[K" + text + ("\n" if final else ""))
            sys.stderr.flush()
        elif final:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()


def _diverged(what: str) -> LipverifyError:
    """Training that leaves finite numbers is a problem of its settings, said in one line (nothing is written)."""
    return LipverifyError(f"training diverged ({what}): lower --lr, or the method's eps, lambda or c")


def _resume(checkpoint: Path, module: GraphModule, optimizer: Any, loss_fn: Loss,
            config: TrainConfig) -> tuple[list[dict[str, Any]], int, float]:
    """A checkpoint of this run (same method and seed) restored into the module, the optimizer and the loss's
    power-iteration vectors: (history, epochs done, seconds so far)."""
    state = load_checkpoint(checkpoint, module.device)
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    if saved.get("method") != config.method or saved.get("seed") != config.seed:
        raise LipverifyError(f"{checkpoint}: a checkpoint of another run (method {saved.get('method')!r}, "
                             f"seed {saved.get('seed')!r})")
    history, start_epoch, elapsed = restore(state, checkpoint, module, optimizer)
    loss_fn.load_state_dict(state.get("vectors"), str(checkpoint))
    return history, start_epoch, elapsed


def train(module: GraphModule, x: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor, config: TrainConfig, *,
          eps_model: float, bounds: tuple[Tensor, Tensor] | None = None, checkpoint: str | Path | None = None,
          resume: bool = False, progress: bool = True,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train ``module`` in place on (x, y) (model space, on the module's device). ``eps_model``: the target
    radius in model space; ``bounds``: the model-space box of the inputs. Returns the per-epoch history
    (loss, train accuracy, held-out clean and certified accuracy at the target eps, seconds)."""
    torch.manual_seed(config.seed)
    device = module.device
    loss_fn = Loss(module, config.method, config.options, seed=config.seed)
    optimizer = _optimizer(module, config)
    history: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    checkpoint = Path(checkpoint) if checkpoint else None
    if resume and checkpoint is not None and checkpoint.exists():
        history, start_epoch, elapsed = _resume(checkpoint, module, optimizer, loss_fn, config)
    lower, upper = (None, None) if bounds is None else (bounds[0].to(device), bounds[1].to(device))
    n = len(x)
    per_epoch = math.ceil(n / config.batch_size)
    total = per_epoch * config.epochs
    bar = Progress(progress)
    x_eval, y_eval = x_val[:config.eval_size], y_val[:config.eval_size]
    for epoch in range(start_epoch, config.epochs):
        t0 = time.time()
        module.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
        sum_loss, correct, seen = 0.0, 0, 0
        for i, idx in enumerate(order.split(config.batch_size)):
            step = epoch * per_epoch + i
            lr, eps_frac, lam = schedule(config, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            xb, yb = x[idx].to(device), y[idx].to(device)
            value, z = loss_fn(xb, yb, Step(eps_model * eps_frac, lam, lower, upper))
            loss = float(value.detach())
            if not math.isfinite(loss):
                raise _diverged(f"loss {loss} at epoch {epoch + 1}, step {i + 1}")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            sum_loss += loss * len(idx)
            correct += int((z.argmax(1) == yb).sum())
            seen += len(idx)
            bar.update(f"epoch {epoch + 1}/{config.epochs} [{'=' * (20 * (i + 1) // per_epoch):<20}] "
                       f"loss {sum_loss / seen:.4f} acc {correct / seen:.3f} eps {eps_model * eps_frac:.3g}")
        elapsed += time.time() - t0
        if not all(bool(torch.isfinite(p).all()) for p in module.parameters()):
            raise _diverged(f"weights not finite after epoch {epoch + 1}")
        module.eval()
        metrics = evaluate(module, x_eval, y_eval, eps_model, config.method, lower, upper,
                           final=epoch + 1 == config.epochs)
        record = {"epoch": epoch + 1, "loss": sum_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                  "seconds": round(elapsed, 2), **metrics}
        history.append(record)
        bar.update(f"epoch {epoch + 1}/{config.epochs} loss {record['loss']:.4f} acc {record['train_accuracy']:.3f}"
                   f" | held-out clean {metrics['clean_accuracy']:.3f} certified@{config.eps:g} "
                   f"{metrics['certified_accuracy']:.3f} ({metrics['certificate']}) {elapsed:.0f}s", final=True)
        if checkpoint is not None:
            save_checkpoint({"module": module.state_dict(), "optimizer": optimizer.state_dict(),
                             "vectors": loss_fn.state_dict(), "history": history, "epoch": epoch + 1,
                             "seconds": elapsed, "config": asdict(config)}, checkpoint)
        if on_epoch is not None:
            on_epoch(record)
    module.eval()
    return TrainResult(history, elapsed, loss_fn.note)
