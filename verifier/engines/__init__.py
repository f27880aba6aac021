"""Engines that walk the IR: interval bound propagation (``ibp``), gradient boxes (``gradients``), global
Lipschitz bounds (``lipschitz``, LMT) and LipLT's (``liplt``, CRM), BCP's boxes and the IBP/BCP decisions
(``bcp``), the local Cross-Lipschitz bounds (``local``), power iteration for training (``power_iteration``) and
the attacks that look for counterexamples (``attacks``). They take verification problems
(``verifier.problem``) and import only the kit, the ops and the IR below them."""
