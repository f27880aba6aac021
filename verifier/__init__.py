"""lipverify's verifier, in layers that import only downward (``tests/test_layers.py``): the numeric kit and value
types at the top of the package (``rounding``, ``box``, ``jacobian``, ``margins``, ``last_layer``, and
``problem``: verification problems as data), the ops and their rules (``ops``), the IR (``ir``), the engines that
walk it (``engines``), the certificates and the method registry (``certificates``) and the commands
(``commands``)."""

__version__ = "0.1.0"
