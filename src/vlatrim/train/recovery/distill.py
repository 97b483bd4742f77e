"""Distillation recovery: the pruned student learns from the demonstrations and from its unpruned teacher.

Loss (all terms in normalized action units, so their scales are comparable):

    task_weight * L_task(student)                               behaviour cloning, the model's own loss
  + action_weight * D(student prediction, teacher prediction)   L1 / MSE (continuous) or KL (discrete)
  + hidden_weight * mean_i mean_b relMSE(h_s[i], h_t[kept[i]])   kept block i against its teacher block

What is compared comes from the model's family (``PolicyFamily.distill_outputs``): the reference VLA's
action chunk, a flow-matching policy's velocity at the same noise and time draws for both models (SmolVLA).
D averages, per sample, over the chunk steps the family marks real (``raw_mask``), then over samples.
``kept[i]`` is the original index of the student's language block i (``prune.json`` ``kept_blocks``), so
block outputs are compared with the teacher block they were cut from, not with the teacher's i-th block.
relMSE is, per sample b, the MSE over its real positions (the family's ``position_mask``) divided by the
teacher output's mean square there (detached): block outputs of a pre-norm decoder grow with depth, and
this keeps each block's term scale-free. Every term is a mean over samples of per-sample values, so a batch
split into equal shares (processes, accumulation micro-batches) averages to the whole batch's value.
Every distillation term is exactly zero when the student equals the teacher.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.train.recovery.base import RECOVERY_METHODS
from vlatrim.train.recovery.full import FullFineTune


def resolve_kept_blocks(ns: int, nt: int, kept_blocks: list[int] | None) -> list[int]:
    """Teacher index of each of the student's ``ns`` blocks (the teacher has ``nt``): ``kept_blocks`` from
    prune.json, or identity for equal depths."""
    if kept_blocks is None:
        if ns != nt:
            raise VlatrimError(f"the student has {ns} blocks and the teacher {nt}, and the student has no prune.json "
                               "kept_blocks to pair them; hidden-state alignment needs it (or --distill-hidden-weight 0)")
        return list(range(ns))
    kept = [int(k) for k in kept_blocks]
    if len(kept) != ns:
        raise VlatrimError(f"prune.json kept_blocks lists {len(kept)} blocks but the student has {ns}")
    if kept != sorted(set(kept)) or (kept and (kept[0] < 0 or kept[-1] >= nt)):
        raise VlatrimError(f"prune.json kept_blocks {kept} are not increasing indices of the teacher's {nt} blocks")
    return kept


@contextlib.contextmanager
def capture_block_outputs(blocks: list[nn.Module], which: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the hidden-state output (B, S, D) of ``blocks[i]`` for each i in ``which`` during the block."""
    store: dict[int, torch.Tensor] = {}
    handles = []
    for i in which:
        def hook(_m, _inp, out, i=i):
            store[i] = out[0] if isinstance(out, (tuple, list)) else out  # BERT layers return tuples
        handles.append(blocks[i].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def action_distill_loss(student_raw: torch.Tensor, teacher_raw: torch.Tensor, distance: str,
                        temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Distance between predictions: (B, T, A) normalized values or (B, T, A, K) bin logits; ``mask`` (B, T)
    keeps the chunk steps to compare (per sample the mean over its kept steps, then the mean over samples)."""
    s, t = student_raw.float(), teacher_raw.float()
    if s.dim() == 4:  # discrete bins: KL(teacher || student) per action dimension, scaled by T^2 as usual
        log_s = F.log_softmax(s / temperature, -1)
        log_t = F.log_softmax(t / temperature, -1)
        per = (log_t.exp() * (log_t - log_s)).sum(-1) * temperature**2  # (B, T, A)
    else:
        per = (s - t).abs() if distance == "l1" else (s - t).square()  # (B, T, A)
    if mask is None:
        return per.mean()
    m = mask.to(per.device, per.dtype)[:, :, None].expand_as(per)
    return ((per * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1.0)).mean()


def hidden_align_loss(student_h: list[torch.Tensor], teacher_h: list[torch.Tensor],
                      mask: torch.Tensor) -> torch.Tensor:
    """Mean over block pairs and samples of each sample's MSE / teacher mean square, over the positions
    where ``mask`` (B, S) is 1.

    Normalized per sample (not over the batch's pooled positions), so that the mean over a batch split
    into equal shares is the batch's value: under DDP / FSDP each process's term, averaged with the
    others' gradients, is exactly the whole batch's term, whatever padding each share holds.
    """
    m = mask.unsqueeze(-1).float()  # (B, S, 1)
    terms = []
    for s, t in zip(student_h, teacher_h):
        s, t = s.float(), t.float()
        scale = (t.square() * m).sum(dim=(1, 2)).detach().clamp_min(1e-12)  # (B,)
        terms.append((((s - t).square() * m).sum(dim=(1, 2)) / scale).mean())  # sum/sum = mean/mean per sample
    return torch.stack(terms).mean()


@RECOVERY_METHODS.register("distill")
class DistillRecovery(FullFineTune):
    """Full fine-tuning of the student (the parameters its family's ``trainable(model, "distill")`` names)
    with task loss + teacher prediction (and hidden-state) distillation."""

    name = "distill"
    needs_teacher = True
    default_lr = 1e-4

    def attach_teacher(self, teacher: nn.Module, student: nn.Module, kept_blocks: list[int] | None) -> None:
        if self.family is None:
            raise VlatrimError("distillation needs the model's policy family")
        self.family.check_teacher(student, teacher)
        d = self.settings.distill
        self.teacher = teacher.eval().requires_grad_(False)
        self.kept: list[int] = []
        self._student_blocks: list[nn.Module] = []
        self._teacher_blocks: list[nn.Module] = []
        if d.hidden_weight > 0:
            hs, ht = self.family.handle(student), self.family.handle(teacher)
            if hs.hidden_size != ht.hidden_size:
                raise VlatrimError(f"hidden-state alignment needs equal widths; student {hs.hidden_size}, "
                                   f"teacher {ht.hidden_size}")
            self.kept = resolve_kept_blocks(len(hs.blocks), len(ht.blocks), kept_blocks)
            self._student_blocks = list(hs.blocks)
            self._teacher_blocks = list(ht.blocks)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        d = self.settings.distill
        device = next(model.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)  # the loop places the student; the frozen teacher follows it once
        align = d.hidden_weight > 0
        student_ids = list(range(len(self.kept))) if align else []
        with capture_block_outputs(self._student_blocks, student_ids) as s_hid, \
                capture_block_outputs(self._teacher_blocks, self.kept) as t_hid:
            out, t_out = self.family.distill_outputs(model, self.teacher, batch)
        kd = action_distill_loss(out["raw"], t_out["raw"], d.action_distance, d.temperature, out.get("raw_mask"))
        result: dict[str, Any] = {k: v for k, v in out.items() if k not in ("raw", "raw_mask", "loss")}
        result.update(task=out["loss"], kd_action=kd)
        total = d.task_weight * out["loss"] + d.action_weight * kd
        if align:
            B, S = s_hid[0].shape[:2]
            mask = self.family.position_mask(getattr(model, "module", model), batch)
            if mask is None:
                mask = torch.ones(B, S, device=device)
            if tuple(mask.shape) != (B, S):
                raise VlatrimError(f"the {self.family.name} family's position mask has shape {tuple(mask.shape)} but its "
                                   f"blocks output {B} x {S} positions; hidden-state alignment cannot pair them")
            hid = hidden_align_loss([s_hid[i] for i in student_ids], [t_hid[k] for k in self.kept], mask.to(device))
            result["kd_hidden"] = hid
            total = total + d.hidden_weight * hid
        result["loss"] = total
        return result
