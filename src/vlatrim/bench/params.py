"""Parameter counts for bench reports: the one implementation lives in ``vlatrim.models.params``."""

from __future__ import annotations

from vlatrim.models.params import count_params, params_by_component

__all__ = ["count_params", "params_by_component"]
