"""Remove the contiguous span of n blocks whose input and output are closest in angle
(Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers"): the span that changes the
residual stream least."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vlatrim.errors import VlatrimError
from vlatrim.prune.methods.base import PRUNE_METHODS, PlanContext, PruneMethod
from vlatrim.prune.plan import PrunePlan

if TYPE_CHECKING:
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest


def angular_span(handle: Any, distances: Mapping[int, Sequence[float]], n: int) -> PrunePlan:
    """Plan removing blocks ``l .. l+n-1`` for the start ``l`` with the smallest angular distance.

    Args:
        handle: the located backbone.
        distances: ``distances[n][l]`` = angular distance between the input of block ``l`` and the output
            of block ``l+n-1`` (as the analysis writes them), for ``l`` in ``0..L-n``.
        n: span length.
    """
    L = handle.num_blocks
    if not 1 <= n < L:
        raise VlatrimError(f"span length {n} out of range; valid: 1..{L - 1}")
    row = distances.get(n, distances.get(str(n))) if isinstance(distances, Mapping) else None
    if row is None:
        raise VlatrimError(f"the analysis has no angular distances for spans of {n} blocks; available: {sorted(distances)}")
    if len(row) != L - n + 1:
        raise VlatrimError(f"angular distances for spans of {n}: {len(row)} values, expected {L - n + 1}")
    start = min(range(len(row)), key=lambda l: (row[l], l))
    return PrunePlan(drop_blocks=list(range(start, start + n)), methods=["angular-span"],
                     notes={"span_start": start, "span_length": n, "span_distance": float(row[start])})


@PRUNE_METHODS.register("angular-span")
class AngularSpan(PruneMethod):
    """``--scores A --span N``: the span of N blocks the analysis's angular distances say changes least."""

    name = "angular-span"
    stage = "depth"

    def applies(self, request: PruneRequest) -> bool:
        return request.span is not None

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        return angular_span(handle, scores.span_distances(handle), request.span)
