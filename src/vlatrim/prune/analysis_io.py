"""Read what the pruning methods need from an ``analysis.json`` written by ``vlatrim analyze``.

Format (docs/analysis.md): ``{"scorers": {name: {"unit": "block"|"head"|"channel"|"token",
"loss_units": bool, "preference": int, "scores": {path: [...]}, "extras": {...}}}}``. Block scores are
keyed by the block list's path, head and channel scores by each block's path, vocabulary usage by the
embedding's path; higher = more important. A scorer's ``extras["spans"][path][n-1][l]`` (the angular
scorer's) is the distance across blocks ``l..l+n-1``; ``extras["used_ids"]`` of a ``token`` scorer (the
vocabulary scorer's) lists the token ids the task uses.

What a score means comes from the file, not from a list of names here (prune does not import analyze):
``loss_units`` says whether values estimate the loss increase of removing the unit (``--budget-units
all`` accepts only those), ``preference`` which scorer ranks a unit when none is named (lower first,
ties by name). Files written before scorers recorded this (entries with neither key) are read through
``LEGACY_METADATA``; an entry there with neither key and an unknown name is taken as not in loss units
and least preferred, as vlatrim treated unknown scorers then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.utils.io import read_json

# Compatibility only: the metadata of the scorers vlatrim shipped before analysis.json recorded it
# (name -> unit, loss_units, preference). Frozen: a scorer added since records its own metadata, and
# entries that carry ``loss_units`` / ``preference`` are never looked up here.
LEGACY_METADATA: dict[str, tuple[str, bool, int]] = {
    "drop_one": ("block", True, 0), "gateprobe": ("block", True, 1), "block_influence": ("block", False, 2),
    "angular": ("block", False, 3), "cka": ("block", False, 4), "gate_first_order": ("block", False, 5),
    "head_taylor": ("head", True, 0), "head_magnitude": ("head", False, 1),
    "channel_taylor": ("channel", True, 0), "channel_magnitude": ("channel", False, 1),
    "vocabulary": ("token", False, 0),
}
LOSS_UNITS = ("block", "head", "channel")  # the units ``--budget-units all`` compares


@dataclass(frozen=True)
class ScorerInfo:
    """What analysis.json says about one scorer (or, for an old file, ``LEGACY_METADATA``).

    Args:
        name: the scorer's key in ``scorers``.
        unit: ``block`` / ``head`` / ``channel`` / ``token``.
        loss_units: its values estimate the loss increase of removing the unit.
        preference: rank for being its unit's default ranking, lower first; None: after every ranked one.
    """

    name: str
    unit: str
    loss_units: bool
    preference: int | None

    def rank(self) -> tuple[bool, int, str]:
        """Sort key: preferred first, unranked last, ties by name."""
        return (self.preference is None, self.preference or 0, self.name)


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
        self.info: dict[str, ScorerInfo] = {n: self._info(n, e) for n, e in self.scorers.items() if isinstance(e, dict)}

    def _info(self, name: str, entry: dict[str, Any]) -> ScorerInfo:
        has_lu, has_pref = "loss_units" in entry, "preference" in entry
        if not has_lu and not has_pref:  # written before scorers recorded their metadata
            legacy = LEGACY_METADATA.get(name)
            lu, pref = (legacy[1], legacy[2]) if legacy is not None else (False, None)
            return ScorerInfo(name, entry.get("unit"), lu, pref)
        lu, pref = entry.get("loss_units"), entry.get("preference")
        if not isinstance(lu, bool) or not isinstance(pref, int) or isinstance(pref, bool):
            raise VlatrimError(f"analysis file {self.path!r}: scorer {name!r} records loss_units={lu!r}, preference={pref!r}; "
                               "valid: a bool and an int (re-run `vlatrim analyze` to rewrite the file)")
        return ScorerInfo(name, entry.get("unit"), lu, pref)

    def ranked(self, unit: str) -> list[str]:
        """Names of the file's scorers of ``unit``, the preferred default ranking first."""
        return [i.name for i in sorted((i for i in self.info.values() if i.unit == unit), key=ScorerInfo.rank)]

    def _pick(self, unit: str, name: str | None) -> tuple[str, dict[str, Any]]:
        have = self.ranked(unit)
        if name is not None:
            if name not in have:
                raise VlatrimError(f"analysis file {self.path!r} has no {unit} scorer {name!r}; it has: {', '.join(sorted(have)) or '(none)'}")
            return name, self.scorers[name]
        if not have:
            raise VlatrimError(f"analysis file {self.path!r} has no {unit} scores; run `vlatrim analyze` with a {unit} scorer")
        return have[0], self.scorers[have[0]]

    def has(self, unit: str) -> bool:
        """Whether any scorer of this unit ran."""
        return any(i.unit == unit for i in self.info.values())

    def block_scores(self, handle: Any, scorer: str | None = None) -> tuple[str, list[float]]:
        """(scorer name, one score per backbone block); without ``scorer``, the preferred block scorer's."""
        name, entry = self._pick("block", scorer)
        s = entry.get("scores", {}).get(handle.blocks_path)
        if s is None:
            raise VlatrimError(f"analysis scorer {name!r} has no scores for {handle.blocks_path!r}; was it run on this model?")
        if len(s) != handle.num_blocks:
            raise VlatrimError(f"analysis scorer {name!r} scores {len(s)} blocks but the model has {handle.num_blocks}")
        return name, [float(x) for x in s]

    def span_distances(self, handle: Any) -> dict[int, list[float]]:
        """``{n: [d(l, n) for l in 0..L-n]}`` from the preferred scorer whose extras hold span distances for
        this block list (the angular scorer)."""
        for name in sorted(self.info, key=lambda n: self.info[n].rank()):
            spans = (self.scorers[name].get("extras") or {}).get("spans", {})
            if isinstance(spans, dict) and spans.get(handle.blocks_path) is not None:
                return {n + 1: [float(x) for x in row] for n, row in enumerate(spans[handle.blocks_path])}
        raise VlatrimError(f"analysis file {self.path!r} has no angular span distances for {handle.blocks_path!r}; "
                           "run `vlatrim analyze` with the angular scorer")

    def _per_block(self, unit: str, handle: Any, scorer: str | None) -> dict[int, list[float]]:
        name, entry = self._pick(unit, scorer)
        scores = entry.get("scores", {})
        out = {b: scores.get(lay.path) for b, lay in enumerate(handle.layouts)}
        missing = [b for b, v in out.items() if v is None]
        if missing:
            raise VlatrimError(f"analysis scorer {name!r} has no scores for block {missing[0]} ({handle.layouts[missing[0]].path})")
        return out

    def head_scores(self, handle: Any, scorer: str | None = None) -> dict[int, list[float]]:
        """Per block, one score per query head; without ``scorer``, the preferred head scorer's."""
        return self._per_block("head", handle, scorer)

    def channel_scores(self, handle: Any, scorer: str | None = None) -> dict[int, list[float]]:
        """Per block, one score per MLP channel; without ``scorer``, the preferred channel scorer's."""
        return self._per_block("channel", handle, scorer)

    def loss_unit_names(self) -> dict[str, list[str]]:
        """Per unit of ``LOSS_UNITS``, the scorers in loss units vlatrim knows of, preferred first: those
        this file records, plus the built-in ones of ``LEGACY_METADATA`` it does not (for messages)."""
        known = {n: ScorerInfo(n, *m) for n, m in LEGACY_METADATA.items()}
        known.update(self.info)
        return {u: [i.name for i in sorted(known.values(), key=ScorerInfo.rank) if i.unit == u and i.loss_units]
                for u in LOSS_UNITS}

    def loss_unit_scores(self, handle: Any, scorer: str | None = None) -> dict[str, Any]:
        """Block, head and channel scores for a solver that compares them on one scale, taken only from
        scorers in loss units (their ``loss_units`` metadata); anything else is refused.

        Args:
            handle: the located backbone.
            scorer: the block scorer to use (``--scorer``); default: the preferred block scorer in loss units.
        Returns:
            ``{"block_scorer": name, "block": [...], "head": {b: [...]}, "channel": {b: [...]}}``.
        """
        names = self.loss_unit_names()
        accepted = {u: "/".join(n) or "none known" for u, n in names.items()}
        valid = ", ".join(f"{u}: {n}" for u, n in accepted.items())
        if scorer is not None and scorer not in names["block"]:
            raise VlatrimError(f"--scorer {scorer!r} is not in loss units; --budget-units all accepts {valid}")
        found = {}
        for unit in LOSS_UNITS:
            have = [n for n in self.ranked(unit) if self.info[n].loss_units]
            if unit == "block" and scorer is not None:
                have = [scorer] if scorer in have else []
            if not have:
                raise VlatrimError(f"--budget-units all needs {unit} scores in loss units ({accepted[unit]}) but "
                                   f"{self.path!r} has none; valid scorers: {valid}")
            found[unit] = have[0]
        name, blocks = self.block_scores(handle, found["block"])
        return {"block_scorer": name, "block": blocks,
                "head": self._per_block("head", handle, found["head"]),
                "channel": self._per_block("channel", handle, found["channel"])}

    def used_token_ids(self) -> list[int] | None:
        """Token ids the task's instructions use (from the preferred ``token`` scorer that lists them, the
        vocabulary scorer), or None if none ran."""
        for name in self.ranked("token"):
            ids = (self.scorers[name].get("extras") or {}).get("used_ids")
            if ids is not None:
                return [int(i) for i in ids]
        return None
