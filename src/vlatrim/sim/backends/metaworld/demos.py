"""Scripted-expert demonstrations in Meta-World, written as a LeRobotDataset v3.0 directory
(``vlatrim data metaworld``; the dataset format itself is ``vlatrim.data.lerobot``).

Each attempt ``(task, k)`` rolls Meta-World's scripted expert from the start configuration
``episode_start("demo", seed, k)`` until success or ``max_steps``. Frame t stores the upright camera
image and 4-d state *before* action t, the clipped action t, and ``next.success`` after it. Failed
attempts are dropped and counted; more attempts are made until a task has ``episodes_per_task``
successes or ``max_attempts_per_task`` attempts. The dataset keeps, per task, the successful attempts
with the lowest k, so the result depends only on the settings, never on worker timing.

Resuming: the output directory holds ``.progress/`` while a run is unfinished (``settings.json``, an
append-only ``attempts.jsonl`` journal, and one staged parquet per successful attempt). Running again
with the same settings resumes from the journal; different settings are refused. The finished
dataset has no ``.progress/`` and is never overwritten.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlatrim.data.lerobot import INFO_PATH, LeRobotWriter, encode_png, metaworld_features
from vlatrim.errors import VlatrimError
from vlatrim.sim.backends.metaworld.instructions import instruction_for
from vlatrim.sim.backends.metaworld.tasks import parse_tasks
from vlatrim.sim.procs import exit_with_parent
from vlatrim.utils.io import atomic_path, read_json, write_json_atomic
from vlatrim.utils.rundir import check_same_settings

log = logging.getLogger(__name__)

PROGRESS_DIR = ".progress"
FORMAT_VERSION = 1  # of the .progress layout; part of the settings a resume must match
REPORT_PATH = "meta/vlatrim_generation.json"


@dataclass
class DemoConfig:
    """Settings of one demonstration run (all but ``workers`` decide the dataset's content)."""

    tasks: list[str]
    """Meta-World task names (already expanded, e.g. by ``parse_tasks``)."""
    episodes_per_task: int
    """Successful expert episodes to keep per task."""
    image_size: int = 96
    """Side of the square camera image, pixels."""
    seed: int = 0
    """Run seed: picks the (demo-split) start configurations."""
    camera: str = "corner"
    """Meta-World camera."""
    max_steps: int = 500
    """Step limit per episode (Meta-World's own limit is 500)."""
    max_attempts_per_task: int | None = None
    """Give up on a task after this many attempts; default 2 * episodes_per_task + 10."""
    workers: int = 1
    """Worker processes rolling out episodes (does not change the result)."""
    video: bool = False
    """Store the camera as LeRobot's video dtype (MP4, H.264) instead of PNGs in the parquet."""
    video_pix_fmt: str = "yuv444p"
    """With ``video``: ``yuv444p`` (full colour resolution, closest to the frames; not playable in web
    browsers) or ``yuv420p`` (browser-playable, ~2x smaller, ~2.5x the pixel error)."""

    def __post_init__(self) -> None:
        self.tasks = parse_tasks(self.tasks)
        if self.episodes_per_task < 1:
            raise VlatrimError(f"--episodes-per-task must be >= 1, got {self.episodes_per_task}")
        from vlatrim.sim.backends.metaworld import MetaWorldBackend

        if self.camera not in MetaWorldBackend.cameras:  # before any worker starts or --out is touched
            raise VlatrimError(f"--camera {self.camera!r} is not a Meta-World camera; valid: "
                               f"{', '.join(MetaWorldBackend.cameras)}")
        if not 8 <= self.image_size <= 1024:
            raise VlatrimError(f"--image-size must be in 8..1024 px, got {self.image_size}")
        if self.seed < 0:
            raise VlatrimError(f"--seed must be >= 0, got {self.seed}")
        if not 1 <= self.max_steps <= 500:
            raise VlatrimError(f"--max-steps must be in 1..500 (Meta-World's limit), got {self.max_steps}")
        if self.max_attempts_per_task is None:
            self.max_attempts_per_task = 2 * self.episodes_per_task + 10
        if self.max_attempts_per_task < self.episodes_per_task:
            raise VlatrimError(f"max attempts per task ({self.max_attempts_per_task}) must be >= --episodes-per-task ({self.episodes_per_task})")
        if self.workers < 1:
            raise VlatrimError(f"--workers must be >= 1, got {self.workers}")
        if self.video_pix_fmt not in ("yuv444p", "yuv420p"):
            raise VlatrimError(f"--video-pix-fmt {self.video_pix_fmt!r} is not valid; valid: yuv444p, yuv420p")

    def content_settings(self) -> dict[str, Any]:
        """The settings that decide the dataset (what a resumed run must match)."""
        d = asdict(self)
        d.pop("workers")
        if not self.video:  # settings added with video datasets: absent from image runs (as before them)
            d.pop("video")
            d.pop("video_pix_fmt")
        d["format"] = FORMAT_VERSION
        return d


@dataclass
class Attempt:
    """Outcome of one expert rollout."""

    task: str
    k: int  # attempt index within the task (start = episode_start("demo", seed, k))
    success: bool
    steps: int
    start: tuple[int, int] = (0, 0)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class DemoReport:
    """What a finished run produced (also written to ``meta/vlatrim_generation.json``)."""

    settings: dict[str, Any]
    episodes: int = 0
    frames: int = 0
    per_task: dict[str, dict[str, int]] = field(default_factory=dict)  # kept / attempts / failed
    failed: int = 0
    attempts: int = 0
    rollout_seconds: float = 0.0  # wall time of the rollouts in this invocation
    frames_per_second: float = 0.0  # frames rolled out (incl. dropped) per wall second, this invocation
    resumed_attempts: int = 0  # attempts taken from a previous, interrupted invocation


# ------------------------------------------------------------------------------------------ worker
_WORKER_ENVS: dict[tuple, Any] = {}  # per worker process: its envs, reused across attempts


def _worker_env(task: str, image_size: int, camera: str) -> Any:
    from vlatrim.sim.backends.metaworld.env import MetaWorldEnv

    key = (task, image_size, camera)
    env = _WORKER_ENVS.get(key)
    if env is None:
        if len(_WORKER_ENVS) >= 2:  # tasks arrive in order; keep memory and GL contexts bounded
            _WORKER_ENVS.pop(next(iter(_WORKER_ENVS))).close()
        first = not _WORKER_ENVS
        env = _WORKER_ENVS[key] = MetaWorldEnv(task, image_size=image_size, camera=camera)
        if first:
            import atexit

            # Registered after MuJoCo's own EGL clean-up (made with the first renderer), so it runs
            # before it: contexts must be freed while the display still exists.
            atexit.register(_close_worker_envs)
    return env


def _close_worker_envs() -> None:
    while _WORKER_ENVS:
        _WORKER_ENVS.popitem()[1].close()


def rollout_expert(task: str, k: int, cfg: dict[str, Any], stage_dir: str | None) -> Attempt:
    """Roll one expert episode; stage it as parquet under ``stage_dir`` when it succeeds."""
    from vlatrim.sim.backends.metaworld.env import episode_start
    from vlatrim.sim.backends.metaworld.policies import ExpertPolicy

    t0 = time.perf_counter()
    start = episode_start("demo", cfg["seed"], k)
    try:
        env = _worker_env(task, cfg["image_size"], cfg["camera"])
        expert = ExpertPolicy()
        step = env.reset(start)
        images, states, actions, success = [], [], [], []
        for _ in range(cfg["max_steps"]):
            action = expert.predict({"raw": step.raw[None], "task": [task], "state": step.state[None]})[0, 0]
            images.append(encode_png(step.image))
            states.append(step.state)
            actions.append(action)
            step = env.step(action)
            success.append(step.success)
            if step.success:
                break
    except Exception as e:  # an env crash is a failed attempt, not the end of the run
        log.exception("attempt %s/%d crashed", task, k)
        return Attempt(task, k, False, 0, start, f"{type(e).__name__}: {e}", time.perf_counter() - t0)
    ok = bool(success[-1])
    if ok and stage_dir is not None:
        table = pa.table(
            {
                "image": pa.array(images, pa.binary()),
                "state": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(states, np.float32).reshape(-1)), 4),
                "action": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(actions, np.float32).reshape(-1)), 4),
                "success": pa.array(success, pa.bool_()),
            }
        )
        with atomic_path(_stage_path(Path(stage_dir), task, k)) as tmp:
            pq.write_table(table, tmp, compression="none")  # PNGs do not compress further
    return Attempt(task, k, ok, len(actions), start, None, time.perf_counter() - t0)


