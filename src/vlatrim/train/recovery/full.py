"""Full fine-tuning: every parameter of the pruned VLA trains on the task loss."""

from __future__ import annotations

from vlatrim.train.recovery.base import RECOVERY_METHODS, RecoveryMethod


@RECOVERY_METHODS.register("full")
class FullFineTune(RecoveryMethod):
    """Behaviour cloning of the whole pruned model (the base class's defaults are exactly this)."""

    name = "full"
    default_lr = 1e-4
