"""Closed-loop evaluation over a simulator backend: W worker processes, batched policy inference here.

``Evaluator(backend, cfg)`` runs any registered ``SimBackend`` (``vlatrim.sim.backends``); nothing
here knows a particular simulator. Each worker process (``vlatrim.sim.workers``) runs S episodes at
a time (``envs_per_worker``), one per *slot*, each slot with its own env. The main process serves
whatever is ready: it files the observations that have arrived, calls ``policy.predict`` once on
every slot that waits for an action (B <= W x S), and sends each slot its action chunk; the worker
executes up to ``n_action_steps`` actions of it on its own (stopping early at success or the step
limit) and replies with the new observation. It blocks only while no slot waits, and no worker
waits for another (an earlier version served slot groups in turn behind a barrier: 2-5% fewer env
steps/s with 2 workers). With S = 2 a worker steps one env while the policy runs for (and messages
travel to) its other, so neither the policy call nor the round trip leaves a core idle; replies that
arrive during a policy call form the next batch. Episodes are handed out as slots free up, so a long
failing episode does not hold the others back.

Before any worker starts, a policy that declares ``io`` (``vlatrim.sim.policy.PolicyIO``) is checked
against the backend: a mismatch of action dim, state dim or cameras is refused, naming both sides.

Every episode is seeded: episode k of a task starts from ``backend.episode_start("eval", seed, k)``,
a start pool disjoint from the demonstrations'; which slot runs it does not change its result. An
exception inside an episode (env, renderer, policy output) is recorded as a failed episode with its
error; a worker that dies is replaced (its other episodes in flight fail with it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from vlatrim.errors import VlatrimError
from vlatrim.sim.backends import SimBackend, get_backend
from vlatrim.sim.backends.base import EnvSpec
from vlatrim.sim.metrics import wilson_interval
from vlatrim.sim.policy import Policy, check_policy_io, policy_io, unknown_token_counts, uses_images
from vlatrim.sim.workers import Act, Failed, Observed, Reset, WorkerProcess
from vlatrim.utils.lock import run_dir_lock
from vlatrim.utils.rundir import check_same_inputs, check_same_settings, input_fingerprints

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "metaworld"


@dataclass
class EvalConfig:
    """What to evaluate and how (backend-independent; ``resolve(backend)`` binds it to one)."""

    tasks: list[str]
    """Task names or a task spec of the backend (Meta-World: names, mt10, mt50, difficulty groups);
    expanded by ``resolve``."""
    episodes: int
    """Episodes per task."""
    workers: int = 1
    """Environment worker processes (the batch size of policy calls is at most this)."""
    envs_per_worker: int = 2
    """Episodes each worker runs at once, in slots served alternately: 2 overlaps policy calls and
    round trips with stepping (``1`` is plain lock-step). Results do not depend on it."""
    max_steps: int | None = None
    """Step limit per episode (None: the backend's limit, Meta-World's 500; never above it)."""
    seed: int = 0
    """Run seed: picks each episode's start configuration (eval pool, disjoint from demos)."""
    n_action_steps: int | None = None
    """Actions of each predicted chunk to execute before asking again (None: the whole chunk)."""
    image_size: int = 96
    """Side of the square camera image in pixels (match the policy's training data)."""
    camera: str | None = None
    """Camera rendered for a policy that names none in its ``io`` and for videos (None: the
    backend's first, Meta-World's ``corner``)."""
    render: bool | None = None
    """Render observations: None = only if the policy uses images; True forces it (benchmarks)."""
    video_episodes: int = 0
    """Record the first this-many episodes of each task as videos (0: none)."""
    video_fps: int = 30
    """Frame rate of the videos (Meta-World runs at 80 Hz; 30 plays them at ~0.4x)."""
    video_format: str = "mp4"
    """Container of the videos: a ``vlatrim.utils.video.VIDEO_FORMATS`` name ('mp4': H.264, 'gif')."""

    def __post_init__(self) -> None:
        if isinstance(self.tasks, tuple):
            self.tasks = list(self.tasks)
        if self.episodes < 1:
            raise VlatrimError(f"--episodes must be >= 1, got {self.episodes}")
        if self.workers < 1:
            raise VlatrimError(f"--workers must be >= 1, got {self.workers}")
        if not 1 <= self.envs_per_worker <= 8:
            raise VlatrimError(f"--envs-per-worker must be in 1..8, got {self.envs_per_worker}")
        if self.max_steps is not None and self.max_steps < 1:
            raise VlatrimError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.seed < 0:
            raise VlatrimError(f"--seed must be >= 0, got {self.seed}")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise VlatrimError(f"--n-action-steps must be >= 1, got {self.n_action_steps}")
        if not 8 <= self.image_size <= 1024:
            raise VlatrimError(f"--image-size must be in 8..1024 px, got {self.image_size}")
        if self.video_episodes < 0:
            raise VlatrimError(f"video episodes must be >= 0, got {self.video_episodes}")
        if self.video_fps < 1:
            raise VlatrimError(f"video fps must be >= 1, got {self.video_fps}")
        from vlatrim.utils.video import VIDEO_FORMATS

        VIDEO_FORMATS.get(self.video_format)  # an unknown format lists the valid ones

    def resolve(self, backend: str | SimBackend = DEFAULT_BACKEND) -> EvalConfig:
        """A copy bound to ``backend``: tasks expanded, ``max_steps`` and ``camera`` defaults filled
        in, and checked against what the backend offers (idempotent).

        Raises:
            VlatrimError: an unknown task, a step limit above the backend's, an unknown camera, or
                videos from a backend without cameras.
        """
        b = get_backend(backend)
        max_steps = b.max_steps if self.max_steps is None else self.max_steps
        if not 1 <= max_steps <= b.max_steps:
            raise VlatrimError(f"--max-steps must be in 1..{b.max_steps} (backend {b.name}'s limit), got {max_steps}")
        camera = self.camera if self.camera is not None else b.default_camera
        if camera is not None and camera not in b.cameras:
            valid = ", ".join(b.cameras) or "(none: it renders no camera)"
            raise VlatrimError(f"--camera {camera!r} is not a camera of backend {b.name}; valid: {valid}")
        if self.video_episodes and camera is None:
            raise VlatrimError(f"backend {b.name} renders no camera; videos need one (set video episodes to 0)")
        return dataclasses.replace(self, tasks=b.parse_tasks(self.tasks), max_steps=max_steps, camera=camera)

    def content_settings(self, policy_name: str, backend: str = DEFAULT_BACKEND) -> dict[str, Any]:
        """The settings that decide ``eval.json``'s content (what a resumed run must match).

        ``workers`` and ``envs_per_worker`` are left out: every episode is seeded, so the results do not
        depend on them.
        """
        d = asdict(self)
        d.pop("workers")
        d.pop("envs_per_worker")
        return {"backend": backend, **d, "policy": policy_name}


