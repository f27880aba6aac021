"""lipverify's verifier: the IR (``verifier.ir``), op rules (``verifier.ops``), and, in later issues, the bound
engines and certificates."""

__version__ = "0.1.0"
