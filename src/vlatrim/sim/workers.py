"""Environment worker processes of the evaluator and the typed messages they exchange with it.

A worker owns ``envs_per_worker`` *slots*, each running one episode at a time in its own env built
by the backend. Main -> worker: ``Reset`` (begin an episode in a slot), ``Act`` (run an action chunk
open-loop), ``Stop``. Worker -> main: ``Ready`` once (imports done), then one ``Observed`` or
``Failed`` per ``Reset`` / ``Act``. The worker knows nothing of policies or of the backend's
specifics: it calls ``backend.make_env`` and the ``SimEnv`` methods only.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from vlatrim.errors import VlatrimError
from vlatrim.sim.backends.base import EnvSpec, SimBackend, SimEnv, Step
from vlatrim.sim.procs import exit_with_parent


# --------------------------------------------------------------------------------------- messages
@dataclass
class Ready:
    """Worker -> main, once: imports are done (the main process starts its clock after all are)."""


@dataclass
class Reset:
    """Main -> worker: begin an episode of ``task`` from ``start`` in slot ``slot`` (abandoning any)."""

    slot: int
    task: str
    start: tuple[int, ...]  # SimBackend.episode_start value
    record: bool  # keep every frame of the first camera for a video


@dataclass
class Act:
    """Main -> worker: execute ``actions`` in slot ``slot``, stopping when the episode ends (success,
    the env's own termination, or ``max_steps``)."""

    slot: int
    actions: np.ndarray  # float32 (n, action_dim): the executed part of a chunk
    max_steps: int


@dataclass
class Stop:
    """Main -> worker: close the envs and exit."""


@dataclass
class Observed:
    """Worker -> main: the observation after a ``Reset`` or ``Act`` of slot ``slot``."""

    slot: int
    raw: np.ndarray  # float32 (raw_dim,)
    state: np.ndarray | None  # float32 (state_dim,)
    images: dict[str, np.ndarray]  # camera -> uint8 (H, W, 3); {} unless the policy reads images
    done: bool  # the episode ended (success, the env terminated it, or the step limit)
    success: bool
    steps: int  # env steps of the episode so far
    frames: list[np.ndarray] | None = None  # the episode's recorded frames, uint8 (H, W, 3), when done and recorded


@dataclass
class Failed:
    """Worker -> main: slot ``slot``'s episode raised; its env was dropped, the worker lives on."""

    slot: int
    error: str  # "ExceptionType: message"
    traceback: list[str]  # the last lines of the traceback
    steps: int  # env steps taken before the failure


# ------------------------------------------------------------------------------------------ worker
@dataclass
class _WorkerSlot:
    envs: dict[str, SimEnv] = field(default_factory=dict)  # task -> env (each slot steps its own envs)
    env: SimEnv | None = None
    record: bool = False
    frames: list[np.ndarray] = field(default_factory=list)


def worker_main(conn: Connection, parent_pid: int, backend: SimBackend, spec: EnvSpec, send_images: bool) -> None:
    """Serve episodes over ``conn`` until ``Stop`` (or the parent's end).

    Args:
        conn: this worker's end of the pipe.
        parent_pid: the evaluator's process (the worker exits when it is gone).
        backend: builds the envs (``make_env(task, spec)``).
        spec: image size, cameras and whether renderers exist at all.
        send_images: put the frames of ``spec.cameras`` into every ``Observed`` (the policy reads them).
    """
    exit_with_parent(parent_pid)
    conn.send(Ready())
    slots: dict[int, _WorkerSlot] = {}

    def observed(k: int, slot: _WorkerSlot, step: Step, done: bool) -> Observed:
        frames = slot.frames if (done and slot.record) else None
        return Observed(k, step.raw, step.state, step.images if send_images else {}, done, bool(step.success),
                        slot.env.steps, frames)

    try:
        while True:
            msg = conn.recv()
            if isinstance(msg, Stop):
                break
            k = msg.slot
            slot = slots.setdefault(k, _WorkerSlot())
            steps_taken = slot.env.steps if (isinstance(msg, Act) and slot.env is not None) else 0
            try:
                if isinstance(msg, Reset):
                    slot.env = slot.envs.get(msg.task)
                    if slot.env is None:
                        if len(slot.envs) >= 2:  # episodes arrive task by task; bound GL contexts
                            slot.envs.pop(next(iter(slot.envs))).close()
                        slot.env = slot.envs[msg.task] = backend.make_env(msg.task, spec)
                    slot.record = msg.record
                    slot.env.capture = send_images or slot.record
                    slot.frames = []
                    step = slot.env.reset(tuple(msg.start))
                    if slot.record:
                        slot.frames.append(step.image)
                    conn.send(observed(k, slot, step, False))
                elif isinstance(msg, Act):
                    env, step = slot.env, None
                    if env is None:
                        raise VlatrimError(f"slot {k} has no episode to act in")
                    for a in msg.actions:  # the chunk runs open-loop here, no round trip per step
                        step = env.step(a)
                        steps_taken = env.steps
                        if slot.record:
                            slot.frames.append(step.image)
                        if step.success or step.terminated or env.steps >= msg.max_steps:
                            break
                    done = bool(step.success or step.terminated) or env.steps >= msg.max_steps
                    conn.send(observed(k, slot, step, done))
                else:
                    raise RuntimeError(f"unknown message {type(msg).__name__}")
            except Exception as e:  # the episode fails; the worker lives on with a fresh env for the slot
                if slot.env is not None:
                    slot.envs = {t: v for t, v in slot.envs.items() if v is not slot.env}
                    try:
                        slot.env.close()
                    except Exception:
                        pass
                    slot.env = None
                tb = traceback.format_exc(limit=3).strip().splitlines()
                conn.send(Failed(k, f"{type(e).__name__}: {e}", tb[-3:], steps_taken))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        for slot in slots.values():
            for e in slot.envs.values():
                e.close()


class WorkerProcess:
    """One spawned worker process and the main process's end of its pipe.

    Args:
        ctx: a ``multiprocessing`` context (spawn).
        backend, spec, send_images: passed to ``worker_main``.
    """

    def __init__(self, ctx: Any, backend: SimBackend, spec: EnvSpec, send_images: bool) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, os.getpid(), backend, spec, send_images), daemon=True)
        self.proc.start()
        child.close()

    def wait_ready(self) -> None:
        """Block until the worker has started (``Ready``); a worker that died raises ``VlatrimError``."""
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            raise VlatrimError(f"an evaluation worker failed to start (exit code {self.proc.exitcode})") from None
        if not isinstance(msg, Ready):
            raise RuntimeError(f"an evaluation worker sent {type(msg).__name__} before Ready")

    def send(self, msg: Reset | Act | Stop) -> None:
        """Send ``msg``; a dead worker is ignored here (the next wait sees its sentinel or EOF)."""
        try:
            self.conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    def close(self) -> None:
        """Stop the worker (terminate it if it does not exit within 10 s) and close the pipe."""
        self.send(Stop())
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        self.conn.close()
