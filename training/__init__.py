"""Robust (re)training of imported models on the IR (LMT, CRM, BCP, Cross-Lipschitz): not implemented yet
(issue 6). The package exists so that the distribution's layout is fixed from the start."""
