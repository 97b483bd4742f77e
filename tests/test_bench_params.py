"""Parameter counting by component and the latency helper's bookkeeping (no timed assertions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vlatrim.bench.params
from vlatrim.bench.latency import measure_latency
from vlatrim.models.adapters import locate_backbone
from vlatrim.models.adapters.tiny import TINY_MODELS
from vlatrim.models.params import count_params, params_by_component


def test_count_params_counts_shared_tensors_once_and_excludes() -> None:
    emb = nn.Embedding(10, 4)  # 40
    head = nn.Linear(4, 10, bias=True)  # 40 + 10
    assert count_params([emb, head]) == 90
    head.weight = emb.weight  # tied: the weight counts once, the bias stays
    assert count_params([emb, head]) == 50
    assert count_params(head, exclude=[emb]) == 10
    assert count_params(None) == 0 and count_params([None, emb]) == 40
    # Parameter ids exclude too (what an inspection that tracks seen tensors passes).
    assert count_params(head, exclude={id(head.bias)}) == 40 and count_params([emb, head], exclude=[None]) == 50


def test_bench_counts_with_the_models_implementation() -> None:
    # One implementation: bench re-exports vlatrim.models.params (prune imports it there, not from bench).
    assert vlatrim.bench.params.count_params is count_params
    assert vlatrim.bench.params.params_by_component is params_by_component


@pytest.mark.parametrize("arch", ["llama", "gemma", "bert", "llava", "qwen2_vl"])
def test_params_by_component_adds_up(arch: str) -> None:
    model = TINY_MODELS.get(arch)()
    h = locate_backbone(model)
    p = params_by_component(h)
    assert p["backbone"] == p["blocks"] + p["embedding"] + p["lm_head"] + p["backbone_other"]
    assert p["total"] == p["backbone"] + p["rest"] == count_params(model)
    assert p["blocks"] == sum(l.num_params for l in h.layouts)
    assert p["embedding"] == h.vocab_size * h.hidden_size
    # A tied LM head is counted with the embedding; an untied one holds vocab x hidden (+ bias) of its own.
    assert p["lm_head"] == (0 if h.lm_head_tied or h.lm_head_path is None else h.vocab_size * h.hidden_size)
    assert (p["rest"] > 0) == bool(h.vision)  # VLMs: vision tower + projector live outside the backbone


def test_measure_latency_counts_calls_and_reports_median() -> None:
    calls = []
    r = measure_latency(lambda: calls.append(1), warmup=2, repeats=5)
    assert len(calls) == 7 and r.repeats == 5 and len(r.samples_ms) == 5
    assert r.min_ms <= r.median_ms <= max(r.samples_ms)
    with pytest.raises(ValueError):
        measure_latency(lambda: None, repeats=0)


def test_measure_latency_runs_without_grad() -> None:
    x = torch.ones(2, requires_grad=True)
    seen = []
    measure_latency(lambda: seen.append((x * 2).requires_grad), warmup=0, repeats=1)
    measure_latency(lambda: seen.append((x * 2).requires_grad), warmup=0, repeats=1, no_grad=False)
    assert seen == [False, True]