@dataclass
class EpisodeResult:
    task: str
    episode: int  # index within the task
    start: tuple[int, ...]  # where it began: backend.episode_start("eval", seed, episode) (Meta-World: MT1 seed, index)
    success: bool = False
    steps: int = 0  # env steps taken (to success, or to the limit)
    error: str | None = None  # set when the episode crashed
    seconds: float = 0.0


@dataclass
class EvalResult:
    """The content of ``eval.json`` (see docs/eval.md)."""

    settings: dict[str, Any]
    per_task: dict[str, dict[str, Any]]
    overall: dict[str, Any]
    episodes: list[dict[str, Any]]
    timing: dict[str, Any]
    host: dict[str, Any] = field(default_factory=dict)


def video_name(task: str, episode: int) -> str:
    """The file stem of an episode's video (``videos/<stem>.<format>``)."""
    return f"{task}_ep{episode}"


# --------------------------------------------------------------------------------------- evaluator
@dataclass
class _Slot:
    """One episode place of a worker, as the main process tracks it."""

    worker: int
    index: int  # slot number inside the worker
    job: EpisodeResult | None = None
    t0: float = 0.0
    obs: Observed | None = None  # latest observation, waiting for an action
    record: bool = False


class Evaluator:
    """Closed-loop evaluation of policies in one simulator backend.

    Args:
        backend: a registered backend name (``vlatrim.sim.backends.SIM_BACKENDS``) or an instance.
        cfg: the settings; bound to the backend with ``cfg.resolve`` (``self.cfg`` is the result).

    Raises:
        VlatrimError: an unknown backend, or settings the backend cannot take.
    """

    def __init__(self, backend: str | SimBackend, cfg: EvalConfig) -> None:
        self.backend = get_backend(backend)
        self.cfg = cfg.resolve(self.backend)

    def check(self, policy: Policy) -> None:
        """Refuse ``policy`` before any episode: its ``io`` against the backend, and a policy that
        reads images in a run without rendering or a backend without cameras.

        Also refused: an image size other than the policy's declared ``io.image_size``, and
        ``n_action_steps`` above its ``io.chunk_size``.

        Raises:
            VlatrimError: one line naming the policy's and the backend's (or the settings') side.
        """
        check_policy_io(policy, self.backend)
        if uses_images(policy):
            if self.cfg.render is False:
                raise VlatrimError("the policy reads images; evaluation with render=False would feed it none")
            if not self.backend.cameras:
                raise VlatrimError(f"the policy reads images; backend {self.backend.name} renders no camera")
        io = policy_io(policy)
        if io is None:
            return
        # A policy fed images of another size than it declares fails every episode quietly (0 %), so the
        # mismatch is an input error, not a result.
        if io.image_size is not None and uses_images(policy) and self.cfg.image_size != io.image_size:
            raise VlatrimError(f"--image-size {self.cfg.image_size} differs from the policy's image size "
                               f"{io.image_size} px (its io.image_size); give --image-size {io.image_size} or omit it")
        n = self.cfg.n_action_steps
        if n is not None and n > io.chunk_size:
            raise VlatrimError(f"--n-action-steps {n} is more than the policy's chunk of {io.chunk_size} action(s) "
                               f"(its io.chunk_size); valid: 1..{io.chunk_size}")

    def cameras_for(self, policy: Policy) -> tuple[str, ...]:
        """The cameras rendered for ``policy``: those its ``io`` names, else the configured camera."""
        io = policy_io(policy)
        if io is not None and io.cameras:
            return io.cameras
        return (self.cfg.camera,) if self.cfg.camera is not None else ()

    def run(
        self,
        policy: Policy,
        policy_name: str = "",
        progress: bool = True,
        done: Sequence[EpisodeResult] = (),
        on_episode: Callable[[EpisodeResult, list[np.ndarray] | None], None] | None = None,
    ) -> tuple[EvalResult, dict[str, list[np.ndarray]]]:
        """Run closed-loop episodes of ``policy`` and summarise success.

        Args:
            policy: the policy (called in this process, batched over workers).
            policy_name: how the policy was specified (recorded in the settings).
            progress: show a tqdm bar over episodes.
            done: episodes finished by an earlier, interrupted run of the same settings: they are not
                run again and enter the summary as they are.
            on_episode: called in this process as each episode finishes, with its result and its frames
                (a video episode that ran to its end) or None; ``EvalStore.record`` journals them.

        Returns:
            The result (``eval.json`` content) and the recorded frames of this call's video episodes,
            keyed ``video_name(task, k)`` (uint8 (H, W, 3) frames; empty without ``video_episodes``).

        Raises:
            VlatrimError: the policy does not fit the backend (``check``), before any worker starts.
        """
        self.check(policy)
        return _Run(self, policy, policy_name, progress, done, on_episode).run()


