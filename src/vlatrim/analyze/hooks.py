"""Forward hooks on residual blocks: read their input/output, skip them, or gate their update.

A block maps hidden states h (leading dims, D) to h' = h + u (its residual update u, attention + MLP).
Hooks see ``h`` (first positional argument or ``hidden_states=``) and ``h'`` (a tensor, or the first
element of a tuple) and may replace ``h'``; nothing in the model is edited, so leaving the context
restores it exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

BlockFn = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block was called with."""
    if args and torch.is_tensor(args[0]):
        return args[0]
    for key in ("hidden_states", "src", "x", "hidden_state"):
        if torch.is_tensor(kwargs.get(key)):
            return kwargs[key]
    raise TypeError("block was called without a hidden-state tensor as first argument or hidden_states=")


def block_output(out: Any) -> torch.Tensor:
    """The hidden states a block returned (tensor or first element of a tuple)."""
    return out if torch.is_tensor(out) else out[0]


def _replace(out: Any, new: torch.Tensor) -> Any:
    if torch.is_tensor(out):
        return new
    return (new, *out[1:]) if isinstance(out, tuple) else type(out)([new, *out[1:]])


@contextlib.contextmanager
def block_hooks(blocks: Sequence[nn.Module], fn: BlockFn) -> Iterator[None]:
    """Call ``fn(i, h_in, h_out)`` after block ``i`` runs; a returned tensor replaces its output."""
    handles = []

    def make(i: int):
        def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            new = fn(i, block_input(args, kwargs), block_output(out))
            return None if new is None else _replace(out, new)

        return hook

    try:
        for i, b in enumerate(blocks):
            handles.append(b.register_forward_hook(make(i), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def skip_blocks(blocks: Sequence[nn.Module], skip: set[int] | Sequence[int]) -> Iterator[None]:
    """Blocks in ``skip`` pass their input through unchanged (as if removed from the list)."""
    skip = set(skip)
    with block_hooks(blocks, lambda i, h, o: h if i in skip else None):
        yield


class RowGates:
    """Virtual gates on each block's residual update, one per leading row (per sample), all at 1.

    Inside ``attach``, block i returns ``h + g_i[r] * (h' - h)`` with ``g_i`` a leaf tensor of shape
    (rows,) created on the block's first call, so one backward gives d loss / d g_i[r] for every block
    and every sample at once. Rows are the leading dimension of the hidden states (the batch; for a
    packed vision tower without a batch dimension, its tokens).
    """

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self.blocks = list(blocks)
        self.gates: list[torch.Tensor | None] = [None] * len(self.blocks)

    def _fn(self, i: int, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        g = self.gates[i]
        if g is None or g.shape[0] != h.shape[0]:
            g = torch.ones(h.shape[0], device=h.device, dtype=torch.float32, requires_grad=True)
            self.gates[i] = g
        gv = g.to(o.dtype).view(-1, *([1] * (o.dim() - 1)))  # (rows, 1, ..., 1)
        return h + gv * (o - h)

    @contextlib.contextmanager
    def attach(self) -> Iterator[RowGates]:
        self.gates = [None] * len(self.blocks)
        with block_hooks(self.blocks, self._fn):
            yield self

    def used(self) -> list[torch.Tensor]:
        """The gates that the last forward created (blocks never called have none)."""
        return [g for g in self.gates if g is not None]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients (so a backward computes only what the gates need)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


class Boundaries:
    """Hidden states at a block list's boundaries during one forward: x_0 = input of block 0 and
    x_{l+1} = output of block l, so block l maps x_l -> x_{l+1}. Read ``states`` after the forward."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self.blocks = list(blocks)
        self.states: list[torch.Tensor | None] = [None] * (len(self.blocks) + 1)

    def _fn(self, i: int, h: torch.Tensor, o: torch.Tensor) -> None:
        if i == 0:
            self.states[0] = h.detach()
        self.states[i + 1] = o.detach()
        return None

    @contextlib.contextmanager
    def attach(self) -> Iterator[Boundaries]:
        self.states = [None] * (len(self.blocks) + 1)
        with block_hooks(self.blocks, self._fn):
            yield self


@contextlib.contextmanager
def input_hooks(modules: Sequence[nn.Module], fn: Callable[[int, torch.Tensor], torch.Tensor | None]) -> Iterator[None]:
    """Call ``fn(i, x)`` on the first input of module ``i`` before it runs; a returned tensor replaces it."""
    handles = []

    def make(i: int):
        def hook(mod: nn.Module, args: tuple) -> Any:
            new = fn(i, args[0])
            return None if new is None else (new, *args[1:])

        return hook

    try:
        for i, m in enumerate(modules):
            handles.append(m.register_forward_pre_hook(make(i)))
        yield
    finally:
        for h in handles:
            h.remove()
