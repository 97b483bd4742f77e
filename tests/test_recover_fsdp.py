"""Sharded training (FSDP2 through Accelerate): the pieces that make a sharded run checkpoint like an
unsharded one (unit tier), and, in the integration tier, 2 CPU processes over gloo started with
``accelerate launch``: the FSDP run follows the 1-process run, equals the DDP run, and a run killed
mid-step resumes to the weights of an uninterrupted FSDP run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_recover_methods import batch_of, synthetic_frames, tiny_vla
from test_recover_run import SRC, dirs  # noqa: F401  (the module-scoped dataset / teacher / pruned fixture)
from vlatrim.cli.main import main as cli
from vlatrim.errors import VlatrimError
from vlatrim.train.config import TrainerConfig
from vlatrim.train.recovery import RECOVERY_METHODS, LoraSettings, RecoverySettings
from vlatrim.train.trainer import (
    Trainer,
    default_param_groups,
    make_adamw,
    meta_copy,
    optimizer_state_by_index,
    optimizer_state_by_name,
)


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames(n_ep=6, length=8)


def _lora(vla):
    settings = RecoverySettings(method="lora", lora=LoraSettings(rank=2, targets=("q_proj",)))
    return RECOVERY_METHODS.get("lora")(settings).prepare(vla)


# ------------------------------------------------------------------ unit tier
@pytest.mark.parametrize("wrap", ["plain", "lora"])
def test_meta_copy_holds_no_weights_and_takes_gathered_ones(frames, wrap):
    model = tiny_vla(frames, blocks=2)
    if wrap == "lora":
        model = _lora(model)
    template = meta_copy(model)
    assert all(p.device.type == "meta" for p in template.parameters())
    # What an FSDP checkpoint does on the main process: a copy of the template takes the gathered tensors.
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    plain = meta_copy(template)
    plain.load_state_dict(weights, strict=True, assign=True)
    assert [(n, p.requires_grad) for n, p in plain.named_parameters()] == \
        [(n, p.requires_grad) for n, p in model.named_parameters()]  # save_trainable picks the same tensors
    for k, v in plain.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    frozen = next(n for n, p in model.named_parameters() if not p.requires_grad) if wrap == "lora" else None
    assert frozen is None or not dict(plain.named_parameters())[frozen].requires_grad
    batch = batch_of(tiny_vla(frames, blocks=2), frames)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(batch)["raw"], model.eval()(batch)["raw"], rtol=0, atol=0)


def test_optimizer_state_by_name_is_torchs_layout_and_round_trips(frames):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    model = _lora(tiny_vla(frames, blocks=2))
    cfg = TrainerConfig(steps=2, batch_size=4)
    opt = make_adamw(default_param_groups(model, 0.01), cfg)
    batch = batch_of(tiny_vla(frames, blocks=2), frames, n=4)
    model(batch)["loss"].backward()
    opt.step()
    by_index = opt.state_dict()
    by_name = optimizer_state_by_name(by_index, opt, model)
    # torch.distributed.checkpoint's own name-keyed state (what an FSDP checkpoint stores) has the same layout.
    ref = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    assert set(by_name["state"]) == set(ref["state"]) and len(by_name["state"]) == sum(
        p.requires_grad for p in model.parameters())
    for name, s in ref["state"].items():
        for k, v in s.items():
            torch.testing.assert_close(by_name["state"][name][k], v, rtol=0, atol=0)
    assert [g["params"] for g in by_name["param_groups"]] == [g["params"] for g in ref["param_groups"]]
    back = optimizer_state_by_index(by_name, opt, model)
    assert back["param_groups"] == by_index["param_groups"] and back["state"].keys() == by_index["state"].keys()
    bad = {**by_name, "state": {**by_name["state"], "backbone.nope.weight": {}}}
    with pytest.raises(VlatrimError, match=r"optimizer state names parameters this model does not train \(1, e\.g\. "
                                           r"\['backbone\.nope\.weight'\]\)"):
        optimizer_state_by_index(bad, opt, model)


def test_fsdp_version_1_is_refused_before_training(frames, tmp_path):
    from accelerate.utils import DistributedType

    acc = SimpleNamespace(num_processes=2, distributed_type=DistributedType.FSDP, is_fsdp2=False)
    with pytest.raises(VlatrimError, match="FSDP version 1 is not supported by the vlatrim trainer; set fsdp_version: 2"):
        Trainer(tiny_vla(frames, blocks=2), [], TrainerConfig(steps=1, batch_size=4), tmp_path / "run", accelerator=acc)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 2 processes, gloo, accelerate launch
FSDP_YAML = textwrap.dedent("""\
    compute_environment: LOCAL_MACHINE
    distributed_type: FSDP
    mixed_precision: 'no'
    num_machines: 1
    num_processes: 2
    fsdp_config:
      fsdp_version: 2
      fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
      fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
      fsdp_reshard_after_forward: true
    """)

# Runs `vlatrim` like `-m vlatrim`, but both processes end abruptly (os._exit, no cleanup) in the forward
# pass of the given micro-step: what a SIGKILL of the job at that point leaves behind.
_KILLED = textwrap.dedent("""
    import os, sys
    import vlatrim.train.recovery.base as base
    from vlatrim.cli.main import main

    die_at, calls = int(os.environ["VLATRIM_TEST_DIE_AT"]), [0]
    loss = base.RecoveryMethod.loss
    def dying_loss(self, model, batch):
        calls[0] += 1
        if calls[0] == die_at:
            os._exit(9)
        return loss(self, model, batch)
    base.RecoveryMethod.loss = dying_loss
    sys.exit(main(sys.argv[1:]))
