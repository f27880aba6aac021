"""Robust (re)training of imported or built models on the IR, exported back into the same ONNX graph.

- ``losses``: the objectives (standard, LMT, CRM, BCP, Cross-Lipschitz), each citing its equation;
- ``estimates``: the differentiable Lipschitz estimates they use (power iteration, LipLT's recursion);
- ``bcp_bound``: BCP's worst-translated logit;
- ``loop``: optimizer, schedules, checkpoint and resume, progress; ``evaluate``: held-out sound certificates;
- ``arch``: the seeds' mCnF architectures, built in torch and exported to ONNX;
- ``run``: ``lipverify train`` (load or build, train, ``frontends.onnx_export``).
"""
