"""lipverify's Python API: ``certify``, ``attack``, ``lipschitz``, ``verify`` and ``train`` on a model as the user
holds it (ONNX, torch.nn.Module, scikit-learn, Keras, JAX/Flax), each returning a ``Result`` with the fields of
the command's JSON; ``load_model`` gives the imported model itself (``verifier.commands.api``,
``frontends.exporters``)."""
from __future__ import annotations

from frontends.exporters import load_model, to_onnx
from verifier.commands.api import Result, attack, certify, lipschitz, load_weights, train, verify

__all__ = ["Result", "attack", "certify", "lipschitz", "load_model", "load_weights", "to_onnx", "train", "verify"]