class _Run:
    """The state of one ``Evaluator.run``: workers, slots, the queue of episodes, counters."""

    def __init__(self, ev: Evaluator, policy: Policy, policy_name: str, progress: bool,
                 done: Sequence[EpisodeResult], on_episode: Callable[[EpisodeResult, list[np.ndarray] | None], None] | None) -> None:
        cfg, backend = ev.cfg, ev.backend
        self.cfg, self.backend, self.policy, self.policy_name = cfg, backend, policy, policy_name
        self.on_episode, self.progress = on_episode, progress
        self.render = cfg.render if cfg.render is not None else uses_images(policy)
        self.cameras = ev.cameras_for(policy)
        self.spec = EnvSpec(image_size=cfg.image_size, cameras=self.cameras,
                            render=self.render or cfg.video_episodes > 0)
        finished = {(r.task, r.episode) for r in done}
        self.queue = [
            EpisodeResult(task, k, tuple(backend.episode_start("eval", cfg.seed, k)))
            for task in cfg.tasks
            for k in range(cfg.episodes)
            if (task, k) not in finished
        ]
        self.results: list[EpisodeResult] = list(done)
        self.resumed = len(done)
        self.videos: dict[str, list[np.ndarray]] = {}
        # Recorded in the settings as what an uninterrupted run would start (a resumed run may start fewer).
        self.n_workers = min(cfg.workers, cfg.episodes * len(cfg.tasks))
        n_start = min(self.n_workers, len(self.queue))
        self.per_worker = max(1, min(cfg.envs_per_worker, -(-len(self.queue) // max(n_start, 1))))  # no idle slots in tiny runs
        self.workers: list[WorkerProcess] = []
        self.slots: list[_Slot] = []
        self.env_steps, self.t_first = 0, None
        self.n_calls, self.batch_sizes, self.policy_seconds = 0, [], 0.0
        self.ctx = mp.get_context("spawn")  # fork after GL/torch state in the parent is unsafe
        self.bar: Any = None

    # ------------------------------------------------------------------------------ bookkeeping
    def _new_worker(self) -> WorkerProcess:
        return WorkerProcess(self.ctx, self.backend, self.spec, send_images=self.render)

    def finish(self, sl: _Slot, success: bool, steps: int, error: str | None = None,
               frames: list[np.ndarray] | None = None) -> None:
        job = sl.job
        job.success, job.steps, job.error = success, steps, error
        job.seconds = round(time.perf_counter() - sl.t0, 3)
        self.env_steps += steps
        self.results.append(job)
        if self.on_episode is not None:
            self.on_episode(job, frames)  # e.g. EvalStore.record writes the clip now: no need to hold it
        elif frames is not None:
            self.videos[video_name(job.task, job.episode)] = frames
        sl.job, sl.obs = None, None
        self.bar.update(1)
        n_ok = sum(r.success for r in self.results)
        self.bar.set_postfix(success=f"{n_ok}/{len(self.results)}")

    def start_next(self, sl: _Slot) -> None:
        # A reset message also abandons whatever episode the slot's env was in.
        if not self.queue:
            return
        sl.job = self.queue.pop(0)
        sl.record = sl.job.episode < self.cfg.video_episodes
        sl.t0 = time.perf_counter()
        self.t_first = self.t_first or sl.t0
        self.workers[sl.worker].send(Reset(sl.index, sl.job.task, sl.job.start, sl.record))

    def worker_died(self, i: int) -> None:
        # Every episode in flight on worker i fails; a fresh process takes over its slots.
        w = self.workers[i]
        for sl in self.slots:
            if sl.worker == i and sl.job is not None:
                self.finish(sl, False, sl.obs.steps if sl.obs else 0, f"worker process died (exit code {w.proc.exitcode})")
        try:
            w.close()
        except Exception:
            pass
        self.workers[i] = self._new_worker()
        self.workers[i].wait_ready()
        for sl in self.slots:
            if sl.worker == i:
                self.start_next(sl)

    def receive(self, i: int) -> None:
        """Take one message from worker i and file it under its slot."""
        try:
            msg = self.workers[i].conn.recv()
        except (EOFError, OSError):
            self.worker_died(i)
            return
        sl = next(x for x in self.slots if x.worker == i and x.index == msg.slot)
        if isinstance(msg, Failed):
            log.warning("episode %s/%d crashed: %s", sl.job.task, sl.job.episode, msg.error)
            self.finish(sl, False, int(msg.steps), msg.error)
            self.start_next(sl)
        elif msg.done:
            self.finish(sl, bool(msg.success), int(msg.steps), frames=msg.frames)
            self.start_next(sl)
        else:
            sl.obs = msg

    def observation(self, batch: list[_Slot]) -> dict[str, Any]:
        """The policy's input for the slots in ``batch`` (see ``vlatrim.sim.policy``)."""
        cams = self.cameras if self.render else ()
        images = {c: np.stack([sl.obs.images[c] for sl in batch]) for c in cams}  # camera -> (B, H, W, 3) uint8
        has_state = self.backend.state_dim is not None
        return {
            "images": images,
            "image": images[cams[0]] if cams else None,  # (B, H, W, 3) uint8: the first camera
            "state": np.stack([sl.obs.state for sl in batch]).astype(np.float32) if has_state else None,  # (B, state_dim)
            "raw": np.stack([sl.obs.raw for sl in batch]).astype(np.float32),  # (B, raw_dim)
            "instruction": [self.backend.instruction(sl.job.task) for sl in batch],
            "task": [sl.job.task for sl in batch],
            "step": np.array([sl.obs.steps for sl in batch], dtype=np.int64),  # (B,) 0 = first step of an episode
            "episode": np.array([sl.job.episode for sl in batch], dtype=np.int64),  # (B,) index within its task
        }

    def act(self, batch: list[_Slot]) -> None:
        """One batched policy call; each slot gets its chunk or fails."""
        chunk, a_dim = self.cfg.n_action_steps, self.backend.action_dim
        obs = self.observation(batch)
        t0 = time.perf_counter()
        try:
            actions = np.asarray(self.policy.predict(obs), dtype=np.float32)  # (B, T, action_dim)
            if actions.ndim != 3 or actions.shape[0] != len(batch) or actions.shape[2] != a_dim or actions.shape[1] < 1:
                raise ValueError(f"policy returned actions of shape {actions.shape}, expected ({len(batch)}, T, {a_dim})")
            k = actions.shape[1] if chunk is None else min(chunk, actions.shape[1])  # actions executed
            bad = ~np.isfinite(actions[:, :k]).all(axis=(1, 2))  # (B,): only what runs must be finite
        except Exception as e:  # the policy failed on this batch: those episodes fail
            msg = f"policy: {type(e).__name__}: {e}"
            log.warning("%s", msg)
            for sl in batch:
                self.finish(sl, False, sl.obs.steps, msg)
                self.start_next(sl)
            return
        self.policy_seconds += time.perf_counter() - t0
        self.n_calls += 1
        self.batch_sizes.append(len(batch))
        for sl, a, is_bad in zip(batch, actions, bad):
            if is_bad:
                self.finish(sl, False, sl.obs.steps, "policy returned non-finite actions")
                self.start_next(sl)
                continue
            self.workers[sl.worker].send(Act(sl.index, a[:k], self.cfg.max_steps))
            sl.obs = None

    # ------------------------------------------------------------------------------------- loop
    def run(self) -> tuple[EvalResult, dict[str, list[np.ndarray]]]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        tokens = _instruction_tokens(self.policy, self.backend, cfg.tasks)
        if self.spec.render:
            self.backend.prepare_render()
        t_start = time.perf_counter()
        try:
            for _ in range(min(self.n_workers, len(self.queue))):
                self.workers.append(self._new_worker())
            for w in self.workers:
                w.wait_ready()
        except BaseException:  # one failed to start: stop the others now, not at garbage collection
            for w in self.workers:
                w.close()
            raise
        self.slots = [_Slot(i, g) for g in range(self.per_worker) for i in range(len(self.workers))]
        if self.workers:
            self.policy.reset(len(self.slots))
        self.bar = tqdm(total=len(self.queue) + len(self.results), initial=len(self.results), desc="eval", unit="ep",
                        disable=not self.progress)
        threads_before = _policy_threads(len(self.workers), self.per_worker)
        try:
            for sl in self.slots:
                self.start_next(sl)
            while any(sl.job is not None for sl in self.slots):
                # 1) file the replies that have arrived; block for one only while no slot waits for an action
                #    (no barrier: a worker whose reply is in gets its next action without waiting for the others)
                waiting = {sl.worker for sl in self.slots if sl.job is not None and sl.obs is None}
                ready_slots = any(sl.job is not None and sl.obs is not None for sl in self.slots)
                if waiting:
                    conns = {w.conn: i for i, w in enumerate(self.workers)}
                    sentinels = {self.workers[i].proc.sentinel: i for i in waiting}
                    ready = wait(list(conns) + list(sentinels), timeout=0 if ready_slots else None)
                    for i in sorted({conns[r] if r in conns else sentinels[r] for r in ready}):
                        self.receive(i)  # once per worker: a restart replaces its conn and sentinel
                # 2) one batched policy call over every slot that waits for an action
                batch = [sl for sl in self.slots if sl.job is not None and sl.obs is not None]
                if batch:
                    self.act(batch)
        finally:
            self.bar.close()
            for w in self.workers:
                w.close()
            if threads_before is not None:
                import torch

                torch.set_num_threads(threads_before)
        t_end = time.perf_counter()
        self.results.sort(key=lambda r: (cfg.tasks.index(r.task), r.episode))
        result = _summarise(cfg, self.policy_name, self.render, self.results, t_start, self.t_first or t_start, t_end,
                            self.env_steps, self.n_calls, self.batch_sizes, self.policy_seconds, self.n_workers,
                            self.per_worker, resumed=self.resumed, backend=self.backend,
                            cameras=self.cameras if self.render else ())
        if tokens is not None:
            for task, (n, unk) in tokens.items():
                result.per_task[task].update(instruction_tokens=n, unknown_tokens=unk)
            total = sum(n for n, _ in tokens.values())
            result.overall["unknown_token_share"] = sum(u for _, u in tokens.values()) / total if total else 0.0
        return result, self.videos


def _instruction_tokens(policy: Policy, backend: SimBackend, tasks: Sequence[str]) -> dict[str, tuple[int, int]] | None:
    """{task: (tokens, unknown tokens)} of each task's instruction as the policy reads it, and one warning
    when any word is unknown to it (a cut vocabulary reads it as its unknown token, silently otherwise)."""
    counts = unknown_token_counts(policy, [backend.instruction(t) for t in tasks])
    if counts is None:
        return None
    out = dict(zip(tasks, counts, strict=True))
    unknown = {t: u for t, (_, u) in out.items() if u}
    if unknown:
        total = sum(n for n, _ in out.values())
        log.warning("%d of %d instruction tokens are unknown to the policy's tokenizer (read as its unknown token, "
                    "e.g. after a vocabulary cut): %s; eval.json records them per task",
                    sum(unknown.values()), total, ", ".join(f"{t} {u}" for t, u in unknown.items()))
    return out


def evaluate(
    policy: Policy,
    cfg: EvalConfig,
    policy_name: str = "",
    progress: bool = True,
    done: Sequence[EpisodeResult] = (),
    on_episode: Callable[[EpisodeResult, list[np.ndarray] | None], None] | None = None,
    backend: str | SimBackend = DEFAULT_BACKEND,
) -> tuple[EvalResult, dict[str, list[np.ndarray]]]:
    """``Evaluator(backend, cfg).run(policy, ...)`` in one call (results in memory; see ``run_eval``
    for a journaled, resumable run into a directory). Arguments and return as ``Evaluator.run``."""
    return Evaluator(backend, cfg).run(policy, policy_name, progress=progress, done=done, on_episode=on_episode)


def _policy_threads(n_workers: int, per_worker: int) -> int | None:
    """Give a torch policy in this process the cores the workers leave; return the old thread count.

    With double-buffered slots the workers step while the policy runs, so a policy using every core
    makes its threads fight them (OpenMP threads spin while they wait: measured on 2 cores with the
    quick-preset VLA, 2 threads gave 75 env steps/s with 1 worker against 100 with 1 thread). In
    lock-step the workers sleep during the call, so the policy keeps all cores. None: nothing changed.
    """
    if per_worker < 2 or n_workers < 1 or "torch" not in sys.modules:
        return None
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - n_workers)))
    return before


