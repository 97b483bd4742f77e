"""``vlatrim eval``: closed-loop success of a policy in a simulator backend (Meta-World by default), written to ``eval.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from vlatrim.cli.output import setup_logging
from vlatrim.cli.registry import COMMANDS
from vlatrim.cli.threads import apply_threads


@COMMANDS.register("eval")
@dataclass
class EvalCommand:
    """Evaluate a policy (checkpoint directory, 'expert' or 'random') in a simulator (Meta-World); write eval.json."""

    policy: str
    """Checkpoint directory of any policy family (reference VLA, or a family registered by a plug-in; see
    docs/extending.md), or a built-in of the backend (Meta-World: 'expert' / 'random')."""
    tasks: str
    """Task names or groups of the backend, comma-separated (Meta-World: names, 'mt10', 'mt50', easy, medium,
    hard, very_hard)."""
    episodes: int
    """Episodes per task."""
    out: str
    """Output directory (new or empty; with --resume, an interrupted run's): eval.json and, with --video, videos/."""
    workers: int = 1
    """Environment worker processes; policy calls are batched over them."""
    envs_per_worker: int = 2
    """Episodes each worker runs at once, served alternately so that policy calls overlap with stepping
    (1: plain lock-step). Results do not depend on it."""
    max_steps: int | None = None
    """Step limit per episode (default and most: the backend's limit, Meta-World's 500)."""
    video: bool = False
    """Record the first --video-episodes episodes of each task as videos/<task>_ep<k>.<format>."""
    video_episodes: int = 2
    """Episodes per task to record with --video."""
    video_format: Literal["mp4", "gif"] = "mp4"
    """Video container: mp4 (H.264 where PyAV has an encoder for it) or gif."""
    resume: bool = False
    """Continue an interrupted run in --out: its finished episodes are kept (the settings must match)."""
    seed: int = 0
    """Seed of the episode start configurations (evaluation pool, disjoint from demonstrations)."""
    n_action_steps: int | None = None
    """Actions of each predicted chunk to execute before re-planning (default and most: the whole chunk)."""
    image_size: int | None = None
    """Camera image side in pixels, 8..1024 (default: the policy's `io.image_size` or `image_size` attribute if it
    has one, else 96; a size other than a policy's declared `io.image_size` is refused)."""
    device: str = "cpu"
    """Torch device for checkpoint policies: cpu, cuda, cuda:N or auto."""
    backend: str = "metaworld"
    """Simulator backend, a registered name (vlatrim.sim.backends.SIM_BACKENDS; 'metaworld')."""

    threads: int | None = None
    """torch CPU threads. Default: the cores free when the command starts (with another job keeping one of
    2 cores busy that is 1 thread, which trains faster there than torch's default of 2)."""

    def run(self) -> None:
        apply_threads(self.threads)
        import dataclasses

        from vlatrim.families import load_policy
        from vlatrim.sim.backends import get_backend
        from vlatrim.sim.evaluate import EvalConfig, check_out, run_eval
        from vlatrim.sim.policy import policy_io
        from vlatrim.utils.device import resolve_device

        setup_logging()
        device = str(resolve_device(self.device))  # "cuda" without CUDA: one line, not a traceback
        backend = get_backend(self.backend)  # an unknown name lists the registered ones
        check_out(self.out, resume=self.resume)  # before loading a model and minutes of rollouts, not after
        backend.parse_tasks(self.tasks)  # likewise: a typo in --tasks should not wait for a model to load
        # Every number is checked before a model loads; the image size is settled once the policy is known.
        cfg = EvalConfig(
            tasks=self.tasks,
            episodes=self.episodes,
            workers=self.workers,
            envs_per_worker=self.envs_per_worker,
            max_steps=self.max_steps,
            seed=self.seed,
            n_action_steps=self.n_action_steps,
            image_size=self.image_size if self.image_size is not None else 96,
            video_episodes=self.video_episodes if self.video else 0,
            video_format=self.video_format,
        )
        policy = load_policy(self.policy, device=device, seed=self.seed, backend=backend)
        if self.image_size is None:
            io = policy_io(policy)
            declared = (io.image_size if io is not None else None) or getattr(policy, "image_size", None)
            cfg = dataclasses.replace(cfg, image_size=int(declared or 96))
        result, path = run_eval(policy, cfg, self.out, policy_name=self.policy, resume=self.resume, backend=backend)
        print(json.dumps({"eval": str(path), "mean_success": result.overall["mean_success"],
                          "per_task": {t: v["success_rate"] for t, v in result.per_task.items()}}))
