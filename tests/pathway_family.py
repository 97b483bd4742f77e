"""A policy family defined outside the library: a tiny VLA with vision, language and action block lists.

It is what a user who brings their own VLA writes: one module with the model and a ``PolicyFamily``
subclass, registered with ``register_family``. Nothing in ``src/`` knows it. The action expert's layer
``i`` reads the language backbone's hidden state after layer ``i`` (as SmolVLA's expert reads VLM
layer ``i``), so the family couples the two block lists one-to-one.

Shapes: B batch, N = 4 image tokens, L instruction tokens, T chunk steps, D = 32 backbone width.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers as tf
from safetensors.torch import load_file, save_file
from torch import nn

from vlatrim.data.frames import ChunkDataset, read_demo_frames, split_episodes
from vlatrim.errors import VlatrimError
from vlatrim.families import LossInfo, PolicyFamily, SampleSet, register_family
from vlatrim.families.base import NoSamples
from vlatrim.prune.plan import Coupling
from vlatrim.sim.policy import PolicyIO

MODEL_TYPE = "test_pathway_vla"
VISION_PATH, ACTION_PATH = "vision.layers", "action_layers"


@dataclass
class PathwayConfig:
    image_size: int = 16  # square RGB images
    state_dim: int = 4
    action_dim: int = 4
    chunk_size: int = 2
    max_text_tokens: int = 6
    num_vision_layers: int = 2
    num_action_layers: int = 3  # one per language layer: layer i reads language layer i
    language: dict[str, Any] = field(default_factory=lambda: tf.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).to_dict())
    stats: dict[str, list[float]] = field(default_factory=lambda: {
        "state_mean": [0.0] * 4, "state_std": [1.0] * 4, "action_mean": [0.0] * 4, "action_std": [1.0] * 4})


def _layer(width: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, batch_first=True, norm_first=True)


class VisionTower(nn.Module):
    def __init__(self, cfg: PathwayConfig) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, cfg.image_size // 2, cfg.image_size // 2)  # (B, 3, H, W) -> (B, 16, 2, 2)
        self.layers = nn.ModuleList([_layer(16) for _ in range(cfg.num_vision_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, 4, 16)
        for layer in self.layers:
            x = layer(x)
        return x


class PathwayVLA(nn.Module):
    def __init__(self, cfg: PathwayConfig) -> None:
        super().__init__()
        self.config = cfg
        self.vision = VisionTower(cfg)
        self.projector = nn.Linear(16, 32)
        self.state_proj = nn.Linear(cfg.state_dim, 32)
        self.backbone = tf.BertModel(tf.BertConfig(**cfg.language), add_pooling_layer=False)
        self.queries = nn.Parameter(torch.randn(cfg.chunk_size, 32) * 0.02)  # (T, D)
        self.action_layers = nn.ModuleList([_layer(32) for _ in range(cfg.num_action_layers)])
        self.head = nn.Linear(32, cfg.action_dim)

    def _norm(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.config.stats
        return torch.tensor(s[f"{name}_mean"]), torch.tensor(s[f"{name}_std"])

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Byte-hash tokens (no tokenizer files): ids (B, L), mask (B, L)."""
        L, V = self.config.max_text_tokens, self.config.language["vocab_size"]
        ids = torch.zeros(len(texts), L, dtype=torch.long)
        mask = torch.zeros(len(texts), L, dtype=torch.long)
        for i, t in enumerate(texts):
            words = t.split()[:L]
            ids[i, :len(words)] = torch.tensor([1 + zlib.crc32(w.encode()) % (V - 1) for w in words])
            mask[i, :len(words)] = 1
        return ids, mask

    def actions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised action chunk (B, T, A)."""
        img = batch["image"].permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        mean, std = self._norm("state")
        st = self.state_proj((batch["state"].float() - mean) / std)[:, None]  # (B, 1, D)
        txt = self.backbone.get_input_embeddings()(batch["input_ids"])  # (B, L, D)
        x = torch.cat([self.projector(self.vision(img)), st, txt], 1)  # (B, N + 1 + L, D)
        am = batch["attention_mask"]
        mask = torch.cat([am.new_ones(am.shape[0], 5), am], 1)
        hidden = self.backbone(inputs_embeds=x, attention_mask=mask, output_hidden_states=True).hidden_states
        q = self.queries.expand(x.shape[0], -1, -1)  # (B, T, D)
        for i, layer in enumerate(self.action_layers):  # expert layer i reads language layer i
            q = layer(q + hidden[i + 1].mean(1, keepdim=True))
        return self.head(q)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mean, std = self._norm("action")
        target = (batch["action"].float() - mean) / std
        m = batch["action_mask"].float().unsqueeze(-1)  # (B, T, 1)
        err = (self.actions(batch) - target).abs() * m
        return {"loss": err.sum() / (m.sum() * target.shape[-1]).clamp_min(1)}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mean, std = self._norm("action")
        return (self.actions(batch) * std + mean).cpu()  # (B, T, A) environment units


class PathwayPolicy:
    def __init__(self, model: PathwayVLA) -> None:
        self.model = model.eval()
        self.image_size = model.config.image_size
        self.chunk_size = model.config.chunk_size
        self.io = PolicyIO(action_dim=model.config.action_dim, state_dim=model.config.state_dim, cameras=("corner",),
                           image_size=model.config.image_size, chunk_size=model.config.chunk_size)

    def reset(self, n: int) -> None:
        pass

    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        ids, mask = self.model.tokenize(list(obs["instruction"]))
        batch = {"image": torch.as_tensor(obs["image"]), "state": torch.as_tensor(np.asarray(obs["state"])),
                 "input_ids": ids, "attention_mask": mask}
        return np.clip(self.model.predict(batch).numpy(), -1, 1).astype(np.float32)  # (B, T, 4)


@register_family
class PathwayFamily(PolicyFamily):
    name = MODEL_TYPE
    description = "the test suite's three-pathway VLA"
    recovery_methods = ("full", "lora")

    def recognizes(self, path: Path, config: dict[str, Any]) -> bool:
        return config.get("model_type") == MODEL_TYPE

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, PathwayVLA)

    def load(self, path: Path, device: str | torch.device = "cpu", trust_remote_code: bool = False) -> nn.Module:
        raw = json.loads((path / "config.json").read_text())
        raw.pop("model_type")
        model = PathwayVLA(PathwayConfig(**raw))
        model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        return model.to(device).eval()

    def save(self, model: nn.Module, out: Path, destination: Path | None = None) -> None:
        cfg = dataclasses.replace(model.config, language=model.backbone.config.to_dict())
        (out / "config.json").write_text(json.dumps({"model_type": MODEL_TYPE, **dataclasses.asdict(cfg)}))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))

    def loss_info(self, model: nn.Module) -> LossInfo:
        return LossInfo("l1", model.config.chunk_size * model.config.action_dim, "action l1")

    def dataset(self, model: nn.Module, data: Path, split: str = "train", val_fraction: float = 0.1) -> SampleSet:
        frames = read_demo_frames(data)
        if frames.image_size != model.config.image_size:
            raise VlatrimError(f"dataset images are {frames.image_size} px; the model takes {model.config.image_size}")
        train, held = split_episodes(frames, val_fraction)
        eps = {"train": train, "held_out": held, "all": train + held}[split]
        data_ = ChunkDataset(frames, eps, model.config.chunk_size, model.tokenize) if eps else NoSamples()
        return SampleSet(data_, sorted(set(frames.instructions.values())),
                         {"num_episodes": len(eps), "frames": len(frames.images)})

    def predict_batch(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model.predict(batch)

    def position_mask(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor | None:
        am = batch["attention_mask"]  # (B, L): instruction padding; the 4 image tokens and the state are real
        return torch.cat([am.new_ones(am.shape[0], 5), am], 1)  # (B, 5 + L)

    def example_batch(self, model: nn.Module, batch_size: int, generator: torch.Generator,
                      instruction: str) -> dict[str, Any] | None:
        s = model.config.image_size
        ids, mask = model.tokenize([instruction] * batch_size)
        return {"image": torch.randint(0, 256, (batch_size, s, s, 3), generator=generator, dtype=torch.uint8),
                "state": torch.randn(batch_size, 4, generator=generator), "input_ids": ids, "attention_mask": mask}

    def sequence_info(self, model: nn.Module) -> dict[str, Any]:
        return {"image_tokens": 4, "chunk_size": model.config.chunk_size}

    def policy(self, model: nn.Module, device: str | torch.device = "cpu") -> Any:
        return PathwayPolicy(model)

    def couplings(self, model: nn.Module, handle: Any) -> list[Coupling]:
        n = model.config.num_action_layers
        return [Coupling(handle.blocks_path, ACTION_PATH, tuple((i, i) for i in range(n)),
                         reason="action layer i reads language layer i")]

    def after_cut(self, model: nn.Module, kept: dict[str, list[int]]) -> None:
        if VISION_PATH in kept:
            model.config.num_vision_layers = len(kept[VISION_PATH])
        if ACTION_PATH in kept:
            model.config.num_action_layers = len(kept[ACTION_PATH])

    def lora_defaults(self, model: nn.Module) -> tuple[str, tuple[str, ...]]:
        return "backbone", ("head", "queries")
