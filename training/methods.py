"""The training methods, named once: plain cross-entropy and the four robust losses of ``training/losses.py``
(LMT, CRM, BCP, Cross-Lipschitz). A light module, so that the command line can list them without importing
torch."""
from __future__ import annotations

METHODS = ("standard", "lmt", "crm", "bcp", "cross-lipschitz")