def _stage_path(stage_dir: Path, task: str, k: int) -> Path:
    return stage_dir / task / f"attempt-{k:05d}.parquet"


# --------------------------------------------------------------------------------------- main side
def _prepare_out(out: Path, settings: dict[str, Any]) -> bool:
    """Check ``out``: returns True when resuming an unfinished run of the same settings."""
    progress = out / PROGRESS_DIR
    if out.exists() and not out.is_dir():
        raise VlatrimError(f"--out {str(out)!r} exists and is not a directory")
    if (out / INFO_PATH).exists() and not progress.exists():
        raise VlatrimError(f"--out {str(out)!r} already holds a finished dataset; choose a new directory or remove it")
    if progress.is_dir():
        old = read_json(progress / "settings.json", "run settings") if (progress / "settings.json").exists() else None
        check_same_settings(old, settings, f"the unfinished dataset in --out {str(out)!r}",
                            "rerun with the same settings to resume, or choose a new directory")
        return True
    if out.is_dir() and any(out.iterdir()):
        raise VlatrimError(f"--out {str(out)!r} is not empty and is not an unfinished vlatrim run; choose a new directory or remove it")
    try:
        progress.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VlatrimError(f"--out {str(out)!r} cannot be created ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise VlatrimError(f"--out {str(out)!r} is not writable")
    write_json_atomic(progress / "settings.json", settings)
    return False


def _read_journal(path: Path, stage_dir: Path) -> dict[tuple[str, int], Attempt]:
    done: dict[tuple[str, int], Attempt] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the interruption: that attempt is simply redone
        a = Attempt(**{**d, "start": tuple(d["start"])})
        if a.success and not _stage_path(stage_dir, a.task, a.k).exists():
            continue  # staged file lost: redo
        done[(a.task, a.k)] = a
    return done


class _Journal:
    def __init__(self, path: Path) -> None:
        self._f = open(path, "a")

    def add(self, a: Attempt) -> None:
        self._f.write(json.dumps(asdict(a)) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _needed(task: str, n: int, limit: int, done: dict[tuple[str, int], Attempt], pending: set[tuple[str, int]]) -> list[int]:
    """Attempt indices to launch now for ``task``: enough to reach ``n`` successes if all succeed."""
    tried = sorted(k for (t, k) in list(done) + list(pending) if t == task)
    ok = sum(1 for (t, k), a in done.items() if t == task and a.success)
    in_flight = sum(1 for (t, _) in pending if t == task)
    want = n - ok - in_flight
    nxt = (tried[-1] + 1) if tried else 0
    # Fill holes first (a resumed run may miss attempts below the highest index).
    holes = [k for k in range(nxt) if k not in tried]
    out = holes[: max(want, 0)]
    while len(out) < want and nxt < limit:
        out.append(nxt)
        nxt += 1
    return out


def generate_demos(cfg: DemoConfig, out: str | os.PathLike, progress: bool = True) -> DemoReport:
    """Generate scripted-expert demonstrations into a LeRobotDataset v3.0 directory ``out``.

    Args:
        cfg: what to generate.
        out: output directory: absent/empty (new run), or an unfinished run of the same settings
            (resumed); anything else is refused.
        progress: show a tqdm bar of attempts.

    Returns:
        Counts, failures and throughput (also saved as ``meta/vlatrim_generation.json``).
    """
    from tqdm.auto import tqdm

    from vlatrim.sim.render import ensure_gl_backend

    out = Path(out)
    settings = cfg.content_settings()
    resumed = _prepare_out(out, settings)
    ensure_gl_backend()
    stage_dir = out / PROGRESS_DIR / "episodes"
    journal_path = out / PROGRESS_DIR / "attempts.jsonl"
    done = _read_journal(journal_path, stage_dir)
    n_resumed = len(done)
    if resumed:
        log.info("resuming %s: %d attempts already done", out, n_resumed)
    n, limit = cfg.episodes_per_task, cfg.max_attempts_per_task
    wcfg = {"seed": cfg.seed, "image_size": cfg.image_size, "camera": cfg.camera, "max_steps": cfg.max_steps}

    journal = _Journal(journal_path)
    pending: dict[Future, tuple[str, int]] = {}
    total = n * len(cfg.tasks)
    kept_so_far = sum(min(n, sum(1 for (t, _), a in done.items() if t == task and a.success)) for task in cfg.tasks)
    bar = tqdm(total=total, initial=kept_so_far, desc="expert demos", unit="ep", disable=not progress)
    frames_rolled, t0 = 0, time.perf_counter()
    ctx = mp.get_context("spawn")  # no fork after MuJoCo/GL state exists in the parent
    try:
        with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:

            def launch() -> None:
                # Keep every worker busy, feeding tasks in order so workers reuse their envs.
                for task in cfg.tasks:
                    if len(pending) >= 2 * cfg.workers:
                        return
                    for k in _needed(task, n, limit, done, set(pending.values())):
                        pending[pool.submit(rollout_expert, task, k, wcfg, str(stage_dir))] = (task, k)
                        if len(pending) >= 2 * cfg.workers:
                            return

            launch()
            while pending:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    task, k = pending.pop(fut)
                    a = fut.result()
                    done[(task, k)] = a
                    journal.add(a)
                    frames_rolled += a.steps
                    if a.error:
                        tqdm.write(f"vlatrim: {task} attempt {k} crashed: {a.error}")
                    ok = sum(1 for (t, _), b in done.items() if t == task and b.success)
                    if a.success and ok <= n:
                        bar.update(1)
                    bar.set_postfix(failed=sum(1 for b in done.values() if not b.success))
                launch()
    finally:
        journal.close()
        bar.close()
    seconds = time.perf_counter() - t0

    report = DemoReport(settings=settings, rollout_seconds=round(seconds, 3), resumed_attempts=n_resumed)
    report.frames_per_second = round(frames_rolled / seconds, 2) if seconds > 0 and frames_rolled else 0.0
    keep: list[tuple[str, int]] = []
    for task in cfg.tasks:
        mine = sorted(((k, a) for (t, k), a in done.items() if t == task), key=lambda x: x[0])
        ok_ks = [k for k, a in mine if a.success][:n]
        # Count only attempts up to the last kept one (later ones could exist after a resume).
        considered = [a for k, a in mine if not ok_ks or k <= ok_ks[-1]] if len(ok_ks) == n else [a for _, a in mine]
        report.per_task[task] = {
            "kept": len(ok_ks),
            "attempts": len(considered),
            "failed": sum(1 for a in considered if not a.success),
            "crashed": sum(1 for a in considered if a.error),
        }
        keep += [(task, k) for k in ok_ks]
    report.failed = sum(v["failed"] for v in report.per_task.values())
    report.attempts = sum(v["attempts"] for v in report.per_task.values())
    if not keep:
        raise VlatrimError(f"the expert succeeded in no episode of {', '.join(cfg.tasks)}; nothing to write (the unfinished run stays in {str(out)!r})")
    short = {t: v["kept"] for t, v in report.per_task.items() if v["kept"] < n}
    if short:
        log.warning("fewer than %d successful episodes for: %s", n, short)
    _assemble(out, cfg, keep, stage_dir, report)
    return report


def _assemble(out: Path, cfg: DemoConfig, keep: list[tuple[str, int]], stage_dir: Path, report: DemoReport) -> None:
    """Write the staged episodes as one LeRobot dataset, move it into ``out``, drop ``.progress``."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    build = out / PROGRESS_DIR / "build"
    if build.exists():
        shutil.rmtree(build)
    # Meta-World's control rate: 80 Hz in v3 (frame_skip 5 x 2.5 ms), a class attribute.
    fps = int(ALL_V3_ENVIRONMENTS[cfg.tasks[0]].metadata.get("render_fps", 80))
    key = f"observation.images.{cfg.camera}"
    with LeRobotWriter(build, metaworld_features(cfg.image_size, cfg.camera, video=cfg.video), fps=fps, robot_type="sawyer",
                       video_pix_fmt=cfg.video_pix_fmt) as w:
        for task, k in keep:
            t = pq.read_table(_stage_path(stage_dir, task, k))
            n = t.num_rows
            w.add_episode(
                {
                    key: t["image"].to_pylist(),
                    "observation.state": t["state"].combine_chunks().flatten().to_numpy().reshape(n, 4),
                    "action": t["action"].combine_chunks().flatten().to_numpy().reshape(n, 4),
                    "next.success": t["success"].to_numpy(zero_copy_only=False),
                },
                instruction_for(task),
            )
            report.episodes += 1
            report.frames += n
    write_json_atomic(build / REPORT_PATH, {**asdict(report), "task_of_instruction": {instruction_for(t): t for t in cfg.tasks}})
    for part in ("data", "videos", "meta"):  # meta last: meta/info.json marks a complete dataset
        if not (build / part).exists():
            continue  # no videos/ without --video
        if (out / part).exists():
            shutil.rmtree(out / part)
        os.replace(build / part, out / part)
    shutil.rmtree(out / PROGRESS_DIR)