def _summarise(cfg: EvalConfig, policy_name: str, render: bool, results: list[EpisodeResult], t_start: float,
               t_first: float, t_end: float, env_steps: int, n_calls: int, batch_sizes: list[int], policy_seconds: float,
               n_workers: int, per_worker: int = 1, resumed: int = 0, backend: str | SimBackend = DEFAULT_BACKEND,
               cameras: Sequence[str] | None = None) -> EvalResult:
    b = get_backend(backend)
    cfg = cfg.resolve(b)
    per_task: dict[str, dict[str, Any]] = {}
    for task in cfg.tasks:
        rs = [r for r in results if r.task == task]
        k = sum(r.success for r in rs)
        lo, hi = wilson_interval(k, len(rs))
        per_task[task] = {
            "success_rate": k / len(rs),
            "successes": k,
            "episodes": len(rs),
            "wilson95": [lo, hi],
            "mean_steps": float(np.mean([r.steps for r in rs])),
            "mean_steps_success": float(np.mean([r.steps for r in rs if r.success])) if k else None,
            "errors": sum(r.error is not None for r in rs),
            "instruction": b.instruction(task),
        }
    k_all = sum(r.success for r in results)
    lo, hi = wilson_interval(k_all, len(results))
    overall = {
        "mean_success": float(np.mean([v["success_rate"] for v in per_task.values()])),  # mean over tasks
        "pooled_success": k_all / len(results),
        "successes": k_all,
        "episodes": len(results),
        "wilson95_pooled": [lo, hi],
        "errors": sum(r.error is not None for r in results),
    }
    rollout = max(t_end - t_first, 1e-9)
    cams = list(cameras) if cameras is not None else ([cfg.camera] if render and cfg.camera else [])  # rendered for the policy
    settings = {"backend": b.name, **asdict(cfg), "policy": policy_name, "render": render, "cameras": cams,
                "workers_used": n_workers}
    n_run = len(results) - resumed
    # Timing is of this invocation only: a resumed run counts the episodes it ran itself.
    timing = {
        "wall_seconds": round(t_end - t_start, 3),
        "rollout_seconds": round(rollout, 3),  # first reset to the end: excludes process start-up, includes env creation
        "env_steps": env_steps,
        "env_steps_per_second": round(env_steps / rollout, 2),
        "episodes_per_second": round(n_run / rollout, 4),
        "policy_calls": n_calls,
        "mean_batch_size": round(float(np.mean(batch_sizes)), 3) if batch_sizes else 0.0,
        "policy_seconds": round(policy_seconds, 3),
        "resumed_episodes": resumed,  # finished by an earlier, interrupted invocation
        "envs_per_worker_used": per_worker,
    }
    host = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(), "mujoco_gl": os.environ.get("MUJOCO_GL")}
    return EvalResult(settings, per_task, overall, [asdict(r) for r in results], timing, host)


