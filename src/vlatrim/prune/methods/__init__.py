"""Pruning methods: turn a request (indices, scores + budget, a span, a width) into a PrunePlan.

Methods never cut and never measure importance from data: they read indices or scores that the
analysis produced (or, for ``magnitude``, the weights' norms) and return a plan. Each lives in its own
module: a ``PruneMethod`` subclass registered in ``PRUNE_METHODS`` (what ``make_plan`` runs) and the
plain selector function it calls (for library use). Importing this package imports every module in it,
which registers them.
"""

import importlib
import pkgutil

from vlatrim.prune.methods.base import PRUNE_METHODS, STAGES, PlanContext, PruneMethod, ordered_methods

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["PRUNE_METHODS", "STAGES", "PlanContext", "PruneMethod", "ordered_methods"]
