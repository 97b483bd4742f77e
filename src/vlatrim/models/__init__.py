"""What a VLA is to vlatrim: the reference VLA (``models.reference``), language backbones
(``models.backbones``), checkpoint directories (``models.checkpoint``) and the adapters that locate
the language backbone inside any supported model (``models.adapters``)."""

# Registers the reference VLA's policy loader in vlatrim.sim.policy.POLICY_LOADERS.
from vlatrim.models.reference import policy as _reference_policy  # noqa: E402,F401
