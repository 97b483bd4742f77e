"""Selectors: turn a request (indices, scores + budget, a span, a width) into a PrunePlan.

Selectors never cut and never measure importance from data: they read indices or scores that the
analysis produced (or, for ``magnitude``, the weights' norms) and return a plan. Each lives in its own
module and registers itself in ``PRUNE_METHODS``.
"""

# Importing the modules registers them.
from vlatrim.prune.methods import angular_span, block_scores, budget_all, drop_blocks, heads, keep_first, mlp, vocab  # noqa: E402,F401
from vlatrim.prune.methods.base import PRUNE_METHODS

__all__ = ["PRUNE_METHODS"]
