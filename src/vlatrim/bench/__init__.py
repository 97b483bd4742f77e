"""Efficiency measurements: parameter counts by component, latency (warm-up + medians)."""

from vlatrim.bench.latency import LatencyResult, measure_latency
from vlatrim.bench.params import count_params, params_by_component

__all__ = ["count_params", "params_by_component", "measure_latency", "LatencyResult"]
