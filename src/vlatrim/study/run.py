"""The drop-then-recovery sweep, stage by stage, through the library (never the CLI).

    demos -> base (train) -> analysis -> for each scorer x block count:
        variants/<scorer>-drop<k>/pruned -> eval_dropped -> recovered-<method> -> eval_recovered-<method>
    control/recovered-<method> -> eval_recovered-<method>   (the unpruned base, same fine-tuning budget)
    eval_base, bench (base and every pruned architecture)
    -> study.json, plots, report.html

Every stage lives in its own directory and is skipped when complete (``vlatrim.study.store``), so a
study interrupted anywhere continues with ``resume=True``. Stages whose library is missing from the
build (``vlatrim.study.backends``) are recorded as unavailable; no number stands in for them.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from vlatrim.errors import VlatrimError
from vlatrim.study import backends
from vlatrim.study.backends import StageUnavailable
from vlatrim.study.config import StudyConfig
from vlatrim.study.store import StageLog, run_stage
from vlatrim.utils.device import resolve_device
from vlatrim.utils.hardware import stage_threads
from vlatrim.utils.io import ensure_empty_dir, read_json, write_json_atomic
from vlatrim.utils.lock import run_dir_lock
from vlatrim.utils.rundir import check_same_inputs, check_same_settings, input_fingerprints

log = logging.getLogger(__name__)

STUDY_SCHEMA_VERSION = 1
CONFIG_FILE = "study_config.json"
STUDY_FILE = "study.json"


def _recorded(cfg: StudyConfig, data: str | None, target_data: str | None) -> dict[str, Any]:
    rec = {"config": cfg.to_dict(), "data": str(Path(data).resolve()) if data else None}
    if target_data:
        rec["target_data"] = str(Path(target_data).resolve())
    return rec


def _is_default(f: Any, value: Any) -> bool:
    import dataclasses

    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return (list(default) if isinstance(default, tuple) else default) == value


def _check_resume(out: Path, cfg: StudyConfig, data: str | None, target_data: str | None,
                  inputs: dict[str, str]) -> None:
    saved = read_json(out / CONFIG_FILE, what="study config") if (out / CONFIG_FILE).is_file() else None
    if saved is None:
        raise VlatrimError(f"cannot resume: {str(out)!r} holds no {CONFIG_FILE} (not a vlatrim study)")
    what, remedy = f"the study in {str(out)!r}", "use the same flags, --data and --target-data, or a new --out"
    wanted = _recorded(cfg, data, target_data)
    recorded = {k: saved.get(k) or None for k in wanted}
    if isinstance(recorded.get("config"), dict):
        # A setting added after the study was made is absent from its record: it ran with the default.
        defaults = StudyConfig.__dataclass_fields__
        recorded["config"] = {**{k: wanted["config"][k] for k in wanted["config"] if k not in recorded["config"]
                                 and _is_default(defaults[k], wanted["config"][k])}, **recorded["config"]}
    check_same_settings(recorded, wanted, what, remedy)
    check_same_inputs(saved.get("inputs"), inputs, what, remedy)


def _start_again_if_nothing_to_resume(run_dir: Path) -> bool:
    """Whether the training run in a stage's ``run_dir`` can resume. A run killed before its first
    checkpoint holds its settings but nothing to resume from: it is emptied, to start again."""
    from vlatrim.train.trainer import complete_checkpoints

    if not (run_dir / "run_config.json").is_file():
        return False
    if complete_checkpoints(run_dir):
        return True
    log.warning("%s holds no complete checkpoint: starting that stage again", run_dir)
    for p in run_dir.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return False


class _Evaluator:
    """Offline held-out action error (always) and closed-loop success (when the build has it)."""

    def __init__(self, cfg: StudyConfig, dataset: Path, val_fraction: float, image_size: int, device: str,
                 progress: bool, tasks: tuple[str, ...]) -> None:
        self.cfg, self.dataset, self.val_fraction, self.device = cfg, dataset, val_fraction, device
        self.tasks = tasks  # evaluated in closed loop: the study's tasks, or the targets under transfer
        self.image_size = image_size  # the dataset's (the model's input), which --data may set, not the preset
        self.progress = progress
        self._frames = None

    def frames(self) -> Any:
        if self._frames is None:
            from vlatrim.train.data import read_demo_frames

            self._frames = read_demo_frames(self.dataset)
        return self._frames

    def __call__(self, model_dir: Path, work: Path) -> dict[str, Any]:
        from vlatrim.families import family_of
        from vlatrim.train.data import ChunkDataset, split_episodes
        from vlatrim.train.evaluate import offline_action_error

        frames = self.frames()
        _, val_eps = split_episodes(frames, self.val_fraction)
        model = family_of(model_dir).load(model_dir, device=self.device).eval()  # float or quantized
        offline = None
        if val_eps:
            offline = offline_action_error(model, ChunkDataset(frames, val_eps, model.config.chunk_size, model.tokenize))
            offline = {k: offline[k] for k in ("l1", "mse", "l1_per_dim", "samples", "units")}
        del model
        res: dict[str, Any] = {"offline": offline, "closed_loop": None, "closed_loop_unavailable": None}
        if not self.cfg.closed_loop:
            res["closed_loop_unavailable"] = "closed-loop evaluation switched off (closed_loop=False)"
            return res
        try:
            res["closed_loop"] = backends.closed_loop_eval(
                model_dir, list(self.tasks), self.cfg.eval_episodes, self.cfg.eval_max_steps, self.image_size,
                self.cfg.seed, self.cfg.eval_workers, self.device, work / "closed_loop", self.progress)
        except StageUnavailable as e:
            res["closed_loop_unavailable"] = str(e)
        return res


def run_study(cfg: StudyConfig, out: str | Path, data: str | None = None, resume: bool = False,
              progress: bool = True, target_data: str | None = None, threads: int | str | None = None) -> dict[str, Any]:
    """Run (or continue) a drop-then-recovery study and write study.json, plots and report.html.

    Args:
        cfg: the study's settings.
        out: the study directory: new or empty, or a previous run's with ``resume``.
        data: an existing LeRobot v3 dataset to use instead of generating demonstrations (the
            pretraining data under the transfer protocol).
        target_data: transfer protocol: an existing dataset of the target tasks instead of generating it.
        resume: continue the study in ``out``; settings (and the content fingerprints of ``--data`` and
            ``--target-data``) must equal the recorded ones. A stage killed before its first checkpoint
            starts again.
        progress: tqdm bars.
        threads: torch CPU threads for each stage: ``"auto"`` chooses them from the cores free as each
            stage starts (what ``vlatrim study`` does unless given ``--threads``), an int fixes them, None
            leaves torch's setting alone. Not a study setting: results do not depend on it.
    Returns:
        The study.json content.

    Raises:
        VlatrimError: another process writes ``out`` (its pid named), or a resume whose settings or
            ``--data`` contents (``inputs.data``) differ from the recorded ones.
    """
    out = Path(out)
    for flag, d in (("--data", data), ("--target-data", target_data)):
        if d is not None and not (Path(d) / "meta" / "info.json").is_file():
            raise VlatrimError(f"{flag} {d!r} is not a LeRobot v3 dataset directory (no meta/info.json)")
    if target_data is not None and cfg.protocol != "transfer":
        raise VlatrimError("--target-data is used by --protocol transfer only")
    on_start = stage_threads(threads)
    with run_dir_lock(out):  # one writer: a second study into the same --out is refused, naming this one's pid
        return _run_study(cfg, out, data, resume, progress, target_data, on_start)


def _run_study(cfg: StudyConfig, out: Path, data: str | None, resume: bool, progress: bool,
               target_data: str | None, on_start: Any = None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    # generated demonstrations live in the study itself
    inputs = input_fingerprints(data=data, target_data=target_data)  # None: left out
    if resume:
        _check_resume(out, cfg, data, target_data, inputs)
    else:
        if out.is_dir() and any(out.iterdir()):
            raise VlatrimError(f"--out {str(out)!r} is not empty; choose a new directory, or add --resume to continue it")
        ensure_empty_dir(out)
        write_json_atomic(out / CONFIG_FILE, {**_recorded(cfg, data, target_data), "inputs": inputs})
    device = str(resolve_device(cfg.device))
    slog = StageLog(on_start=on_start)
    unavailable: dict[str, str] = {}
    results: dict[str, Any] = {}

    # 1. demonstrations
    if data is not None:
        dataset = Path(data).resolve()
        results["data"] = {"path": str(dataset), "generated": False}
    else:
        try:
            gen = run_stage(out, "demos", lambda d: backends.generate_demos(
                list(cfg.tasks), cfg.episodes_per_task, cfg.image_size, cfg.data_seed, d, progress), slog,
                fresh_partial=False)
        except StageUnavailable as e:
            raise VlatrimError(f"{e}; pass --data with a LeRobot v3 dataset instead") from None
        dataset = (out / "demos").resolve()
        results["data"] = {"path": str(dataset), "generated": True, **gen}

    # 2. the base model
    def train(d: Path) -> dict[str, Any]:
        from vlatrim.train.run import train_reference

        s = train_reference(dataset, d, preset=cfg.train_preset, resume=_start_again_if_nothing_to_resume(d),
                            backbone=cfg.backbone, steps=cfg.train_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                            seed=cfg.seed, device=device)
        shutil.rmtree(d / "checkpoints", ignore_errors=True)  # resumable state; the final model is in d
        held = s.get("held_out") or {}
        return {"steps": s["steps"], "steps_per_s": s["steps_per_s"], "held_out_l1": held.get("l1"),
                "val_fraction": s["settings"]["val_fraction"], "parameters": s["model"]["parameters"],
                "dataset": {k: s["dataset"][k] for k in ("frames", "image_size", "train_episodes", "held_out_episodes", "tasks")}}

    base_sum = run_stage(out, "base", train, slog, fresh_partial=False)
    base = out / "base"
    # Fine-tuning (recovery and the unpruned control) runs in the precision the base trained in: the
    # same numerics for every model of the study (the quick preset trains in bf16 where the CPU has it).
    precision = (read_json(base / "train.json", "the base's training summary").get("mixed_precision")
                 if (base / "train.json").is_file() else None)
    results["data"].update(base_sum["dataset"])
    pretraining = dataset

    # 2b. transfer protocol: demonstrations of the target tasks; everything below works on them
    if cfg.protocol == "transfer":
        if target_data is not None:
            dataset = Path(target_data).resolve()
            results["target_data"] = {"path": str(dataset), "generated": False}
        else:
            try:
                gen = run_stage(out, "target_demos", lambda d: backends.generate_demos(
                    list(cfg.target_tasks), cfg.episodes_per_task, cfg.image_size, cfg.data_seed, d, progress), slog,
                    fresh_partial=False)
            except StageUnavailable as e:
                raise VlatrimError(f"{e}; pass --target-data with a LeRobot v3 dataset instead") from None
            dataset = (out / "target_demos").resolve()
            results["target_data"] = {"path": str(dataset), "generated": True, **gen}
    results["protocol"] = {"name": cfg.protocol, "pretraining_data": str(pretraining),
                           "work_data": str(dataset), "evaluated_tasks": list(cfg.work_tasks())}

    # 3. importance analysis of the base model
    def analysis(d: Path) -> dict[str, Any]:
        from vlatrim.analyze.api import analyze

        a = analyze(str(base), str(dataset), str(d), scorers=cfg.analysis_scorers, num_batches=cfg.analysis_batches,
                    batch_size=cfg.analysis_batch_size, pathways=("language",), seed=cfg.seed, device=device,
                    progress=progress)
        path = a["model"]["backbone"]["blocks_path"] if "backbone" in a["model"] else None
        scorers = {}
        for name, r in a["scorers"].items():
            path = path or next(iter(r["scores"]))
            scorers[name] = {"per_block": r["scores"].get(path), "seconds": r["seconds"],
                             "spearman_vs_drop_one": (r.get("spearman_vs_drop_one") or {}).get(path)}
        return {"blocks_path": path, "num_blocks": len(next(iter(scorers.values()))["per_block"]), "scorers": scorers}

    ana = run_stage(out, "analysis", analysis, slog)
    n_blocks = ana["num_blocks"]
    counts = cfg.block_counts(n_blocks)

    evaluator = _Evaluator(cfg, dataset, base_sum["val_fraction"], base_sum["dataset"]["image_size"], device, progress,
                           cfg.work_tasks())
    recover_ok = True

    def eval_stage(name: str, model_dir: Path) -> dict[str, Any]:
        return run_stage(out, name, lambda d: evaluator(model_dir, d), slog)

    def recover_stage(name: str, model_dir: Path, method: str, steps: int) -> dict[str, Any] | None:
        nonlocal recover_ok
        if not recover_ok:
            return None

        def fn(d: Path) -> dict[str, Any]:
            _start_again_if_nothing_to_resume(d)  # backends.recover resumes when run_config.json is left
            rec = backends.recover(model_dir, dataset, d, method=method, steps=steps,
                                   batch_size=cfg.batch_size, lr=cfg.recover_lr, seed=cfg.seed, device=device,
                                   teacher=base, val_fraction=base_sum["val_fraction"], mixed_precision=precision)
            shutil.rmtree(d / "checkpoints", ignore_errors=True)  # resumable state; the model is in d
            return rec
        try:
            return run_stage(out, name, fn, slog, fresh_partial=False)
        except StageUnavailable as e:
            recover_ok = False
            unavailable["recover"] = str(e)
            return None

    def quantize_stage(v: dict[str, Any], scheme: str) -> dict[str, Any]:
        """The quantized copy of variant ``v`` (stage quantized/SCHEME/NAME) and its evaluation."""
        from vlatrim.families.quantized import quantize_checkpoint

        qdir = f"quantized/{scheme}/{v['name']}"
        rep = run_stage(out, f"{qdir}/model", lambda d: quantize_checkpoint(v["path"], scheme, d / "checkpoint",
                                                                            device=device), slog)
        path = out / qdir / "model" / "checkpoint"
        keep = ("scorer", "method", "removed", "blocks_kept", "kept_blocks", "budget_fraction", "recover")
        return {**{k: v[k] for k in keep if k in v}, "name": f"{v['name']}+{scheme}", "kind": "quantized",
                "quantized_kind": v["kind"], "quantized_from": v["name"], "scheme": scheme, "path": str(path),
                "quantize": {"bytes": rep["bytes"], "file_bytes": rep["file_bytes"], "modules": rep["modules_quantized"]},
                "bench_of": f"{v.get('bench_of', v['name'])}+{scheme}", "eval": eval_stage(f"{qdir}/eval", path)}

    variants: list[dict[str, Any]] = []
    variants.append({"name": "base", "kind": "base", "path": str(base), "blocks_kept": n_blocks,
                     "kept_blocks": list(range(n_blocks)), "removed": 0, "eval": eval_stage("base_eval", base)})
    budgets = cfg.recovery_budgets()
    for method in cfg.methods:
        for suffix, frac, steps in budgets:
            rec = recover_stage(f"control/recovered-{method}{suffix}", base, method, steps)
            if rec is not None:
                p = out / "control" / f"recovered-{method}{suffix}"
                variants.append({"name": f"control-{method}{suffix}", "kind": "control", "method": method,
                                 "path": str(p), "blocks_kept": n_blocks, "kept_blocks": list(range(n_blocks)),
                                 "removed": 0, "budget_fraction": frac, "recover": _recover_summary(rec),
                                 "bench_of": "base", "eval": eval_stage(f"control/eval_recovered-{method}{suffix}", p)})
    sweep = [(s, k) for s in cfg.scorers for k in counts]
    for scorer, k in tqdm(sweep, desc="study sweep", unit="variant", disable=not progress):
        vname = f"{scorer}-drop{k}"
        vdir = f"variants/{vname}"
        pr = run_stage(out, f"{vdir}/pruned", lambda d, s=scorer, c=k: _prune(base, out / "analysis" / "analysis.json", s, c, d), slog)
        pdir = out / vdir / "pruned"
        common = {"scorer": scorer, "removed": k, "blocks_kept": n_blocks - k, "kept_blocks": pr["kept_blocks"]}
        variants.append({"name": vname, "kind": "dropped", "path": str(pdir), **common, "prune": pr,
                         "eval": eval_stage(f"{vdir}/eval_dropped", pdir)})
        for method in cfg.methods:
            for suffix, frac, steps in budgets:
                rec = recover_stage(f"{vdir}/recovered-{method}{suffix}", pdir, method, steps)
                if rec is None:
                    continue
                rdir = out / vdir / f"recovered-{method}{suffix}"
                variants.append({"name": f"{vname}-{method}{suffix}", "kind": "recovered", "method": method,
                                 "path": str(rdir), **common, "budget_fraction": frac, "recover": _recover_summary(rec),
                                 "bench_of": vname, "eval": eval_stage(f"{vdir}/eval_recovered-{method}{suffix}", rdir)})

    for scheme in cfg.quantize:
        variants += [quantize_stage(v, scheme) for v in list(variants) if v["kind"] != "quantized"]

    # Every pruned architecture once (float and quantized): recovered models keep their pruned model's shapes.
    bench_models = [v for v in variants if v["kind"] in ("base", "dropped")
                    or (v["kind"] == "quantized" and v["quantized_kind"] in ("base", "dropped"))]

    def bench(d: Path) -> dict[str, Any]:
        from vlatrim.bench.run import run_bench

        res = run_bench([v["path"] for v in bench_models], d, device=device, batch_size=cfg.bench_batch_size,
                        repeats=cfg.bench_repeats, warmup=2, progress=progress)
        return {**res, "variant_names": [v["name"] for v in bench_models]}  # paths change if the study moves

    bres = run_stage(out, "bench", bench, slog)
    from vlatrim.study.results import assemble

    study = assemble(cfg, out, results, ana, variants, bres, slog, unavailable, device, schema=STUDY_SCHEMA_VERSION)
    from vlatrim.study.plots import write_plots
    from vlatrim.study.report import write_report

    study["plots"] = write_plots(study, out)
    study["report"] = "report.html"
    write_json_atomic(out / STUDY_FILE, study)
    write_report(study, out)
    return study


def _recover_summary(rec: dict[str, Any]) -> dict[str, Any]:
    keep = ("method", "steps", "budget", "params", "final_log")
    out = {k: rec[k] for k in keep if k in rec}
    if rec.get("held_out"):
        out["held_out_l1"] = rec["held_out"].get("l1")
    return out


def _prune(base: Path, analysis: Path, scorer: str, count: int, out: Path) -> dict[str, Any]:
    from vlatrim.prune.api import PruneRequest, execute, load_for_pruning, make_plan

    req = PruneRequest(scores=str(analysis), scorer=scorer, count=count)
    model, handle, model_dir = load_for_pruning(base)
    plan, before = make_plan(req, model, handle, model_dir)
    rep = execute(req, model, handle, plan, before, out, model_dir)
    return {"kept_blocks": rep["kept_blocks"], "dropped_blocks": rep["plan"]["drop_blocks"],
            "params": rep["params"], "scorer": rep["plan"]["notes"].get("block_scorer", scorer)}


__all__ = ["run_study", "STUDY_FILE", "STUDY_SCHEMA_VERSION"]
