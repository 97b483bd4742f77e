"""The reference VLA: vision encoder -> projector -> language backbone -> parallel action head.

Token sequence fed to the backbone through ``inputs_embeds`` (shape notation: B batch, N image
tokens, L instruction tokens, T chunk length / action queries, D backbone width, A action dims):

    [ image tokens (N) | state token (1) | instruction tokens (L) | action queries (T) ]

Action queries come last, so a causal decoder backbone (Llama, Qwen2) lets them see everything, and
an encoder backbone (BERT / MiniLM) attends both ways. Padded instruction positions are masked out
with the attention mask. The head reads the backbone's last hidden states at the T query positions
and decodes the whole chunk in one pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.models.backbones import Backbone, build_backbone_from_config, load_backbone
from vlatrim.models.checkpoint import load_weights, read_config, write_checkpoint
from vlatrim.models.reference.config import MODEL_TYPE, VLAConfig
from vlatrim.models.reference.heads import ACTION_HEADS
from vlatrim.models.reference.normalization import ACTION_KEY, STATE_KEY, Normalizer
from vlatrim.models.reference.vision import VISION_ENCODERS
from vlatrim.utils.io import read_json

NORMALIZATION_FILE = "normalization.json"
PER_BLOCK_WIDTHS_KEY = "vlatrim_block_widths"  # written into the backbone config by vlatrim.prune
TOKENIZER_DIR = "tokenizer"  # a subdirectory: the root config.json is the VLA's, not a tokenizer's


class ReferenceVLA(nn.Module):
    """A small VLA built like OpenVLA-OFT / SmolVLA around a real transformers language backbone.

    Args:
        config: the VLA architecture.
        backbone: the transformers base model (kept as ``self.backbone`` with its own class and
            config, so adapters, analysis and pruning see the real architecture).
        tokenizer: tokenizer of the instructions; its ids must fit the backbone's vocabulary.
    """

    model_type = MODEL_TYPE

    def __init__(self, config: VLAConfig, backbone: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        d = backbone.config.hidden_size
        encoder_cls = VISION_ENCODERS.get(config.vision_encoder)
        self.vision = encoder_cls(config)
        # Two-layer MLP projector, as in LLaVA-1.5 / OpenVLA, from vision width to backbone width.
        self.projector = nn.Sequential(nn.Linear(encoder_cls.out_dim(config), d), nn.GELU(), nn.Linear(d, d))
        # No state token with use_state=False: nothing to train, nothing in the checkpoint.
        self.state_proj = nn.Linear(config.state_dim, d) if config.use_state else None
        self.action_queries = nn.Parameter(torch.randn(config.chunk_size, d) * 0.02)  # (T, D)
        self.head = ACTION_HEADS.get(config.action_head)(config, d)
        self.state_normalizer = Normalizer(config.state_dim, config.normalization)
        self.action_normalizer = Normalizer(config.action_dim, config.normalization)

    # ------------------------------------------------------------------ construction / persistence
    @classmethod
    def from_backbone(cls, config: VLAConfig, backbone: Backbone | str) -> ReferenceVLA:
        """A fresh VLA around a backbone spec (see ``vlatrim.models.backbones``) or a resolved one.

        New modules draw from torch's global RNG: seed first for reproducible initialisation.
        """
        if isinstance(backbone, str):
            backbone = load_backbone(backbone)
        if not config.backbone_name:
            config.backbone_name = backbone.name
        return cls(config, backbone.model, backbone.tokenizer)

    def set_normalization(self, stats: dict[str, Any]) -> None:
        """Set dataset statistics: ``{"observation.state": {mean, std, min, max}, "action": {...}}``."""
        for key, norm in ((STATE_KEY, self.state_normalizer), (ACTION_KEY, self.action_normalizer)):
            if key not in stats:
                raise VlatrimError(f"normalization statistics lack feature {key!r}")
            norm.set_stats(stats[key], key)

    def normalization_stats(self) -> dict[str, Any]:
        return {STATE_KEY: self.state_normalizer.stats(), ACTION_KEY: self.action_normalizer.stats()}

    def checkpoint_config(self) -> dict[str, Any]:
        """What ``config.json`` holds: model_type, the VLA fields, and the live backbone config."""
        return {"model_type": MODEL_TYPE, **self.config.to_dict(), "backbone": self.backbone.config.to_dict()}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write an HF-style checkpoint: config.json, model.safetensors, normalization.json, tokenizer/.

        The backbone's current transformers config is stored as ``config.json["backbone"]``, so a
        pruned backbone (fewer blocks / heads / channels) reloads with its new shape.
        """
        return write_checkpoint(path, self.checkpoint_config(), self,
                                extra_json={NORMALIZATION_FILE: self.normalization_stats()},
                                write_extra=lambda d: self.tokenizer.save_pretrained(str(d / TOKENIZER_DIR)))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        narrow: Callable[[nn.Module], Any] | None = None) -> ReferenceVLA:
        """Load a checkpoint written by ``save_pretrained`` (no pickle, no download, no remote code).

        Args:
            path: checkpoint directory.
            device: where the model goes.
            narrow: for a checkpoint whose backbone blocks were cut to different widths (its backbone
                config records ``vlatrim_block_widths``), the function that cuts the freshly built
                blocks to those widths before the weights load: ``vlatrim.prune.narrow_to_recorded_widths``
                (``vlatrim.prune.load_pruned`` passes it).

        Returns the model in eval mode on ``device``. Missing or corrupted files raise VlatrimError.
        """
        from transformers import AutoTokenizer

        path = Path(path)
        raw = read_config(path, MODEL_TYPE)
        fields = {k: v for k, v in raw.items() if k not in ("model_type", "backbone")}
        if not isinstance(raw.get("backbone"), dict):
            raise VlatrimError(f"checkpoint config {str(path / 'config.json')!r} has no 'backbone' config")
        config = VLAConfig.from_dict(fields)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path / TOKENIZER_DIR), local_files_only=True)
        except (OSError, ValueError) as e:
            raise VlatrimError(f"checkpoint {str(path)!r} has no readable tokenizer ({str(e).splitlines()[0]})") from None
        # The random initialisation below is overwritten by the weights; keep the caller's RNG as it was.
        with torch.random.fork_rng(devices=[]):
            model = cls(config, build_backbone_from_config(raw["backbone"]), tokenizer)
        if PER_BLOCK_WIDTHS_KEY in raw["backbone"]:
            # Blocks cut to different widths: a transformers config cannot express them, so the pruning
            # surgery records them and cuts the freshly built blocks to match before the weights load.
            if narrow is None:
                raise VlatrimError(f"checkpoint {str(path)!r} has blocks of different widths; load it with "
                                   "vlatrim.prune.load_pruned")
            narrow(model)
        load_weights(path, model, device="cpu")
        model.set_normalization(read_json(path / NORMALIZATION_FILE, what="normalization statistics"))
        return model.to(device).eval()

    # ------------------------------------------------------------------ forward
    def tokenize(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instructions -> (input_ids (B, L), attention_mask (B, L)), padded/truncated to max_text_tokens."""
        enc = self.tokenizer(list(instructions), padding="max_length", truncation=True,
                             max_length=self.config.max_text_tokens, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def _check_images(self, images: torch.Tensor) -> None:
        s = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (s, s, 3):
            raise VlatrimError(
                f"images have shape {tuple(images.shape)}; the model expects (B, {s}, {s}, 3) uint8 RGB")

    def encode(self, images: torch.Tensor, states: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor, output_hidden_states: bool = False):
        """Run the backbone over the multimodal sequence.

        Args:
            images: uint8 (B, H, W, 3) RGB.
            states: (B, state_dim) in environment units.
            input_ids, attention_mask: (B, L) instruction tokens.
            output_hidden_states: also return the backbone's per-layer hidden states.

        Returns:
            (query states (B, T, D), backbone output object).
        """
        self._check_images(images)
        x = images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (B, 3, H, W) in [-1, 1]
        img = self.projector(self.vision(x))  # (B, N, D)
        txt = self.backbone.get_input_embeddings()(input_ids)  # (B, L, D)
        B = img.shape[0]
        q = self.action_queries.unsqueeze(0).expand(B, -1, -1)  # (B, T, D)
        parts = [img]
        if self.state_proj is not None:
            parts.append(self.state_proj(self.state_normalizer.normalize(states.float())).unsqueeze(1))  # (B, 1, D)
        prefix = torch.cat(parts, dim=1)  # (B, N[+1], D)
        embeds = torch.cat([prefix, txt.to(img.dtype), q], dim=1)  # (B, N[+1]+L+T, D)
        ones = attention_mask.new_ones
        mask = torch.cat([ones(B, prefix.shape[1]), attention_mask, ones(B, q.shape[1])], dim=1)
        out = self.backbone(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=output_hidden_states)
        T = self.config.chunk_size
        return out.last_hidden_state[:, -T:], out  # (B, T, D)

    def forward(self, batch: dict[str, torch.Tensor], output_hidden_states: bool = False) -> dict[str, Any]:
        """The action loss on a training batch (this is ``compute_loss``; DDP needs it as forward).

        Args:
            batch: ``image`` uint8 (B, H, W, 3), ``state`` (B, S), ``input_ids`` / ``attention_mask``
                (B, L), ``action`` (B, T, A) in environment units, ``action_mask`` bool (B, T) (True
                where the chunk step lies inside the episode); optional ``loss_denominator`` (0-d): the
                chunk-step count the loss divides by instead of this batch's own (see ``heads``).
            output_hidden_states: add the backbone's hidden states (for distillation / analysis).

        Returns:
            ``{"loss": scalar, "l1": scalar, "mse": scalar[, "ce": scalar], "raw": head output,
            "target": normalized targets (B, T, A)[, "hidden_states": tuple]}`` - the scalar entries are
            losses/metrics; ``raw`` is (B, T, A) normalized actions (continuous) or (B, T, A, K) logits.
        """
        h, out = self.encode(batch["image"], batch["state"], batch["input_ids"], batch["attention_mask"],
                             output_hidden_states=output_hidden_states)
        raw = self.head(h)
        target = self.action_normalizer.normalize(batch["action"].float())  # (B, T, A)
        result: dict[str, Any] = dict(self.head.loss(raw, target, batch["action_mask"], batch.get("loss_denominator")))
        result["raw"] = raw
        result["target"] = target
        if output_hidden_states:
            result["hidden_states"] = out.hidden_states
        return result

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The model contract's action loss: same as calling the model on ``batch``."""
        return self(batch)

    @torch.no_grad()
    def predict_action(self, images: np.ndarray | torch.Tensor, states: np.ndarray | torch.Tensor,
                       instructions: Sequence[str]) -> torch.Tensor:
        """Predict an action chunk per observation, in the environment's action units.

        Args:
            images: uint8 (B, H, W, 3) RGB at ``config.image_size``.
            states: (B, state_dim) agent state in environment units.
            instructions: B natural-language instructions.

        Returns:
            float32 (B, T, action_dim) on the CPU; step t of the chunk is the action t steps ahead.
        """
        device = next(self.parameters()).device
        images = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).to(device)
        states = torch.as_tensor(np.asarray(states, dtype=np.float32) if not torch.is_tensor(states) else states)
        if len(instructions) != images.shape[0] or states.shape[0] != images.shape[0]:
            raise VlatrimError(f"predict_action got {images.shape[0]} images, {states.shape[0]} states and "
                               f"{len(instructions)} instructions; they must match")
        if images.dtype != torch.uint8:
            raise VlatrimError(f"images have dtype {images.dtype}; the model expects uint8 RGB")
        ids, mask = self.tokenize(instructions)
        return self.predict_from_batch({"image": images, "state": states.to(device),
                                        "input_ids": ids.to(device), "attention_mask": mask.to(device)})

    @torch.no_grad()
    def predict_from_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Action chunks (B, T, A) in environment units, on the CPU, from an already tokenized batch.

        Runs in eval mode (no dropout) and restores the previous mode afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            h, _ = self.encode(batch["image"], batch["state"], batch["input_ids"], batch["attention_mask"])
            actions = self.action_normalizer.unnormalize(self.head.decode(self.head(h)))
        finally:
            self.train(was_training)
        return actions.float().cpu()  # (B, T, A)
