"""Recovery fine-tuning of pruned VLAs: methods registered by name, run by the one training loop.

``RECOVERY_METHODS`` maps ``full`` / ``lora`` / ``distill`` to their classes (one module each);
``recover()`` runs a method end to end and writes ``recover.json`` with the budget it spent.
"""

from vlatrim.train.recovery import distill, full, lora  # noqa: F401  (register the methods)
from vlatrim.train.recovery.base import RECOVERY_METHODS, RecoveryMethod, load_trainable, save_trainable
from vlatrim.train.recovery.config import DistillSettings, LoraSettings, RecoverySettings
from vlatrim.train.recovery.run import recover, recovery_trainer_config

__all__ = ["RECOVERY_METHODS", "RecoveryMethod", "DistillSettings", "LoraSettings", "RecoverySettings", "recover",
           "recovery_trainer_config", "save_trainable", "load_trainable"]
