"""Structural pruning surgery: remove blocks, attention heads (GQA-aware), MLP channels and vocabulary
from a model's language backbone, keep its config true to its tensors, and save a checkpoint that
reloads.

Layers: ``ops`` / ``depth`` / ``width`` / ``vocab`` are the cutters (they take indices);
``methods`` holds the selectors that turn a request or scores into a ``PrunePlan``; ``surgery``
carries a plan out through the backbone handle; ``save`` writes and loads checkpoints; ``api`` ties
them together for the CLI.
"""

from vlatrim.prune.plan import PrunePlan
from vlatrim.prune.save import load_pruned, load_tokenizer, narrow_to_recorded_widths, save_pruned
from vlatrim.prune.surgery import SurgeryResult, apply_plan

__all__ = ["PrunePlan", "SurgeryResult", "apply_plan", "load_pruned", "load_tokenizer", "narrow_to_recorded_widths", "save_pruned"]
