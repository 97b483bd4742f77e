"""Closed-loop simulation: offscreen rendering, the Meta-World env wrapper, policies, evaluation."""
