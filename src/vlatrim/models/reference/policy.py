"""The reference VLA as a closed-loop policy (``vlatrim.sim.policy`` contract); its family
(``vlatrim.families.reference``) hands it to the evaluator."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlatrim.models.reference.model import ReferenceVLA
from vlatrim.sim.policy import PolicyIO


class ReferenceVLAPolicy:
    """Maps a batch of observations to action chunks with a trained ``ReferenceVLA``.

    Args:
        model: the trained model (put in eval mode here).
        device: where inference runs.
    """

    def __init__(self, model: ReferenceVLA, device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.chunk_size = model.config.chunk_size
        self.image_size = model.config.image_size  # the evaluator renders at this size
        cfg = model.config
        # The image is Meta-World's corner camera, the one `vlatrim data metaworld` records by default.
        self.io = PolicyIO(action_dim=cfg.action_dim, state_dim=cfg.state_dim if cfg.use_state else None,
                           cameras=("corner",), image_size=cfg.image_size, chunk_size=cfg.chunk_size)
        self.name = f"vlatrim_vla({model.config.backbone_name or type(model.backbone).__name__})"

    def unknown_tokens(self, instructions: list[str]) -> list[tuple[int, int]]:
        """(tokens, unknown tokens) of each instruction as the model reads it. After a vocabulary cut the
        tokenizer maps words whose pieces were removed to its unknown token: the evaluator reports that."""
        ids, mask = self.model.tokenize(instructions)
        unk = getattr(self.model.tokenizer, "unk_token_id", None)
        real = mask.bool()
        unknown = (ids == unk) & real if unk is not None else torch.zeros_like(real)
        return [(int(r.sum()), int(u.sum())) for r, u in zip(real, unknown, strict=True)]

    def reset(self, n: int) -> None:
        """Nothing to reset: the model is stateless between observations."""

    def predict(self, obs: dict[str, Any]) -> np.ndarray:
        """``obs["image"]`` uint8 (B, H, W, 3), ``obs["state"]`` (B, 4), ``obs["instruction"]`` list of B str
        -> float32 (B, T, 4) in the environment's action space, clipped to [-1, 1]."""
        chunk = self.model.predict_action(obs["image"], obs["state"], list(obs["instruction"]))
        return np.clip(chunk.numpy(), -1.0, 1.0).astype(np.float32)
