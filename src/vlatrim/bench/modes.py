"""Execution modes a forward pass is timed in: eager, ``torch.compile`` and CUDA-graph replay.

Each builder takes a zero-argument forward (closing over fixed inputs) and returns a callable for
the timing loop, or raises ``ModeUnavailable`` with the reason (CUDA graphs on a CPU, a compiler that
fails); the benchmark records the reason instead of a number.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlatrim.registry import Registry

Forward = Callable[[], object]


class ModeUnavailable(Exception):
    """This execution mode cannot run here; the message says why."""


MODES: Registry[Callable[[Forward, torch.device], Forward]] = Registry("execution mode")


@MODES.register("eager")
def eager(fn: Forward, device: torch.device) -> Forward:
    return fn


@MODES.register("compile")
def compiled(fn: Forward, device: torch.device) -> Forward:
    """``torch.compile(fn)`` (inductor), compiled by one call here so the timing sees only runs."""
    if not hasattr(torch, "compile"):
        raise ModeUnavailable("this torch has no torch.compile")
    try:
        cfn = torch.compile(fn, dynamic=False)
        with torch.no_grad():
            cfn()
    except Exception as e:  # no C++ compiler, an op inductor cannot lower, ...
        torch._dynamo.reset()
        raise ModeUnavailable(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    return cfn


@MODES.register("cuda_graph")
def cuda_graph(fn: Forward, device: torch.device) -> Forward:
    """Capture ``fn`` once in a CUDA graph (fixed input buffers) and time its replay."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ModeUnavailable("CUDA graphs need a CUDA device; skipped on the CPU")
    try:
        with torch.no_grad():
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
                for _ in range(3):
                    fn()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
    except Exception as e:  # an op that syncs with the host, dynamic shapes, ...
        raise ModeUnavailable(f"CUDA graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    return graph.replay
