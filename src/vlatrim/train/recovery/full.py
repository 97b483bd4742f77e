"""Full fine-tuning: the pruned VLA trains on the task loss, every parameter its family says full trains."""

from __future__ import annotations

from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.train.recovery.base import RECOVERY_METHODS, RecoveryMethod


@RECOVERY_METHODS.register("full")
class FullFineTune(RecoveryMethod):
    """Behaviour cloning of the pruned model: the parameters its family's ``trainable(model, "full")`` names
    train (by default, those that require grad as loaded)."""

    name = "full"
    default_lr = 1e-4

    def prepare(self, student: nn.Module) -> nn.Module:
        if self.family is None:
            return student
        names = set(self.family.trainable(student, self.name))
        params = dict(student.named_parameters())
        unknown = sorted(names - params.keys())
        if unknown:
            raise VlatrimError(f"the {self.family.name} family names parameters to train that the model does not have: "
                               f"{', '.join(unknown[:3])}")
        for n, p in params.items():
            p.requires_grad_(n in names)
        return student
