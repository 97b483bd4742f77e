"""LoRA recovery through peft: low-rank adapters on the backbone's linear layers, merged on save.

Targets are resolved here to full module paths before peft sees them, so a target that matches
nothing is an error before training (peft would accept a list and adapt only what matched), and
``all-linear`` means every ``nn.Linear`` under the configured scope for any model, not only
transformers ``PreTrainedModel``s. After training the adapters are merged into the weights
(``merge_and_unload``), so the saved model is the plain class with its usual parameter names.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vlatrim.errors import VlatrimError
from vlatrim.train.recovery.base import RECOVERY_METHODS, RecoveryMethod, names_under, top_level
from vlatrim.train.recovery.config import LoraSettings


def resolve_lora_targets(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Full dotted paths of the linear modules ``settings`` asks to adapt.

    Args:
        model: the (unwrapped) model.
        settings: targets and scope.

    Returns:
        Sorted module paths.

    Raises:
        VlatrimError: the scope does not exist or holds no linear layer, or a target matches nothing.
    """
    scope = _defaults(model, settings)[0].strip(".")
    if scope:
        try:
            model.get_submodule(scope)
        except AttributeError:
            tops = sorted(n for n, _ in model.named_children())
            raise VlatrimError(f"LoRA scope {scope!r} is not a module of {type(model).__name__}; valid: "
                               f"{', '.join(tops)} (or '' for the whole model)") from None
    inside = lambda n: not scope or n == scope or n.startswith(scope + ".")
    linear = sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear) and inside(n))
    if not linear:
        raise VlatrimError(f"LoRA scope {scope!r} holds no nn.Linear layer to adapt")
    if settings.targets == ("all-linear",):
        return linear
    chosen: set[str] = set()
    for t in settings.targets:
        t = t.strip(".")
        hit = [n for n in linear if n == t or n.endswith("." + t)]
        if not hit:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise VlatrimError(f"LoRA target {t!r} matches no linear module under {scope or 'the model'!r}; "
                               f"valid names: {', '.join(leaves)} (or all-linear)")
        chosen.update(hit)
    return sorted(chosen)


def _defaults(model: nn.Module, settings: LoraSettings) -> tuple[str, tuple[str, ...]]:
    """(scope, train_also) of ``settings``, each None taken from the model's policy family."""
    if settings.scope is not None and settings.train_also is not None:
        return settings.scope, settings.train_also
    from vlatrim.families import family_for_model

    scope, also = family_for_model(model).lora_defaults(model)
    return (settings.scope if settings.scope is not None else scope,
            settings.train_also if settings.train_also is not None else also)


def _match_prefixes(model: nn.Module, prefixes: tuple[str, ...]) -> list[nn.Parameter]:
    named = dict(model.named_parameters())
    out = []
    for pre in prefixes:
        hit = names_under(list(named), pre)
        if not hit:
            raise VlatrimError(f"LoRA --lora-train-also {pre!r} names no parameter; valid prefixes include "
                               f"{', '.join(top_level(list(named)))}")
        out += [named[n] for n in hit]
    return out


@RECOVERY_METHODS.register("lora")
class LoraRecovery(RecoveryMethod):
    """Adapters on the backbone (plus the small ``train_also`` parameters in full); base weights frozen."""

    name = "lora"
    default_lr = 5e-4

    def prepare(self, student: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        s = self.settings.lora
        targets = resolve_lora_targets(student, s)
        also = _match_prefixes(student, _defaults(student, s)[1])  # resolved before wrapping: errors name the model's paths
        # Full paths match exactly (peft compares a module's path to each target, or its "."-suffix).
        cfg = LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=targets, bias="none")
        model = get_peft_model(student, cfg)  # freezes every non-adapter parameter
        for p in also:
            p.requires_grad_(True)
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        # W <- W + (alpha / r) B A in place of each adapted layer; the result is the plain model class.
        return model.merge_and_unload()

    @staticmethod
    def describe(model: nn.Module) -> dict[str, Any]:
        """Adapted module count and trainable parameter count of a wrapped model (for recover.json)."""
        from peft.tuners.lora import LoraLayer

        return {"adapted_modules": sum(isinstance(m, LoraLayer) for m in model.modules())}
