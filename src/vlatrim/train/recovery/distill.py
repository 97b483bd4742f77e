"""Distillation recovery: the pruned student learns from the demonstrations and from its unpruned teacher.

Loss (all terms in normalized action units, so their scales are comparable):

    task_weight * L_task(student)                               behaviour cloning, the model's own loss
  + action_weight * D(student chunk, teacher chunk)             L1 / MSE (continuous) or KL (discrete)
  + hidden_weight * mean_i mean_b relMSE(h_s[i], h_t[kept[i]])   kept block i against its teacher block

``kept[i]`` is the original index of the student's block i (``prune.json`` ``kept_blocks``), so block
outputs are compared with the teacher block they were cut from, not with the teacher's i-th block.
relMSE is, per sample b, the MSE over its non-padding positions divided by the teacher output's mean
square there (detached): block outputs of a pre-norm decoder grow with depth, and this keeps each
block's term scale-free. Every term is a mean over samples of per-sample values, so a batch split
into equal shares (processes, accumulation micro-batches) averages to the whole batch's value.
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
from vlatrim.train.recovery.base import RECOVERY_METHODS, RecoveryMethod

# Fields of the reference VLA config that define the action space the two models must share.
_ACTION_SPACE = ("action_dim", "state_dim", "chunk_size", "action_head", "normalization", "image_size")


def _blocks(model: nn.Module) -> list[nn.Module]:
    from vlatrim.models.adapters import locate_backbone

    return list(locate_backbone(model).blocks)


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a teacher whose action space, chunk length or normalization differs from the student's.

    Raises:
        VlatrimError: naming the first field that differs and both values.
    """
    fields = _ACTION_SPACE + (("n_bins",) if student.config.action_head == "discrete" else ())
    for f in fields:
        a, b = getattr(student.config, f), getattr(teacher.config, f)
        if a != b:
            raise VlatrimError(f"teacher {f} is {b!r} but the student's is {a!r}; distil from a teacher with the "
                               "student's action space (the model it was pruned from)")
    s_stats, t_stats = student.normalization_stats(), teacher.normalization_stats()
    for key in s_stats:
        for stat in s_stats[key]:
            if s_stats[key][stat] != t_stats[key][stat]:
                raise VlatrimError(f"teacher normalization {key}.{stat} differs from the student's; its actions "
                                   "would be in other units (distil from the model the student was pruned from)")


def resolve_kept_blocks(student: nn.Module, teacher: nn.Module, kept_blocks: list[int] | None) -> list[int]:
    """Teacher index of each student block: ``kept_blocks`` from prune.json, or identity for equal depths."""
    ns, nt = len(_blocks(student)), len(_blocks(teacher))
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
                        temperature: float = 1.0) -> torch.Tensor:
    """Distance between action predictions: (B, T, A) normalized values or (B, T, A, K) bin logits."""
    s, t = student_raw.float(), teacher_raw.float()
    if s.dim() == 4:  # discrete bins: KL(teacher || student) per action dimension, scaled by T^2 as usual
        log_s = F.log_softmax(s / temperature, -1)
        log_t = F.log_softmax(t / temperature, -1)
        return (log_t.exp() * (log_t - log_s)).sum(-1).mean() * temperature**2
    return (s - t).abs().mean() if distance == "l1" else (s - t).square().mean()


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
class DistillRecovery(RecoveryMethod):
    """Full fine-tuning of the student with task loss + teacher action (and hidden-state) distillation."""

    name = "distill"
    needs_teacher = True
    default_lr = 1e-4

    def attach_teacher(self, teacher: nn.Module, student: nn.Module, kept_blocks: list[int] | None) -> None:
        check_teacher(student, teacher)
        d = self.settings.distill
        self.teacher = teacher.eval().requires_grad_(False)
        self.kept: list[int] = []
        if d.hidden_weight > 0:
            hs, ht = student.backbone.config.hidden_size, teacher.backbone.config.hidden_size
            if hs != ht:
                raise VlatrimError(f"hidden-state alignment needs equal widths; student {hs}, teacher {ht}")
            self.kept = resolve_kept_blocks(student, teacher, kept_blocks)
            self._student_blocks = _blocks(student)
            self._teacher_blocks = _blocks(teacher)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        d = self.settings.distill
        ref = batch["image"]
        if next(self.teacher.parameters()).device != ref.device:
            self.teacher.to(ref.device)  # the loop places the student; the frozen teacher follows it once
        align = d.hidden_weight > 0
        student_ids = list(range(len(self.kept))) if align else []
        with capture_block_outputs(getattr(self, "_student_blocks", []), student_ids) as s_hid:
            out = model(batch)
        t_batch = batch
        if "teacher_input_ids" in batch:  # the student's vocabulary was cut: the teacher reads its own ids
            t_batch = {**batch, "input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]}
        with torch.no_grad(), capture_block_outputs(getattr(self, "_teacher_blocks", []), self.kept) as t_hid:
            t_out = self.teacher(t_batch)
        kd = action_distill_loss(out["raw"], t_out["raw"], d.action_distance, d.temperature)
        result: dict[str, Any] = {"task": out["loss"], "kd_action": kd, "l1": out["l1"], "mse": out["mse"]}
        total = d.task_weight * out["loss"] + d.action_weight * kd
        if align:
            B, S = s_hid[0].shape[:2]
            am = batch["attention_mask"]  # (B, L): the instruction's padding; every other position is real
            T = self.teacher.config.chunk_size
            n_img = S - am.shape[1] - T  # image tokens + the state token come first
            mask = torch.cat([am.new_ones(B, n_img), am, am.new_ones(B, T)], dim=1)  # (B, S)
            hid = hidden_align_loss([s_hid[i] for i in student_ids], [t_hid[k] for k in self.kept], mask)
            result["kd_hidden"] = hid
            total = total + d.hidden_weight * hid
        result["loss"] = total
        return result
