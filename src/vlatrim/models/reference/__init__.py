"""The reference VLA: a small, real VLA around a transformers language backbone (default: the
pretrained all-MiniLM-L6-v2), with a continuous (L1) or discrete (256-bin) parallel action head."""

from vlatrim.models.reference.config import MODEL_TYPE, VLAConfig
from vlatrim.models.reference.model import ReferenceVLA

__all__ = ["MODEL_TYPE", "VLAConfig", "ReferenceVLA"]
