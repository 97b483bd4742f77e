"""Full fine-tuning: the pruned VLA trains on the task loss, every parameter its family says full trains."""

from __future__ import annotations

from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.train.recovery.base import RECOVERY_METHODS, RecoveryMethod, names_under, top_level


@RECOVERY_METHODS.register("full")
class FullFineTune(RecoveryMethod):
    """Behaviour cloning of the pruned model: the parameters its family's ``trainable(model, "full")`` names
    train (by default, those that require grad as loaded), plus those under ``settings.train_also``."""

    name = "full"
    default_lr = 1e-4

    def prepare(self, student: nn.Module) -> nn.Module:
        params = dict(student.named_parameters())
        names = set(self.family.trainable(student, self.name)) if self.family is not None else \
            {n for n, p in params.items() if p.requires_grad}
        unknown = sorted(names - params.keys())
        if unknown:
            raise VlatrimError(f"the {self.family.name} family names parameters to train that the model does not have: "
                               f"{', '.join(unknown[:3])}")
        for prefix in self.settings.train_also:
            matched = names_under(list(params), prefix)
            if not matched:
                raise VlatrimError(f"--train-also {prefix!r} matches no parameter of the model; give a dotted prefix of "
                                   f"parameter names (they start with {', '.join(top_level(list(params))[:6])})")
            names.update(matched)
        for n, p in params.items():
            p.requires_grad_(n in names)
        return student
