"""The reference VLA (``model_type`` ``vlatrim_vla``) as a policy family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlatrim.data.frames import ChunkDataset, read_demo_frames, split_episodes
from vlatrim.errors import VlatrimError
from vlatrim.families.base import LossInfo, NoSamples, PolicyFamily, SampleSet, Split, register_family
from vlatrim.models.reference.config import MODEL_TYPE

VIT_LAYERS = "vision.encoder.layers"  # the ViT encoder's blocks (vision pathway)
# Fields of the reference VLA config that define the action space a distillation teacher must share.
_ACTION_SPACE = ("action_dim", "state_dim", "chunk_size", "action_head", "normalization", "image_size")


@register_family
class ReferenceFamily(PolicyFamily):
    """vlatrim's own VLA: vision encoder -> projector -> transformers language backbone -> action head.

    Loss: the action loss of its head (L1 / MSE on normalised actions, or 256-bin cross-entropy).
    Data: image + 4-d state + instruction -> chunk of actions, from a LeRobot v3 dataset. Pruned
    checkpoints with per-block widths load through ``vlatrim.prune.load_pruned``.
    """

    name = "vlatrim_vla"
    description = "the reference VLA trained by `vlatrim train`"
    recovery_methods = ("full", "lora", "distill")

    def recognizes(self, path: Path, config: dict[str, Any]) -> bool:
        return config.get("model_type") == MODEL_TYPE

    def owns(self, model: nn.Module) -> bool:
        from vlatrim.models.reference import ReferenceVLA

        return isinstance(model, ReferenceVLA)

    def load(self, path: Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> nn.Module:
        from vlatrim.prune import load_pruned

        model = load_pruned(path)
        refuse_non_finite(model, path)  # NaN weights would evaluate to 0% success, train to NaN, score nothing
        return model.to(device).eval()

    def save(self, model: nn.Module, out: Path, destination: Path | None = None) -> None:
        model.save_pretrained(out)

    def check_teacher(self, student: nn.Module, teacher: nn.Module) -> None:
        """Refuse a teacher whose action space, chunk length or normalization differs from the student's."""
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

    def loss_info(self, model: nn.Module) -> LossInfo:
        cfg = model.config
        terms = int(cfg.chunk_size) * int(cfg.action_dim)
        if cfg.action_head == "discrete":
            return LossInfo("nll", terms, "action cross-entropy")
        kind = cfg.continuous_loss
        return LossInfo("l1" if kind == "l1" else "mse", terms, f"action {kind}")

    def dataset(self, model: nn.Module, data: Path, split: Split = "train", val_fraction: float = 0.1) -> SampleSet:
        cfg = model.config
        frames = read_demo_frames(data)
        problems = []
        if frames.image_size != cfg.image_size:
            problems.append(f"images are {frames.image_size} px, the model takes {cfg.image_size} px")
        if frames.states.shape[1] != cfg.state_dim:
            problems.append(f"observation.state has {frames.states.shape[1]} dims, the model takes {cfg.state_dim}")
        if frames.actions.shape[1] != cfg.action_dim:
            problems.append(f"action has {frames.actions.shape[1]} dims, the model predicts {cfg.action_dim}")
        if problems:
            raise VlatrimError(f"dataset {str(data)!r} does not fit the model: " + "; ".join(problems))
        train_eps, val_eps = split_episodes(frames, val_fraction)
        episodes = {"train": train_eps, "held_out": val_eps, "all": train_eps + val_eps}[split]
        samples = ChunkDataset(frames, episodes, cfg.chunk_size, model.tokenize) if episodes else NoSamples()
        return SampleSet(samples,
                         sorted(set(frames.instructions.values())),
                         {"dataset": str(data), "split": split, "num_episodes": len(episodes), "frames": int(len(frames.images))},
                         {"frames": frames, "train_episodes": train_eps, "held_out_episodes": val_eps})

    def predict_batch(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Action chunks (B, T, A) in environment units from a batch of ``dataset``."""
        return model.predict_from_batch(batch)

    def position_mask(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor | None:
        # The backbone sees [image tokens | state | instruction (padded) | action queries] (``encode``);
        # only the instruction carries padding.
        mask = batch["attention_mask"]  # (B, L)
        B = mask.shape[0]
        prefix = int(model.config.num_image_tokens) + (model.state_proj is not None)
        ones = mask.new_ones
        return torch.cat([ones(B, prefix), mask, ones(B, int(model.config.chunk_size))], dim=1)  # (B, S)

    @torch.no_grad()
    def sequence_length(self, model: nn.Module, batch: dict[str, Any]) -> int | None:
        # Backbone tokens per sample: image + state + instruction slots + action queries, from one pass.
        h, out = model.encode(batch["image"], batch["state"], batch["input_ids"], batch["attention_mask"])
        return int(out.last_hidden_state.shape[1])

    def example_batch(self, model: nn.Module, batch_size: int, generator: torch.Generator,
                      instruction: str) -> dict[str, Any] | None:
        cfg = model.config
        device = next(model.parameters()).device
        s = cfg.image_size
        ids, mask = model.tokenize([instruction] * batch_size)
        return {"image": torch.randint(0, 256, (batch_size, s, s, 3), generator=generator, dtype=torch.uint8).to(device),
                "state": torch.randn(batch_size, cfg.state_dim, generator=generator).to(device),
                "input_ids": ids.to(device), "attention_mask": mask.to(device)}

    def act(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        h, _ = model.encode(batch["image"], batch["state"], batch["input_ids"], batch["attention_mask"])  # (B, T, D)
        return model.action_normalizer.unnormalize(model.head.decode(model.head(h)))  # (B, T, A)

    def sequence_info(self, model: nn.Module) -> dict[str, Any]:
        cfg = model.config
        return {"image_tokens": int(cfg.num_image_tokens), "state_tokens": 1, "text_tokens": int(cfg.max_text_tokens),
                "action_queries": int(cfg.chunk_size), "chunk_size": int(cfg.chunk_size)}

    def policy(self, model: nn.Module, device: str | torch.device = "cpu") -> Any:
        from vlatrim.models.reference.policy import ReferenceVLAPolicy

        return ReferenceVLAPolicy(model, device=device)

    def after_cut(self, model: nn.Module, kept: dict[str, list[int]]) -> None:
        # The ViT encoder's depth is a VLAConfig field (the conv encoder has no block list to cut).
        if VIT_LAYERS in kept:
            model.config.vit_depth = len(kept[VIT_LAYERS])
            model.vision.encoder.num_layers = len(kept[VIT_LAYERS])

    def lora_defaults(self, model: nn.Module) -> tuple[str, tuple[str, ...]]:
        # Adapters on the language backbone; the small head and the action queries train in full.
        return "backbone", ("head", "action_queries")


def refuse_non_finite(model: nn.Module, path: str | Path) -> None:
    """Refuse a checkpoint whose weights hold NaN or Inf, naming the first such tensor (by state-dict
    order) and how many of its values are not finite. Any family's ``load`` may call it.

    Raises:
        VlatrimError: ``checkpoint 'DIR' holds non-finite weights: tensor 'NAME' has N NaN/Inf values (of M)``.
    """
    for name, t in model.state_dict().items():
        if not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise VlatrimError(f"checkpoint {str(path)!r} holds non-finite weights: tensor {name!r} has {bad} "
                               f"NaN/Inf value{'s' if bad != 1 else ''} (of {t.numel()}); it cannot be evaluated, "
                               "recovered or analysed")