""")


def _launch(tmp_path: Path, args: list[str], kind: str, script: Path | None = None, env_extra: dict | None = None):
    """``accelerate launch`` 2 CPU processes: ``kind`` ``fsdp`` (the config file above) or ``ddp`` (--multi_gpu)."""
    with socket.socket() as s:  # a free rendezvous port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if kind == "fsdp":
        cfg = tmp_path / "fsdp.yaml"
        cfg.write_text(FSDP_YAML)
        how = ["--config_file", str(cfg)]
    else:  # --multi_gpu is Accelerate's torchrun launcher; with --device cpu the processes use gloo
        how = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    what = [str(script)] if script else ["-m", "vlatrim"]
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *how, "--num_processes", "2",
                           "--main_process_port", str(port), *what, *args],
                          env=env, capture_output=True, text=True, timeout=300)


def _curve(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_fsdp_run_follows_one_process_equals_ddp_and_resumes_exactly(dirs, tmp_path):  # noqa: F811
    args = ["recover", "--model", str(dirs["pruned"]), "--data", str(dirs["data"]), "--method", "full",
            "--steps", "6", "--batch-size", "8", "--checkpoint-every", "2", "--log-every", "1", "--seed", "3",
            "--device", "cpu"]
    fsdp = _launch(tmp_path, [*args, "--out", str(tmp_path / "fsdp")], "fsdp")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    ddp = _launch(tmp_path, [*args, "--out", str(tmp_path / "ddp")], "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert cli([*args, "--out", str(tmp_path / "one")]) == 0

    reps = {d: json.loads((tmp_path / d / "recover.json").read_text()) for d in ("fsdp", "ddp", "one")}
    assert [reps[d]["budget"]["processes"] for d in ("fsdp", "ddp", "one")] == [2, 2, 1]
    # The final model and every checkpoint are ordinary files: the unsharded parameter names and shapes.
    one_w, fsdp_w, ddp_w = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("one", "fsdp", "ddp"))
    assert {k: v.shape for k, v in fsdp_w.items()} == {k: v.shape for k, v in one_w.items()}
    ck = load_file(str(tmp_path / "fsdp" / "checkpoints" / "step-0000006" / "trainable.safetensors"))
    assert ck and all(torch.equal(v, fsdp_w[k]) for k, v in ck.items())
    state = torch.load(tmp_path / "fsdp" / "checkpoints" / "step-0000006" / "trainer_state.pt", weights_only=True)
    assert state["optimizer_keys"] == "name" and set(state["optimizer"]["state"]) == set(ck)

    # FSDP and DDP average the same two half-batch gradients; they differ only in how the sums are formed
    # (reduce-scatter of per-parameter shards vs all-reduce of buckets; the clipping norm from shard norms vs
    # from whole gradients): float32 rounding. Measured over these 6 steps: identical losses, grad norms within
    # 1e-7 relative, weights within 6e-8 absolute (they are O(0.1-1)). The bounds leave 10-20x room.
    np.testing.assert_allclose(_curve(tmp_path / "fsdp"), _curve(tmp_path / "ddp"), rtol=1e-6)
    for k in fsdp_w:
        torch.testing.assert_close(fsdp_w[k], ddp_w[k], rtol=0, atol=1e-6)
    # Against one process: the same curve up to float rounding, as for DDP (tests/test_recover_run.py:
    # every process divides its action loss by the global batch's count). Measured: within 2.1e-7.
    np.testing.assert_allclose(_curve(tmp_path / "fsdp"), _curve(tmp_path / "one"), rtol=2e-6)
    assert reps["fsdp"]["held_out"]["l1"] == pytest.approx(reps["one"]["held_out"]["l1"], rel=1e-5)
    for k in fsdp_w:
        torch.testing.assert_close(fsdp_w[k], one_w[k], rtol=0, atol=1e-5)

    # Killed in step 5's forward (checkpoints at 2 and 4 written), then resumed under FSDP.
    killed = tmp_path / "killed"
    script = tmp_path / "killed_vlatrim.py"
    script.write_text(_KILLED)
    dead = _launch(tmp_path, [*args, "--out", str(killed)], "fsdp", script=script, env_extra={"VLATRIM_TEST_DIE_AT": "5"})
    assert dead.returncode != 0
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert not (killed / "config.json").exists()
    resumed = _launch(tmp_path, [*args, "--out", str(killed), "--resume"], "fsdp")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = load_file(str(killed / "model.safetensors"))
    for k in fsdp_w:
        assert torch.equal(again[k], fsdp_w[k]), k  # bit-identical: the gathered optimizer state came back whole
    assert json.loads((killed / "recover.json").read_text())["resumed_from"] == 4
    assert _curve(killed) == _curve(tmp_path / "fsdp")
