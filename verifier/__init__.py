"""lipverify's verifier, in layers that import only downward (``tests/test_layers.py``): the numeric kit and value
types (``box``, ``jacobian``, ``margins``), the ops and their rules (``ops``), the IR (``ir``), the bound engines
(``ibp``, ``gradients``, ``lipschitz``, ``liplt``, ``bcp``, ``local``), the certificates (``certify``) and the
commands (``cli`` and the runners it calls)."""

__version__ = "0.1.0"
