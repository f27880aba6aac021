"""Decisions about whole properties (VNN-LIB): holds, violated with a counterexample, or unknown."""
