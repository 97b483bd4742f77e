"""What the adapters report about a model: plain dataclasses, no torch logic.

All module names inside a block (``AttentionLayout.q`` etc.) are dotted paths *relative to the block*,
so a cutter does ``block.get_submodule(layout.attention.q)``; ``BlockLayout.path`` and the handle's
``*_path`` fields are dotted paths from the root model (``root.get_submodule(path)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

Pathway = Literal["language", "vision", "action"]


@dataclass(frozen=True)
class AttentionLayout:
    """Attention projections of one block, read from the tensors (true after any cut).

    Separate projections set ``q``/``k``/``v``; a fused projection sets ``qkv`` and ``qkv_split``
    (output rows of q, k, v in that order). ``o`` is always set.
    """

    module: str  # the attention module (relative to the block), e.g. "self_attn" / "attention.self"
    num_heads: int  # query heads (q rows / head_dim)
    num_kv_heads: int  # key/value heads (k rows / head_dim); == num_heads without GQA
    head_dim: int  # width of one head
    o: str  # output projection Linear (in = num_heads * head_dim, out = hidden)
    q: str | None = None  # query Linear (out = num_heads * head_dim)
    k: str | None = None  # key Linear (out = num_kv_heads * head_dim)
    v: str | None = None  # value Linear (out = num_kv_heads * head_dim)
    qkv: str | None = None  # fused q/k/v Linear (Phi-3 qkv_proj, Qwen2-VL vision qkv)
    qkv_split: tuple[int, int, int] | None = None  # rows of q, k, v inside the fused Linear

    @property
    def fused(self) -> bool:
        return self.qkv is not None

    @property
    def kv_groups(self) -> int:
        """Query heads per KV head (GQA group size); a KV head can only be cut with its whole group."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class MLPLayout:
    """Feed-forward projections of one block.

    ``kind``: ``"gated"`` (act(gate(x)) * up(x) -> down; Llama/Qwen/Gemma/Mistral), ``"fused_gated"``
    (one ``gate_up`` Linear whose first half is the gate; Phi-3), or ``"plain"`` (act(up(x)) -> down;
    BERT ``intermediate.dense`` / ``output.dense``, CLIP/SigLIP ``fc1``/``fc2``).
    """

    kind: Literal["gated", "fused_gated", "plain"]
    intermediate_size: int  # number of hidden channels (rows of up / columns of down)
    down: str  # Linear intermediate -> hidden
    up: str | None = None  # Linear hidden -> intermediate (gated and plain)
    gate: str | None = None  # gate Linear (gated only)
    gate_up: str | None = None  # fused [gate; up] Linear, 2 * intermediate rows (fused_gated only)
    activation: str = ""  # activation name from the config (e.g. "silu") or the module's class


@dataclass(frozen=True)
class BlockLayout:
    """One residual block: where it is, what its attention and MLP look like, how many parameters."""

    index: int  # position in its block list
    path: str  # dotted path from the root model
    num_params: int  # parameters inside the block
    attention: AttentionLayout | None  # None only for vision/action blocks of an unknown layout
    mlp: MLPLayout | None  # None only for vision/action blocks of an unknown layout


@dataclass
class BlockList:
    """A list of residual blocks found in the model (the backbone, a vision tower, an action head)."""

    path: str  # dotted path of the nn.ModuleList from the root model
    pathway: Pathway  # which pathway it belongs to
    modules: nn.ModuleList  # the blocks themselves
    layouts: list[BlockLayout]  # one per block
    component_path: str  # the module that holds the whole pathway (e.g. "model.vision_tower")

    def __len__(self) -> int:
        return len(self.modules)


@dataclass
class BackboneHandle:
    """The language backbone located inside a model (``locate_backbone``), plus the other pathways.

    Cuts go through this handle: ``blocks`` is the ModuleList to shorten, ``config`` is the config that
    must stay true to the tensors (the text config for a VLM; it is the same object as the VLM's
    ``config.text_config``), and each ``layouts[i]`` names the projections to slice.
    """

    root: nn.Module  # the model that was given
    owner: nn.Module  # the transformers module that owns the backbone config (e.g. LlamaModel)
    owner_path: str  # its dotted path from root ("" when root itself)
    config: Any  # the (text) config that cuts must keep true (a transformers PretrainedConfig)
    blocks_path: str  # dotted path of the block ModuleList from root
    blocks: nn.ModuleList  # the blocks
    layouts: list[BlockLayout]  # per block: attention and MLP layout
    hidden_size: int  # residual width
    vocab_size: int | None  # rows of the token embedding (None when there is none)
    embedding_path: str | None  # token embedding module from root
    lm_head_path: str | None  # output projection to the vocabulary from root, if any
    lm_head_tied: bool  # lm_head shares its weight with the token embedding
    is_decoder: bool  # decoder family (Llama, Gemma, ...) vs encoder (BERT/MiniLM)
    causal: bool  # the backbone's self-attention is causal (False for BERT and PaliGemma's prefix-LM)
    vision: list[BlockList] = field(default_factory=list)  # vision-encoder block lists
    action: list[BlockList] = field(default_factory=list)  # action-head / expert block lists

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_path(self, i: int) -> str:
        """Dotted path from root of block ``i``."""
        return f"{self.blocks_path}.{i}"

    def module(self, path: str) -> nn.Module:
        """The module at a dotted path from root."""
        return self.root.get_submodule(path)

    def pathways(self) -> dict[str, list[BlockList]]:
        """All block lists by pathway, the backbone first."""
        lang = BlockList(self.blocks_path, "language", self.blocks, self.layouts, self.owner_path)
        return {"language": [lang], "vision": list(self.vision), "action": list(self.action)}
