"""``vlatrim bench``: parameters, FLOPs, latency, control frequency and peak memory of models.

For a reference VLA checkpoint (pruned or not) two forwards are measured on fixed synthetic inputs of
the model's own shapes (a random image, a state, one tokenized instruction):

- ``full``: observation -> action chunk (vision encoder, projector, backbone, action head, decoding);
- ``backbone``: the language backbone alone on the same multimodal sequence (what pruning shortens).

A transformers text model gets the backbone forward (``--seq-len`` random tokens) and its full forward
(with the LM head, when it has one). Each forward is timed in every requested execution mode
(``vlatrim.bench.modes``); modes that cannot run here are recorded with the reason. ``bench.json``
(schema in docs/study.md, "bench.json") lists every model and, relative to the first, the ratios.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlatrim.bench.flops import backbone_flops, counted_flops, eager_attention
from vlatrim.bench.latency import measure_latency
from vlatrim.bench.memory import peak_memory, weight_bytes
from vlatrim.bench.modes import MODES, ModeUnavailable
from vlatrim.bench.params import count_params, params_by_component
from vlatrim.bench.roofline import forward_weight_bytes, get_peaks, peaks_entry, roofline, with_measured
from vlatrim.errors import VlatrimError
from vlatrim.utils.device import resolve_device
from vlatrim.utils.io import check_name_lengths, read_json, write_json_atomic

BENCH_SCHEMA_VERSION = 1
BENCH_FILE = "bench.json"
INSTRUCTION = "open the drawer"  # any task text: the sequence length is fixed by max_text_tokens


def device_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
        info["cpu_count"] = os.cpu_count()
    return info


def _max_positions(config: Any) -> int | None:
    """The longest sequence a text model's config allows (learned positions: beyond it, an index error)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(config, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _config_positions(path: Path) -> tuple[int, str] | None:
    """(positions, where) of a text model's config.json (top level or ``text_config``), or None. A
    policy's config (the reference VLA's nests its backbone) has none at the top level: --seq-len does
    not apply to it."""
    with contextlib.suppress(VlatrimError, OSError, ValueError):  # unreadable: the model's loader says why
        cfg = read_json(path / "config.json", "model config")
        for where, c in (("", cfg), ("text_config.", cfg.get("text_config") if isinstance(cfg, dict) else None)):
            for name in ("max_position_embeddings", "n_positions"):
                v = c.get(name) if isinstance(c, dict) else None
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v, f"its config's {where}{name}"
    return None


def _forwards(family: Any, model: nn.Module, handle: Any, batch_size: int, seq_len: int, device: torch.device,
              seed: int) -> tuple[Callable[[], object], Callable[[], object], dict[str, Any]]:
    """(full forward, backbone-only forward, sequence description) on fixed synthetic inputs."""
    g = torch.Generator().manual_seed(seed)
    owner = handle.owner
    captured: dict[str, Any] = {}
    batch = family.example_batch(model, batch_size, g, INSTRUCTION)
    if batch is not None:  # a policy: observation -> action chunk, as deployed

        def full() -> torch.Tensor:
            return family.act(model, batch)  # (B, T, A)

        module = family.backbone_module(model, handle)
        forward, own = module.forward, module.__dict__.get("forward")  # own: an instance-level forward already set

        def grab(*args: Any, **kwargs: Any) -> Any:
            if "call" not in captured and _first_tensor(kwargs.get("inputs_embeds")) is not None:
                captured["call"] = (module, _detached(args), _detached(kwargs))
            return forward(*args, **kwargs)

        # On the instance, not as a hook: some models call ``module.forward(...)`` directly (SmolVLA does),
        # which forward hooks never see; ``module(...)`` reaches it too.
        module.forward = grab
        try:
            with torch.no_grad():
                full()
        finally:
            if own is None:
                del module.forward
            else:
                module.forward = own
        if "call" not in captured:
            raise VlatrimError(f"the {family.name} model does not call its backbone ({type(module).__name__}) with "
                               "inputs_embeds=..., so its backbone cannot be timed alone")
        seq = {"tokens": int(_first_tensor(captured["call"][2]["inputs_embeds"]).shape[1]), **family.sequence_info(model)}
        seq.setdefault("chunk_size", None)
    else:  # a transformers text model: random tokens
        positions = _max_positions(handle.config)
        if positions is not None and seq_len > positions:
            raise VlatrimError(f"--seq-len {seq_len} is more than the {positions} positions of {family.name} model "
                               f"{type(model).__name__}; valid: 1..{positions}")
        vocab = int(handle.vocab_size)
        ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g).to(device)
        emb = model.get_submodule(handle.embedding_path) if handle.embedding_path else owner.get_input_embeddings()
        with torch.no_grad():
            captured["call"] = (owner, (), {"inputs_embeds": emb(ids).detach(), "attention_mask": torch.ones_like(ids)})

        def full() -> object:
            return model(input_ids=ids)

        seq = {"tokens": seq_len, "chunk_size": None}
    module, bb_args, bb_kwargs = captured["call"]

    def backbone() -> object:
        return module(*bb_args, **bb_kwargs)  # the backbone's pass over the observation, replayed

    return full, backbone, seq