def write_eval(out: str | os.PathLike, result: EvalResult, videos: dict[str, list[np.ndarray]], fps: int = 30, video_format: str | None = None) -> Path:
    """Write ``eval.json`` (and ``videos/<name>.<format>``) into ``out`` in one step (all or nothing).

    For results held in memory (no journal); ``vlatrim eval`` goes through ``EvalStore`` instead.
    ``out`` must be absent or empty; ``video_format`` defaults to the result's setting (else mp4).
    Returns the path of ``eval.json``.
    """
    from vlatrim.utils.io import atomic_dir, write_json_atomic
    from vlatrim.utils.video import write_clip

    out = Path(out)
    fmt = video_format or result.settings.get("video_format", "mp4")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VlatrimError(f"--out {str(out)!r} exists and is not an empty directory; choose a new one or remove it")
    try:
        with atomic_dir(out, overwrite=True) as tmp:
            for name, frames in videos.items():
                write_clip(tmp / "videos" / f"{name}.{fmt}", frames, fps, fmt)
            write_json_atomic(tmp / "eval.json", asdict(result))
    except OSError as e:
        raise VlatrimError(f"--out {str(out)!r} cannot be written ({e.strerror or e})") from None
    return out / "eval.json"


def check_out(out: str | os.PathLike, resume: bool = False) -> None:
    """Refuse an ``--out`` that cannot take this run, before a long run.

    Without ``resume``: it must be absent or empty. With ``resume``: it may also hold an unfinished
    evaluation (``.progress/``); a finished one (``eval.json``) or anything else is refused. Whether
    the unfinished run's settings match is checked by ``EvalStore``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VlatrimError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if (out / EVAL_FILE).exists():
            raise VlatrimError(f"--out {str(out)!r} already holds a finished evaluation (eval.json); choose a new directory or remove it")
        if (out / PROGRESS_DIR).is_dir():
            if not resume:
                raise VlatrimError(f"--out {str(out)!r} holds an unfinished evaluation; add --resume to continue it, or choose a new directory")
        else:
            raise VlatrimError(f"--out {str(out)!r} is not empty; choose a new directory or remove it")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise VlatrimError(f"--out {str(out)!r} is not writable ({str(parent)!r} is read-only)")


# ------------------------------------------------------------------------------ resumable output
EVAL_FILE = "eval.json"
PROGRESS_DIR = ".progress"  # inside --out while a run is unfinished
PROGRESS_FORMAT = 1  # of the .progress layout; part of the settings a resume must match


class EvalStore:
    """An ``--out`` directory that records every episode as it finishes, so a killed run resumes.

    Layout while unfinished: ``.progress/settings.json`` (the content settings, and the policy
    checkpoint's content fingerprint ``inputs.policy`` when the policy was given as a directory), an append-only
    ``.progress/episodes.jsonl`` (one ``EpisodeResult`` per line, flushed and fsynced as each
    episode ends) and ``.progress/videos/`` (each video episode's clip, written before its journal
    line). ``finish`` moves the videos to ``videos/``, writes ``eval.json`` atomically, and removes
    ``.progress/``.

    Args:
        out: the output directory (absent, empty, or an unfinished run when ``resume``).
        cfg: the evaluation settings (bound to ``backend`` here: ``self.cfg`` is ``cfg.resolve(backend)``).
        policy_name: the policy as given (part of the settings a resume must match).
        resume: continue an unfinished run in ``out`` (absent/empty ``out`` starts a new one).
        backend: the simulator backend (its name is part of the settings a resume must match).

    Raises:
        VlatrimError: ``out`` is not usable (see ``check_out``), or holds an unfinished run whose
            settings differ (the message names them).
    """

    def __init__(self, out: str | os.PathLike, cfg: EvalConfig, policy_name: str, resume: bool = False,
                 backend: str | SimBackend = DEFAULT_BACKEND) -> None:
        from vlatrim.utils.io import read_json, write_json_atomic

        self.out = Path(out)
        self.backend = get_backend(backend)
        self.cfg = cfg = cfg.resolve(self.backend)
        self.progress = self.out / PROGRESS_DIR
        check_out(self.out, resume)
        settings = {**cfg.content_settings(policy_name, self.backend.name), "progress_format": PROGRESS_FORMAT}
        settings = json.loads(json.dumps(settings))  # as it reads back (tuples -> lists)
        # The checkpoint by content: the same path holding other weights is another policy.
        inputs = input_fingerprints(policy=policy_name) if policy_name and Path(policy_name).is_dir() else {}
        settings_path = self.progress / "settings.json"
        if self.progress.is_dir():
            old = read_json(settings_path, "evaluation settings") if settings_path.exists() else {}
            what = f"the unfinished evaluation in --out {str(self.out)!r}"
            remedy = "rerun with the same settings, or choose a new directory"
            old_inputs = old.pop("inputs", None)
            check_same_settings(old, settings, what, remedy)
            check_same_inputs(old_inputs, inputs, what, remedy)
        else:
            try:
                (self.progress / "videos").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise VlatrimError(f"--out {str(self.out)!r} cannot be created ({e.strerror})") from None
            write_json_atomic(settings_path, {**settings, "inputs": inputs})
        (self.progress / "videos").mkdir(exist_ok=True)
        self.journal_path = self.progress / "episodes.jsonl"
        self.done = self._read_journal()
        self._journal = open(self.journal_path, "a")
        if self._journal.tell() and not self.journal_path.read_bytes().endswith(b"\n"):
            self._journal.write("\n")  # end a line torn by the interruption, so the next entry stands alone

    def _video_path(self, task: str, episode: int) -> Path:
        return self.progress / "videos" / f"{video_name(task, episode)}.{self.cfg.video_format}"

    def _read_journal(self) -> list[EpisodeResult]:
        """Finished episodes of the earlier invocations (a torn last line or a lost clip: redone)."""
        if not self.journal_path.exists():
            return []
        wanted = {(t, k) for t in self.cfg.tasks for k in range(self.cfg.episodes)}
        done: dict[tuple[str, int], EpisodeResult] = {}
        for line in self.journal_path.read_text().splitlines():
            try:
                d = json.loads(line)
                r = EpisodeResult(**{**d, "start": tuple(d["start"])})
            except (json.JSONDecodeError, TypeError, KeyError):
                continue  # a line torn by the interruption: that episode is simply run again
            key = (r.task, r.episode)
            if key not in wanted:
                continue
            if r.episode < self.cfg.video_episodes and r.error is None and not self._video_path(*key).exists():
                continue  # its clip is missing: run it again to record one
            done[key] = r
        return sorted(done.values(), key=lambda r: (self.cfg.tasks.index(r.task), r.episode))

    def record(self, result: EpisodeResult, frames: list[np.ndarray] | None) -> None:
        """Journal one finished episode (its clip first, so a journaled video episode has one)."""
        from vlatrim.utils.video import write_clip

        if frames is not None:
            write_clip(self._video_path(result.task, result.episode), frames, self.cfg.video_fps, self.cfg.video_format)
        self._journal.write(json.dumps(asdict(result)) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())

    def finish(self, result: EvalResult) -> Path:
        """Publish ``videos/`` and ``eval.json`` (atomically, last) and drop ``.progress``."""
        import shutil

        from vlatrim.utils.io import write_json_atomic

        self.close()
        clips = sorted(p for p in (self.progress / "videos").iterdir() if not p.name.startswith("."))  # no temp files
        if clips:
            (self.out / "videos").mkdir(exist_ok=True)
            for clip in clips:
                os.replace(clip, self.out / "videos" / clip.name)
        path = write_json_atomic(self.out / EVAL_FILE, asdict(result))
        shutil.rmtree(self.progress)
        return path

    def close(self) -> None:
        if not self._journal.closed:
            self._journal.close()

    def discard_if_empty(self, remove_out: bool = False) -> None:
        """After a failure: remove ``.progress`` (and ``out`` if ``remove_out`` and then empty) when
        no episode was ever journaled, so a run that did nothing leaves nothing behind."""
        import shutil

        if self.journal_path.exists() and self.journal_path.stat().st_size > 0:
            return
        shutil.rmtree(self.progress, ignore_errors=True)
        if remove_out and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()


def run_eval(policy: Policy, cfg: EvalConfig, out: str | os.PathLike, policy_name: str = "", resume: bool = False,
             progress: bool = True, backend: str | SimBackend = DEFAULT_BACKEND) -> tuple[EvalResult, Path]:
    """Evaluate into ``out`` with every episode journaled as it ends; resume an unfinished run.

    Args:
        policy: the policy.
        cfg: the evaluation settings.
        out: output directory (see ``EvalStore``).
        policy_name: how the policy was given (part of the settings).
        resume: continue the unfinished run in ``out`` (its settings must match).
        progress: show a tqdm bar.
        backend: the simulator backend, a ``SIM_BACKENDS`` name (default ``metaworld``) or an instance.

    Returns:
        The result (identical to an uninterrupted run's but for ``timing`` and the worker settings
        ``workers``, ``envs_per_worker`` and ``workers_used``, which a resume may change) and
        ``eval.json``'s path.

    Raises:
        VlatrimError: an unknown backend, settings it cannot take, a policy that does not fit it
            (checked before ``out`` is touched), or an unusable ``out``.
    """
    evaluator = Evaluator(backend, cfg)
    evaluator.check(policy)  # before anything is written
    out = Path(out)
    created = not out.exists()
    with run_dir_lock(out):  # one writer: a second run into the same --out is refused, naming this one's pid
        store = EvalStore(out, evaluator.cfg, policy_name, resume=resume, backend=evaluator.backend)
        try:
            if store.done:
                log.warning("resuming %s: %d of %d episodes already finished", out, len(store.done),
                            evaluator.cfg.episodes * len(evaluator.cfg.tasks))
            result, _ = evaluator.run(policy, policy_name, progress=progress, done=store.done, on_episode=store.record)
        except BaseException:
            store.close()
            store.discard_if_empty(remove_out=created)
            raise
        return result, store.finish(result)
