"""Model adapters: locate the language backbone (and vision / action blocks) inside any supported model.

The model contract (docs/architecture.md): ``locate_backbone(model) -> BackboneHandle`` finds, by
structure, the block list, per-block attention and MLP projections, embeddings, LM head and the config
that cuts must keep true, in transformers text models (Llama, Qwen2/3, Gemma/2/3, Mistral, Phi-3, BERT,
...), VLMs (LLaVA, PaliGemma, Idefics3/SmolVLM, Qwen2-VL) and VLAs that hold one of those.
"""

from vlatrim.models.adapters.describe import components, describe, inspect_model, summary_text
from vlatrim.models.adapters.layout import AttentionLayout, BackboneHandle, BlockLayout, BlockList, MLPLayout
from vlatrim.models.adapters.load import load_model
from vlatrim.models.adapters.locate import find_block_lists, locate_backbone
from vlatrim.models.adapters.rules import ATTENTION_RULES, MLP_RULES, parse_attention, parse_mlp
from vlatrim.models.params import count_params

__all__ = [
    "ATTENTION_RULES", "MLP_RULES", "AttentionLayout", "BackboneHandle", "BlockLayout", "BlockList",
    "MLPLayout", "components", "count_params", "describe", "find_block_lists", "inspect_model", "load_model", "locate_backbone",
    "parse_attention", "parse_mlp", "summary_text",
]
