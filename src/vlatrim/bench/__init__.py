"""Efficiency measurements: parameter counts by component, FLOPs, latency (warm-up + medians) in
eager / compiled / CUDA-graph execution, control frequency and peak memory (``run_bench`` -> bench.json)."""

from vlatrim.bench.flops import backbone_flops, block_flops, counted_flops
from vlatrim.bench.latency import LatencyResult, measure_latency
from vlatrim.bench.memory import MemoryResult, peak_memory, weight_bytes
from vlatrim.bench.params import count_params, params_by_component

__all__ = ["count_params", "params_by_component", "measure_latency", "LatencyResult", "block_flops",
           "backbone_flops", "counted_flops", "peak_memory", "weight_bytes", "MemoryResult"]
