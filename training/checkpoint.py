"""Training checkpoints that cannot execute code: a safetensors file whose tensors are the state's tensors and
whose metadata holds everything else as JSON. Nothing is unpickled, so a crafted checkpoint can at worst be
refused (one line, exit 2), never run.

The state is a tree of dicts (str or int keys), lists, tuples, str, int, float, bool, None and tensors. In the
JSON, every dict is ``{"$dict": [[key, value], ...]}``, every tuple ``{"$tuple": [...]}`` and every tensor
``{"$tensor": name}`` naming one of the file's tensors; lists and scalars are themselves. Loading accepts
exactly this shape (at most ``MAX_DEPTH`` levels) and returns tensors on the requested device.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from frontends.outputs import atomic_write
from verifier.errors import LipverifyError

FORMAT = "lipverify-checkpoint/1"
MAX_DEPTH = 32
#: a safetensors file starts with its header's length (8 bytes, little-endian) and the header's '{'
_MAX_HEADER = 100 * 2**20


def _encode(value: Any, tensors: dict[str, torch.Tensor], depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError("checkpoint state nested too deeply")
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
        return {"$tensor": name}
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"checkpoint keys must be str or int, got {type(k).__name__}")
            items.append([k, _encode(v, tensors, depth + 1)])
        return {"$dict": items}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors, depth + 1) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors, depth + 1) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file renamed into place)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    data = save(tensors, metadata={"format": FORMAT, "state": json.dumps(tree)})
    atomic_write(path, lambda f: f.write(data), "--checkpoint")


class _Decoder:
    def __init__(self, path: Path, handle: Any, device: torch.device | str):
        self.path, self.handle, self.device = path, handle, device
        self.names = set(handle.keys())

    def bad(self, why: str) -> LipverifyError:
        return LipverifyError(f"{self.path}: not a valid lipverify checkpoint ({why})")

    def __call__(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise self.bad("nested too deeply")
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        if isinstance(value, list):
            return [self(v, depth + 1) for v in value]
        if not isinstance(value, dict) or len(value) != 1:
            raise self.bad("unexpected JSON object")
        (tag, body), = value.items()
        if tag == "$tensor":
            if not isinstance(body, str) or body not in self.names:
                raise self.bad(f"a reference to a missing tensor {str(body)[:40]!r}")
            return self.handle.get_tensor(body).to(self.device)
        if tag == "$tuple" and isinstance(body, list):
            return tuple(self(v, depth + 1) for v in body)
        if tag == "$dict" and isinstance(body, list):
            out = {}
            for item in body:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))
                        and not isinstance(item[0], bool)):
                    raise self.bad("a dict entry that is not a [key, value] pair")
                out[item[0]] = self(item[1], depth + 1)
            return out
        raise self.bad(f"unknown entry {str(tag)[:40]!r}")


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state saved by ``save_checkpoint``; anything else (a pickle, a truncated or foreign file) is refused
    with a one-line ``LipverifyError`` before any of it is interpreted."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise LipverifyError(f"{path}: cannot read the checkpoint ({e.strerror or type(e).__name__})")
    if len(head) < 9 or int.from_bytes(head[:8], "little") > _MAX_HEADER or head[8:9] != b"{":
        what = "a pickle (torch.save / older lipverify), refused because loading it could run code" \
            if head[:2] == b"PK" or head[:1] == b"\x80" else "not a safetensors file"
        raise LipverifyError(f"{path}: not a lipverify checkpoint ({what}); start the run without --resume")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT or "state" not in meta:
                raise LipverifyError(f"{path}: not a lipverify checkpoint (format {meta.get('format')!r}, expected "
                                     f"{FORMAT!r})")
            tree = json.loads(meta["state"])
            state = _Decoder(path, handle, device)(tree)
    except LipverifyError:
        raise
    except (SafetensorError, OSError, ValueError, RecursionError, RuntimeError) as e:
        text = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise LipverifyError(f"{path}: not a valid lipverify checkpoint ({text})")
    if not isinstance(state, dict):
        raise LipverifyError(f"{path}: not a valid lipverify checkpoint (the state is not a dict)")
    return state


#: the per-parameter state each optimizer keeps once it has stepped (an empty state: not stepped yet)
_OPTIMIZER_STATE = {"Adam": ({"step", "exp_avg", "exp_avg_sq"}, {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
                    "SGD": ({"momentum_buffer"},)}
#: what every history record holds, with its type (the records ``loop.train`` writes)
_RECORD = {"epoch": int, "loss": float, "train_accuracy": float, "seconds": float, "clean_accuracy": float,
           "certified_accuracy": float, "certificate": str}


def restore(state: dict[str, Any], path: str | os.PathLike, module: torch.nn.Module,
            optimizer: torch.optim.Optimizer) -> tuple[list[dict[str, Any]], int, float]:
    """Load a checkpoint's weights and optimizer state into ``module`` and ``optimizer`` after checking that
    they fit (same tensors and shapes, finite values, the optimizer's own per-parameter entries); returns
    (history, epochs done, seconds). Anything that does not fit is a one-line ``LipverifyError``."""
    def bad(why: str) -> LipverifyError:
        return LipverifyError(f"{path}: the checkpoint does not fit this run ({why})")

    weights, saved = module.state_dict(), state.get("module")
    if not isinstance(saved, dict) or set(saved) != set(weights):
        raise bad("its weights are those of another model")
    for name, value in saved.items():
        if not isinstance(value, torch.Tensor) or value.shape != weights[name].shape:
            raise bad(f"weight {name!r} has another shape")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise bad(f"weight {name!r} is not finite")
    module.load_state_dict(saved)
    _restore_optimizer(optimizer, state.get("optimizer"), bad)
    history, epoch, seconds = state.get("history"), state.get("epoch"), state.get("seconds")
    if not isinstance(history, list) or not all(_is_record(r) for r in history):
        raise bad("its history is not a list of epoch records")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0 or epoch != len(history):
        raise bad("its epoch count is not the number of epoch records")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < float("inf"):
        raise bad("its seconds are not a finite number")
    return history, epoch, float(seconds)


def _is_record(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    for key, kind in _RECORD.items():
        value = record.get(key)
        ok = isinstance(value, str) if kind is str else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
            and (kind is float or isinstance(value, int)))
        if not ok:
            return False
    return True


def _restore_optimizer(optimizer: torch.optim.Optimizer, saved: Any, bad) -> None:
    """Only the per-parameter state is taken from the file; the hyper-parameters stay this run's own."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise bad("no optimizer state")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    allowed = _OPTIMIZER_STATE.get(type(optimizer).__name__, ())
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise bad("optimizer state for a parameter that does not exist")
        if entry and set(entry) not in allowed:
            raise bad(f"optimizer state with entries {sorted(map(str, entry))}")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point() \
                    or (value.dim() and value.shape != params[index].shape) or not bool(torch.isfinite(value).all()):
                raise bad(f"optimizer state {key!r} of parameter {index} does not fit it")
    fresh = optimizer.state_dict()
    optimizer.load_state_dict({"state": saved["state"], "param_groups": fresh["param_groups"]})
