"""Remove blocks of a vision or action block list (a vision-encoder or action-expert cut), by index."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlatrim.errors import VlatrimError
from vlatrim.prune.methods.base import PRUNE_METHODS, PlanContext, PruneMethod
from vlatrim.prune.plan import PrunePlan

if TYPE_CHECKING:
    from vlatrim.prune.analysis_io import Analysis
    from vlatrim.prune.api import PruneRequest


def pathway_blocks(handle: Any, pathway: str, drop: list[int]) -> PrunePlan:
    """Plan removing blocks ``drop`` from a vision or action block list, named by its pathway (when that
    pathway has exactly one block list) or by the list's dotted path. Couplings (an action expert paired
    with the language layers) are added afterwards by the model's policy family."""
    lists = {p: [bl.path for bl in bls] for p, bls in handle.pathways().items() if p != "language"}
    paths = [bl for bls in lists.values() for bl in bls]
    if pathway in lists and lists[pathway]:
        if len(lists[pathway]) != 1:
            raise VlatrimError(f"--pathway {pathway}: this model has {len(lists[pathway])} {pathway} block lists; name "
                               f"one by its path: {', '.join(lists[pathway])}")
        path = lists[pathway][0]
    elif pathway in paths:
        path = pathway
    else:
        valid = ["language"] + [p for p in lists if lists[p]] + paths
        raise VlatrimError(f"--pathway {pathway!r} is not a pathway or block list of this model; valid: {', '.join(valid)}")
    return PrunePlan(pathway_drops={path: list(drop)}, methods=["pathway-blocks"])


@PRUNE_METHODS.register("pathway-blocks")
class PathwayBlocks(PruneMethod):
    """``--pathway vision|action|PATH --drop-blocks ...``: blocks of a vision or action block list."""

    name = "pathway-blocks"
    stage = "depth"

    def applies(self, request: PruneRequest) -> bool:
        return request.pathway != "language"

    def plan(self, request: PruneRequest, handle: Any, scores: Analysis | None, context: PlanContext) -> PrunePlan:
        return pathway_blocks(handle, request.pathway, request.drop_blocks)