def _first_tensor(x: Any) -> torch.Tensor | None:
    """``x`` if a tensor, else the first tensor in a list / tuple (SmolVLA passes [prefix, suffix])."""
    if torch.is_tensor(x):
        return x
    if isinstance(x, (list, tuple)):
        return next((t for t in x if torch.is_tensor(t)), None)
    return None


def _detached(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.detach()
    if isinstance(x, (list, tuple)):
        return type(x)(_detached(v) for v in x)
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


def _time_modes(fn: Callable[[], object], modes: Sequence[str], device: torch.device, warmup: int,
                repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in modes:
        try:
            runner = MODES.get(mode)(fn, device)
        except ModeUnavailable as e:
            out[mode] = {"skipped": str(e)}
            continue
        r = measure_latency(runner, warmup=warmup, repeats=repeats, device=device)
        out[mode] = {"median_ms": r.median_ms, "p90_ms": r.p90_ms, "min_ms": r.min_ms, "repeats": r.repeats,
                     "warmup": r.warmup}
    return out


def _prune_info(path: Path) -> dict[str, Any] | None:
    p = path / "prune.json"
    if not p.is_file():
        return None
    info = read_json(p, what="prune record")
    return {"kept_blocks": info.get("kept_blocks"), "source": (info.get("source") or {}).get("path"),
            "backbone_ratio_removed": (info.get("params") or {}).get("backbone_ratio_removed")}


def bench_model(path: str | os.PathLike, device: torch.device, batch_size: int = 1, modes: Sequence[str] = ("eager",),
                warmup: int = 5, repeats: int = 20, seq_len: int = 64, seed: int = 0,
                remeasure_peaks: bool = False) -> dict[str, Any]:
    """Measure one checkpoint (see the module docstring).

    Args:
        path: a vlatrim checkpoint directory (reference VLA, pruned or not) or a transformers model directory.
        device: where it runs.
        batch_size: observations (or sequences) per forward.
        modes: execution modes to time (``vlatrim.bench.modes.MODES``: eager, compile, cuda_graph).
        warmup: untimed calls before each timing.
        repeats: timed calls (the median is reported).
        seq_len: tokens per sequence for a text model (a VLA's sequence comes from its config).
        seed: seed of the synthetic inputs.
        remeasure_peaks: measure the device's roofline peaks again instead of reading the cache.
    Returns:
        One entry of bench.json's ``models``.
    """
    from vlatrim.families import family_of

    path = Path(path)
    if not (path / "config.json").is_file():
        raise VlatrimError(f"--model {str(path)!r} is not a checkpoint directory (no config.json)")
    family = family_of(path)
    model = family.load(path).to(device).eval()
    handle = family.handle(model)
    params = params_by_component(handle)
    params["by_module"] = {n: count_params(m) for n, m in model.named_children()}
    own = sum(p.numel() for p in model.parameters(recurse=False))  # e.g. the VLA's learned action queries
    if own:
        params["by_module"]["(own parameters)"] = own
    full, backbone, seq = _forwards(family, model, handle, batch_size, seq_len, device, seed)
    with eager_attention(handle.owner):  # so the counter sees attention matmuls (SDPA on CPU is invisible)
        flops_full = counted_flops(full)
        flops_backbone = counted_flops(backbone)
    analytic = backbone_flops(handle, batch_size, seq["tokens"])
    with torch.no_grad():
        latency = {"full": _time_modes(full, modes, device, warmup, repeats),
                   "backbone": _time_modes(backbone, modes, device, warmup, repeats)}
    gc.collect()  # the previous model's memory goes back before this one is measured
    mem = peak_memory(full, device)
    entry: dict[str, Any] = {
        "path": str(path), "name": path.name, "class": type(model).__name__, "family": family.name,
        "num_blocks": len(handle.blocks), "blocks_path": handle.blocks_path, "prune": _prune_info(path),
        "params": params, "weight_bytes": weight_bytes(model),
        "quantization": getattr(model, "vlatrim_quantization", None),  # scheme of a `vlatrim quantize` checkpoint
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "batch_size": batch_size, "sequence": seq,
        "flops": {"analytic_blocks": analytic,
                  "counted": {"full": flops_full["total"], "backbone": flops_backbone["total"],
                              "full_by_op": flops_full["by_op"],
                              "method": "torch.utils.flop_counter.FlopCounterMode, eager attention"}},
        "latency_ms": latency,
        "memory": _memory_entry(mem, weight_bytes(model), device),
    }
    entry["control"] = _control(latency["full"], seq.get("chunk_size"), batch_size)
    peaks, cached = get_peaks(device, next(model.parameters()).dtype, remeasure=remeasure_peaks)
    entry["roofline"] = {"peaks": peaks_entry(peaks, cached),
                         "full": with_measured(roofline(flops_full["total"], forward_weight_bytes(model), peaks),
                                               latency["full"]),
                         "backbone": with_measured(roofline(flops_backbone["total"], forward_weight_bytes(handle.owner),
                                                            peaks), latency["backbone"])}
    return entry


def _memory_entry(mem: Any, weights: int, device: torch.device) -> dict[str, Any]:
    """Peak memory of one forward. CUDA: the allocator's peak (weights + activations, this model only:
    the previous model was freed). CPU: the process's RSS also holds whatever earlier models and
    libraries left behind, so the peak is reported as this model's weights plus the RSS growth during
    the forward, and the raw process figure beside it."""
    if mem is None:
        return {"skipped": "no /proc/self/statm on this system"}
    if device.type == "cuda":
        return {"peak_bytes": mem.peak_bytes, "delta_bytes": mem.delta_bytes, "method": mem.method}
    return {"peak_bytes": weights + mem.delta_bytes, "delta_bytes": mem.delta_bytes,
            "process_rss_peak_bytes": mem.peak_bytes, "method": f"weights + growth of {mem.method}"}


def _control(full: dict[str, Any], chunk: int | None, batch_size: int) -> dict[str, Any]:
    """Control frequency from the full forward: policy queries per second per environment (one query
    serves all ``batch_size`` environments at once) and, with a chunk of T actions, T times that."""
    out: dict[str, Any] = {}
    for mode, r in full.items():
        if "median_ms" not in r:
            continue
        hz = 1e3 / r["median_ms"]
        out[mode] = {"query_hz": hz, "actions_per_s": hz * chunk if chunk else None,
                     "env_steps_per_s_all_envs": hz * chunk * batch_size if chunk else None,
                     "query_hz_p90": 1e3 / r["p90_ms"] if r.get("p90_ms") else None}
    return out


def _ratios(models: list[dict[str, Any]]) -> None:
    base = models[0]
    for m in models:
        r: dict[str, Any] = {
            "params_total": m["params"]["total"] / base["params"]["total"],
            "params_backbone": m["params"]["backbone"] / base["params"]["backbone"],
            "flops_full": m["flops"]["counted"]["full"] / base["flops"]["counted"]["full"],
            "flops_backbone": m["flops"]["counted"]["backbone"] / base["flops"]["counted"]["backbone"],
        }
        for part in ("full", "backbone"):
            for mode, t in m["latency_ms"][part].items():
                b = base["latency_ms"][part].get(mode, {})
                if "median_ms" in t and "median_ms" in b:
                    r[f"speedup_{part}_{mode}"] = b["median_ms"] / t["median_ms"]
        m["relative_to_first"] = r


def _check_out(out: Path, models: Sequence[str | os.PathLike]) -> None:
    """Refuse an ``--out`` that bench.json could not be written into, before any model is measured."""
    text = str(out)
    check_name_lengths(out)
    if out.exists() and not out.is_dir():
        raise VlatrimError(f"--out {text!r} is a file; valid: a directory (new or existing) to write bench.json into")
    resolved = out.resolve()
    for m in models:
        src = Path(m).resolve()
        if resolved == src or src in resolved.parents:
            raise VlatrimError(f"--out {text!r} is inside the checkpoint --model {str(m)!r}; valid: a directory outside "
                               "every input checkpoint (bench never writes into a model)")
    # The nearest existing folder decides whether the missing ones (and bench.json) can be created.
    anchor = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not anchor.is_dir():
        raise VlatrimError(f"--out {text!r} lies under {str(anchor)!r}, which is a file; valid: a directory path")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise VlatrimError(f"--out {text!r} cannot be written: {str(anchor)!r} is not writable; valid: a directory "
                           "you can write to")


def run_bench(models: Sequence[str | os.PathLike], out: str | os.PathLike, device: str = "cpu", batch_size: int = 1,
              compile: bool = False, cuda_graphs: bool = False, warmup: int = 5, repeats: int = 20,
              seq_len: int = 64, threads: int | None = None, progress: bool = True,
              remeasure_peaks: bool = False) -> dict[str, Any]:
    """Benchmark several checkpoints in one run and write ``<out>/bench.json`` atomically.

    Args:
        models: checkpoint directories; ratios are relative to the first.
        out: output directory (created if needed; bench.json is replaced whole).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        batch_size: observations per forward.
        compile: also time ``torch.compile`` (on the CPU it needs a C++ compiler; failures are recorded).
        cuda_graphs: also time CUDA-graph replay (recorded as skipped on the CPU).
        warmup: untimed calls before each timing.
        repeats: timed calls per timing (medians reported).
        seq_len: tokens per sequence for text models.
        threads: torch CPU threads (default: torch's).
        progress: tqdm bar over models.
        remeasure_peaks: measure the roofline peaks again (else the per-device cache, measured on first use).
    Returns:
        The bench.json content.
    """
    from tqdm.auto import tqdm

    if not models:
        raise VlatrimError("--model needs at least one checkpoint directory")
    if batch_size < 1 or repeats < 1 or warmup < 0 or seq_len < 1:
        raise VlatrimError(f"need --batch-size >= 1, --repeats >= 1, --warmup >= 0, --seq-len >= 1; got "
                           f"{batch_size}, {repeats}, {warmup}, {seq_len}")
    if threads is not None and threads < 1:
        raise VlatrimError(f"--threads {threads} is not valid; valid: a number of CPU threads >= 1 (or omit it)")
    dev = resolve_device(device)
    for m in models:
        if not (Path(m) / "config.json").is_file():
            raise VlatrimError(f"--model {str(m)!r} is not a checkpoint directory (no config.json)")
    _check_out(Path(out), models)
    for m in models:  # before any model loads; _forwards checks the loaded model's config again
        limit = _config_positions(Path(m))
        if limit is not None and seq_len > limit[0]:
            raise VlatrimError(f"--seq-len {seq_len} is more than the {limit[0]} positions of --model {str(m)!r} "
                               f"({limit[1]}); valid: 1..{limit[0]}")
    if threads is not None:
        torch.set_num_threads(threads)
    modes = ["eager"] + (["compile"] if compile else []) + (["cuda_graph"] if cuda_graphs else [])
    notes = []
    if dev.type == "cpu":
        load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        notes.append(f"CPU run (1-min load average {load1:.2f} at start on {os.cpu_count()} cores): other processes "
                     "show up in CPU latency; min_ms is the least disturbed figure")
        if cuda_graphs:
            notes.append("CUDA graphs skipped: no CUDA device")
    entries = [bench_model(m, dev, batch_size, modes, warmup, repeats, seq_len, remeasure_peaks=remeasure_peaks and i == 0)
               for i, m in enumerate(tqdm(list(models), desc="bench", unit="model", disable=not progress))]
    _ratios(entries)
    result = {
        "schema_version": BENCH_SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(dev),
        "settings": {"batch_size": batch_size, "modes": modes, "warmup": warmup, "repeats": repeats,
                     "seq_len_text_models": seq_len, "dtype": "as stored (no autocast)"},
        "notes": notes,
        "models": entries,
    }
    try:
        write_json_atomic(Path(out) / BENCH_FILE, result)
    except OSError as e:  # e.g. a read-only file system, which permission bits do not show
        raise VlatrimError(f"--out {str(out)!r} cannot be written ({e.strerror or e}); valid: a directory you can "
                           "write to") from None
    return result
