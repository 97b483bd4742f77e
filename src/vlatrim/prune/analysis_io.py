"""Read what the pruning selectors need from an ``analysis.json`` written by ``vlatrim analyze``.

Format (docs/analysis.md): ``{"scorers": {name: {"unit": "block"|"head"|"channel"|"token",
"scores": {path: [...]}, "extras": {...}}}}``. Block scores are keyed by the block list's path, head and
channel scores by each block's path, vocabulary usage by the embedding's path; higher = more important.
The angular scorer's ``extras["spans"][path][n-1][l]`` is the distance across blocks ``l..l+n-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.utils.io import read_json

# When no scorer is named, the first of these present in the file is used.
BLOCK_PREFERENCE = ("drop_one", "gateprobe", "block_influence", "angular", "cka", "gate_first_order")
HEAD_PREFERENCE = ("head_taylor", "head_magnitude")
CHANNEL_PREFERENCE = ("channel_taylor", "channel_magnitude")


class Analysis:
    """An analysis.json, read once.

    Args:
        path: the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        data = read_json(path, "analysis file")
        if not isinstance(data, dict) or not isinstance(data.get("scorers"), dict):
            raise VlatrimError(f"analysis file {path!r} has no 'scorers' object; write it with `vlatrim analyze`")
        self.scorers: dict[str, Any] = data["scorers"]

    def _pick(self, unit: str, name: str | None, preference: Sequence[str]) -> tuple[str, dict[str, Any]]:
        have = {n: s for n, s in self.scorers.items() if isinstance(s, dict) and s.get("unit") == unit}
        if name is not None:
            if name not in have:
                raise VlatrimError(f"analysis file {self.path!r} has no {unit} scorer {name!r}; it has: {', '.join(sorted(have)) or '(none)'}")
            return name, have[name]
        for n in list(preference) + sorted(have):
            if n in have:
                return n, have[n]
        raise VlatrimError(f"analysis file {self.path!r} has no {unit} scores; run `vlatrim analyze` with a {unit} scorer")

    def has(self, unit: str) -> bool:
        """Whether any scorer of this unit ran."""
        return any(isinstance(e, dict) and e.get("unit") == unit for e in self.scorers.values())

    def block_scores(self, handle: Any, scorer: str | None = None) -> tuple[str, list[float]]:
        """(scorer name, one score per backbone block)."""
        name, entry = self._pick("block", scorer, BLOCK_PREFERENCE)
        s = entry.get("scores", {}).get(handle.blocks_path)
        if s is None:
            raise VlatrimError(f"analysis scorer {name!r} has no scores for {handle.blocks_path!r}; was it run on this model?")
        if len(s) != handle.num_blocks:
            raise VlatrimError(f"analysis scorer {name!r} scores {len(s)} blocks but the model has {handle.num_blocks}")
        return name, [float(x) for x in s]

    def span_distances(self, handle: Any) -> dict[int, list[float]]:
        """``{n: [d(l, n) for l in 0..L-n]}`` from the angular scorer."""
        entry = self.scorers.get("angular")
        spans = (entry or {}).get("extras", {}).get("spans", {}).get(handle.blocks_path)
        if spans is None:
            raise VlatrimError(f"analysis file {self.path!r} has no angular span distances for {handle.blocks_path!r}; "
                               "run `vlatrim analyze` with the angular scorer")
        return {n + 1: [float(x) for x in row] for n, row in enumerate(spans)}

    def _per_block(self, unit: str, handle: Any, scorer: str | None, preference: Sequence[str]) -> dict[int, list[float]]:
        name, entry = self._pick(unit, scorer, preference)
        scores = entry.get("scores", {})
        out = {b: scores.get(lay.path) for b, lay in enumerate(handle.layouts)}
        missing = [b for b, v in out.items() if v is None]
        if missing:
            raise VlatrimError(f"analysis scorer {name!r} has no scores for block {missing[0]} ({handle.layouts[missing[0]].path})")
        return out

    def head_scores(self, handle: Any, scorer: str | None = None) -> dict[int, list[float]]:
        """Per block, one score per query head."""
        return self._per_block("head", handle, scorer, HEAD_PREFERENCE)

    def channel_scores(self, handle: Any, scorer: str | None = None) -> dict[int, list[float]]:
        """Per block, one score per MLP channel."""
        return self._per_block("channel", handle, scorer, CHANNEL_PREFERENCE)

    def loss_unit_scores(self, handle: Any, scorer: str | None, accepted: dict[str, Sequence[str]]) -> dict[str, Any]:
        """Block, head and channel scores for a solver that compares them on one scale, taken only from the
        scorers in ``accepted`` (unit -> names whose values are loss changes); anything else is refused.

        Returns:
            ``{"block_scorer": name, "block": [...], "head": {b: [...]}, "channel": {b: [...]}}``.
        """
        valid = ", ".join(f"{u}: {'/'.join(n)}" for u, n in accepted.items())
        if scorer is not None and scorer not in accepted["block"]:
            raise VlatrimError(f"--scorer {scorer!r} is not in loss units; --budget-units all accepts {valid}")
        found = {}
        for unit, names in accepted.items():
            have = [n for n in names if isinstance(self.scorers.get(n), dict) and self.scorers[n].get("unit") == unit]
            if unit == "block" and scorer is not None:
                have = [scorer] if scorer in have else []
            if not have:
                raise VlatrimError(f"--budget-units all needs {unit} scores in loss units ({'/'.join(names)}) but "
                                   f"{self.path!r} has none; valid scorers: {valid}")
            found[unit] = have[0]
        name, blocks = self.block_scores(handle, found["block"])
        return {"block_scorer": name, "block": blocks,
                "head": self._per_block("head", handle, found["head"], ()),
                "channel": self._per_block("channel", handle, found["channel"], ())}

    def used_token_ids(self) -> list[int] | None:
        """Token ids the task's instructions use (the vocabulary scorer), or None if it was not run."""
        entry = self.scorers.get("vocabulary")
        ids = (entry or {}).get("extras", {}).get("used_ids")
        return None if ids is None else [int(i) for i in ids]
