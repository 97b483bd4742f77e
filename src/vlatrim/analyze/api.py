"""``analyze``: from a model path and a dataset directory to ``analysis.json`` and plots."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlatrim.analyze.base import PATHWAYS, SCORERS, ScoringContext
from vlatrim.analyze.run import DEFAULT_SCORERS, pathway_summary, run_scorers
from vlatrim.errors import VlatrimError
from vlatrim.utils.io import atomic_dir, read_json, write_json_atomic
from vlatrim.utils.plugins import load_plugins


def analyze(model_path: str, data: str, out: str, scorers: Sequence[str] = DEFAULT_SCORERS, num_batches: int = 8,
            batch_size: int = 16, pathways: Sequence[str] = PATHWAYS, blocks_path: str | None = None,
            seed: int = 0, options: dict[str, dict[str, Any]] | None = None, device: str = "cpu",
            progress: bool = True, trust_remote_code: bool = False) -> dict[str, Any]:
    """Score a model's blocks / heads / channels / vocabulary on a dataset and write the results.

    Args:
        model_path: a vlatrim VLA checkpoint directory or a transformers causal-LM directory.
        data: a LeRobotDataset v3 directory (its held-out episodes are the calibration set for a VLA, its
            instructions for a text model).
        out: output directory (must not exist): ``analysis.json`` and PNG plots, written atomically.
        scorers: scorer names (``vlatrim.analyze.SCORERS``); drop-one runs first when included.
        num_batches: calibration batches.
        batch_size: samples per calibration batch.
        pathways: block lists the block scorers cover: language, vision, action (those that exist).
        blocks_path: override for the backbone block list (see ``locate_backbone``).
        seed: which held-out samples form the batches.
        options: per-scorer options, e.g. ``{"angular": {"span": 2}}``.
        device: where the model runs: cpu, cuda, cuda:N or auto (``vlatrim.utils.device.resolve_device``).
        progress: tqdm bars.
        trust_remote_code: run the modeling code a transformers model directory ships (``auto_map``);
            without it such a model is refused.

    Finished scorers are kept in ``<out>.partial/`` until the run completes, so an interrupted run
    resumes where it stopped when called again with the same arguments.

    Returns:
        The analysis.json content.
    """
    from vlatrim.analyze.calibration import calibration
    from vlatrim.families import family_of
    from vlatrim.models.adapters import describe
    from vlatrim.models.checkpoint import refuse_pickled_weights
    from vlatrim.utils.device import resolve_device

    load_plugins()  # scorers and families of installed plug-in packages
    device = str(resolve_device(device))  # "cuda" without CUDA: one line, not a traceback
    for n in scorers:
        SCORERS.get(n)
    if num_batches < 1 or batch_size < 1:
        raise VlatrimError(f"--batches {num_batches} and --batch-size {batch_size} must be >= 1")
    bad = [p for p in pathways if p not in PATHWAYS]
    if bad or not pathways:
        raise VlatrimError(f"--pathways {' '.join(bad) or '(none)'} is not valid; valid: {', '.join(PATHWAYS)}")
    # Every scorer's options, checked before any scorer runs (a bad one would otherwise fail after the others).
    instances = {n: SCORERS.get(n)(**(options or {}).get(n, {})) for n in scorers}
    if Path(out).exists():
        raise VlatrimError(f"output directory {out!r} already exists; choose a new --out or remove it")
    family = family_of(model_path)
    if why := family.refusal():
        raise VlatrimError(f"model {str(model_path)!r} cannot be analysed: {why}")
    refuse_pickled_weights(model_path, "model")
    if not any(Path(model_path).glob("*.safetensors")):
        raise VlatrimError(f"{model_path!r} has no weights; analysis needs a trained model (checkpoint or model directory)")
    model = family.load(Path(model_path), device=device, trust_remote_code=trust_remote_code).eval()
    handle = family.handle(model, blocks_path)
    have = {p: lists for p, lists in family.pathways(model, handle).items() if lists}
    present = tuple(p for p in have if p in pathways)
    if not present:
        raise VlatrimError(f"--pathways {' '.join(pathways)}: the {family.name} model has none of them; "
                           f"valid here: {', '.join(have)}")
    for n, scorer in instances.items():  # a span longer than a scored block list (angular)
        span = getattr(scorer, "span", None)
        if scorer.unit == "block" and isinstance(span, int):
            for bl in (bl for p in present for bl in have[p]):
                if span > len(bl):
                    raise VlatrimError(f"{n} span={span} (--angular-span) is longer than {bl.path} ({len(bl)} blocks); "
                                       f"valid: 1..{min(len(b) for p in present for b in have[p])}")
    cal = calibration(family, model, data, num_batches, batch_size, seed)
    ctx = ScoringContext(model=model, handle=handle, batches=cal.batches, loss=cal.loss, pathways=present,
                         instructions=cal.instructions, tokenizer=cal.tokenizer, progress=progress,
                         position_mask=lambda batch: family.position_mask(model, batch))
    for name in scorers:  # every refusal before the first scorer spends any time (and before .partial exists)
        SCORERS.get(name)(**(options or {}).get(name, {})).check(ctx)
    run_key = dict(model=str(Path(model_path).resolve()), data=str(Path(data).resolve()), batches=num_batches,
                   batch_size=batch_size, pathways=present, blocks_path=blocks_path, seed=seed,
                   options=options or {})
    partial = Path(f"{out}.partial")
    key = hashlib.sha256(json.dumps(run_key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    done = _resume(partial, key)
    results: dict[str, Any] = {"scorers": {}}
    for name in sorted(scorers, key=lambda n: n != "drop_one"):
        if name in done:
            results["scorers"][name] = done[name]
            continue
        part = run_scorers(ctx, [name], options, precomputed=results["scorers"])
        results["scorers"][name] = part["scorers"][name]
        write_json_atomic(partial / f"{name}.json", part["scorers"][name])
    results["pathways"] = pathway_summary(ctx, results["scorers"])
    analysis = {
        "model": {"path": str(model_path), "family": family.name, "class": type(model).__name__,
                  **{k: v for k, v in describe(handle).items() if k != "model_class"}},
        "calibration": cal.description,
        "loss": {"name": cal.loss.name, "likelihood": cal.loss.likelihood, "terms_per_sample": cal.loss.terms_per_sample},
        "pathways_scored": list(present),
        "device": device if device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, "
                                                 f"{torch.get_num_threads()} threads)",
        **results,
    }
    from vlatrim.analyze.plots import write_plots

    with atomic_dir(out) as tmp:
        analysis["plots"] = write_plots(analysis, handle.blocks_path, tmp)
        write_json_atomic(tmp / "analysis.json", analysis)
    shutil.rmtree(partial, ignore_errors=True)
    return analysis


def _resume(partial: Path, key: str) -> dict[str, Any]:
    """Scorer results a previous interrupted run with the same arguments left in ``partial``."""
    stamp = partial / "run_key.txt"
    if partial.is_dir() and stamp.is_file() and stamp.read_text().strip() == key:
        return {p.stem: read_json(p) for p in partial.glob("*.json")}
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    stamp.write_text(key + "\n")
    return {}
