"""``vlatrim recover`` end to end on tiny checkpoints: run directory, budget, reload, kill-and-resume,
non-finite loss, resume into another run, bad input, and (integration) 2 processes vs 1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_recover_methods import IMG, synthetic_frames, tiny_vla
from vlatrim.cli.main import main as cli
from vlatrim.errors import VlatrimError
from vlatrim.models.reference import ReferenceVLA
from vlatrim.train.recovery import DistillSettings, LoraSettings, RecoverySettings, recover, recovery_trainer_config

SRC = str(Path(__file__).resolve().parents[1] / "src")


def write_lerobot(root: Path, frames) -> None:
    from vlatrim.data.lerobot import LeRobotWriter, metaworld_features

    with LeRobotWriter(root, metaworld_features(IMG), fps=80) as w:
        for ep in frames.episodes():
            rows = frames.episode_index == ep
            w.add_episode({"observation.images.corner": frames.images[rows], "observation.state": frames.states[rows],
                           "action": frames.actions[rows], "next.success": np.zeros(int(rows.sum()), bool)},
                          task=frames.instructions[int(frames.task_index[rows][0])])


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """A dataset, a 4-block teacher (tiny Llama VLA) and the teacher with blocks 1 and 3 cut by `vlatrim prune`."""
    root = tmp_path_factory.mktemp("recover")
    frames = synthetic_frames(n_ep=6, length=8)
    write_lerobot(root / "data", frames)
    tiny_vla(frames, "llama", blocks=4).save_pretrained(root / "teacher")
    assert cli(["prune", "--model", str(root / "teacher"), "--out", str(root / "pruned"), "--drop-blocks", "1,3"]) == 0
    return {"data": root / "data", "teacher": root / "teacher", "pruned": root / "pruned"}


def _trainer(method="full", **kw):
    base = dict(steps=6, batch_size=8, checkpoint_every=2, log_every=1, seed=3, device="cpu")
    return recovery_trainer_config(method, **{**base, **kw})


def test_lora_run_writes_a_plain_checkpoint_and_its_budget(dirs, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli(["recover", "--model", str(dirs["pruned"]), "--data", str(dirs["data"]), "--out", str(out),
                "--method", "lora", "--steps", "4", "--batch-size", "8", "--checkpoint-every", "2",
                "--lora-rank", "4", "--lora-targets", "q_proj,v_proj", "--device", "cpu"])
    assert code == 0
    assert "recovered with lora: 4 steps x 8 = 32 samples" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "normalization.json", "tokenizer", "prune.json", "run_config.json",
            "log.jsonl", "checkpoints", "recover.json"} <= names
    rep = json.loads((out / "recover.json").read_text())
    b = rep["budget"]
    # 16 px through 3 stride-2 stages: 2x2 = 4 image tokens + state + 8 instruction slots + 2 queries.
    assert b["sequence_length"] == 4 + 1 + 8 + 2
    assert (b["steps"], b["batch_size"], b["samples"]) == (4, 8, 32)
    assert b["tokens"] == 32 * b["sequence_length"] and b["lr"] == 5e-4 and b["processes"] == 1
    assert rep["pruned"]["kept_blocks"] == [0, 2] and rep["source"]["sha256"] and rep["method"] == "lora"
    assert rep["settings"]["recovery"]["lora"]["targets"] == ["q_proj", "v_proj"]
    assert rep["params"]["trainable"] < rep["params"]["total"]
    # Merged: plain parameter names, reloads with the class's own from_pretrained and the vlatrim loader.
    keys = set(load_file(str(out / "model.safetensors")))
    assert not any("lora" in k or "base_model" in k for k in keys)
    src = ReferenceVLA.from_pretrained(dirs["pruned"])
    new = ReferenceVLA.from_pretrained(out)
    assert set(new.state_dict()) == set(src.state_dict())
    moved = {k for k in keys if not torch.equal(new.state_dict()[k], src.state_dict()[k])}
    adapted = {f"backbone.layers.{b}.self_attn.{p}.weight" for b in (0, 1) for p in ("q_proj", "v_proj")}
    assert adapted <= moved and all(k in adapted or k.startswith("head.") or k == "action_queries" for k in moved)
    # Trainable-only checkpoints: adapters + head + queries, not the frozen backbone.
    ck = load_file(str(out / "checkpoints" / "step-0000004" / "trainable.safetensors"))
    assert all("lora_" in k or ".head." in k or k.endswith("action_queries") for k in ck)


def test_lora_on_per_block_widths_reloads_through_the_vlatrim_loader(dirs, tmp_path):
    from vlatrim.prune import load_pruned

    src = tmp_path / "widths"
    assert cli(["prune", "--model", str(dirs["teacher"]), "--out", str(src), "--heads", "4,2,4,2"]) == 0
    recover(src, dirs["data"], tmp_path / "run", trainer=_trainer("lora", steps=2),
            settings=RecoverySettings(method="lora", lora=LoraSettings(rank=2, train_also=())))
    before, after = load_pruned(src), load_pruned(tmp_path / "run")
    assert [b.self_attn.q_proj.out_features for b in after.backbone.layers] == [32, 16, 32, 16]  # 8-wide heads
    moved = {k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])}
    assert moved and all(k.startswith("backbone.layers.") for k in moved)  # adapters only, merged


def test_distill_run_pairs_blocks_from_prune_json(dirs, tmp_path):
    rep = recover(dirs["pruned"], dirs["data"], tmp_path / "run", teacher=dirs["teacher"], trainer=_trainer("distill"),
                  settings=RecoverySettings(method="distill", distill=DistillSettings(hidden_weight=0.5)))
    assert rep["teacher"]["sha256"] and rep["pruned"]["kept_blocks"] == [0, 2]
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    for r in log:  # loss = 1 * task + 1 * kd_action + 0.5 * kd_hidden (window means of each term)
        assert r["loss"] == pytest.approx(r["task"] + r["kd_action"] + 0.5 * r["kd_hidden"], rel=1e-6)
        assert r["kd_action"] > 0 and r["kd_hidden"] > 0


def test_distill_after_a_vocabulary_cut_feeds_the_teacher_its_own_token_ids(dirs, tmp_path):
    student = tmp_path / "vocab"
    assert cli(["prune", "--model", str(dirs["teacher"]), "--out", str(student), "--vocab-from", str(dirs["data"])]) == 0
    assert ReferenceVLA.from_pretrained(student).backbone.config.vocab_size < 100  # the task texts' tokens only
    recover(student, dirs["data"], tmp_path / "run", teacher=dirs["teacher"], trainer=_trainer("distill", steps=1),
            settings=RecoverySettings(method="distill", distill=DistillSettings(hidden_weight=1.0)))
    first = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    # Step 1 runs before any update: a vocabulary-only cut computes exactly what the teacher computes,
    # provided the teacher reads its own ids (the student's new ids would index other embedding rows).
    assert first["kd_action"] == 0.0 and first["kd_hidden"] == 0.0


def test_resume_into_another_runs_directory_fails_before_training(dirs, tmp_path):
    out = tmp_path / "run"
    recover(dirs["pruned"], dirs["data"], out, trainer=_trainer(steps=2))
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(VlatrimError, match=r"cannot resume: .*\(source\.path: run has .*pruned'"):
        recover(dirs["teacher"], dirs["data"], out, trainer=_trainer(steps=2), resume=True)
    with pytest.raises(VlatrimError, match=r"cannot resume: .*\(trainer\.lr: run has 0\.0001, now 0\.5\)"):
        recover(dirs["pruned"], dirs["data"], out, trainer=_trainer(steps=2, lr=0.5), resume=True)
    with pytest.raises(VlatrimError, match=r"cannot resume: .*\(recovery\.method: run has 'full', now 'lora'\)"):
        recover(dirs["pruned"], dirs["data"], out, trainer=_trainer(steps=2, lr=1e-4),
                settings=RecoverySettings(method="lora"), resume=True)
    with pytest.raises(VlatrimError, match="is not empty; choose a new directory, or add --resume"):
        recover(dirs["pruned"], dirs["data"], out, trainer=_trainer(steps=2))
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # nothing was retrained or rewritten


def test_resume_refuses_a_changed_source_checkpoint(dirs, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(dirs["pruned"], src)
    out = tmp_path / "run"
    recover(src, dirs["data"], out, trainer=_trainer(steps=2))
    vla = ReferenceVLA.from_pretrained(src)
    with torch.no_grad():
        vla.action_queries.add_(1.0)
    vla.save_pretrained(src)  # same path, other weights
    with pytest.raises(VlatrimError, match=r"cannot resume: .*\(source\.sha256: run has '"):
        recover(src, dirs["data"], out, trainer=_trainer(steps=2), resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(dirs, tmp_path, monkeypatch):
    from vlatrim.train.data import ResumableBatchSampler, read_demo_frames, split_episodes

    frames = read_demo_frames(dirs["data"])
    train_eps, _ = split_episodes(frames, 0.1)
    rows = np.flatnonzero(np.isin(frames.episode_index, train_eps))
    # Poison the state of the first sample drawn at step 4 (a state feeds only its own sample; the first
    # epoch's 4 batches are disjoint, so steps 1-3 never see it).
    cfg = _trainer(checkpoint_every=1)
    batches = list(ResumableBatchSampler(len(rows), 8, cfg.seed, 0, 6))
    frames.states[rows[batches[3][0]]] = np.nan
    with pytest.raises(VlatrimError, match=r"non-finite loss \(nan\) at step 4; stopped, the last good checkpoint"):
        monkeypatch.setattr("vlatrim.families.reference.read_demo_frames", lambda _p: frames)
        recover(dirs["pruned"], dirs["data"], tmp_path / "run", trainer=cfg)
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    assert not (out / "config.json").exists() and not (out / "recover.json").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(settings=RecoverySettings(method="distill")), "method 'distill' needs --teacher"),
    (dict(teacher="x"), "--teacher is only used by --method distill, not 'full'"),
    (dict(settings=RecoverySettings(method="lora", lora=LoraSettings(targets=("qkv",)))),
     "LoRA target 'qkv' matches no linear module under 'backbone'"),
    (dict(settings=RecoverySettings(train_also=("backbone.nothing",))),
     r"--train-also 'backbone.nothing' matches no parameter of the model; give a dotted prefix of parameter names "
     r"\(they start with "),
])
def test_bad_input_fails_before_anything_is_written(dirs, tmp_path, kwargs, message):
    with pytest.raises(VlatrimError, match=message):
        recover(dirs["pruned"], dirs["data"], tmp_path / "run", trainer=_trainer(), **kwargs)
    assert not (tmp_path / "run").exists()


def test_train_also_is_for_full_and_distill_only():
    with pytest.raises(VlatrimError, match="--train-also applies to --method full and distill; LoRA trains prefixes in "
                                           "full with --lora-train-also"):
        RecoverySettings(method="lora", train_also=("head",))
    assert RecoverySettings(train_also=("head",)).method_dict()["train_also"] == ["head"]
    assert "train_also" not in RecoverySettings().method_dict()  # older runs' run_config.json still match on resume


def test_a_library_call_with_a_batch_larger_than_the_samples_writes_nothing(dirs, tmp_path):
    # The CLI checks this from the dataset's metadata; a program calling recover() gets the same line.
    with pytest.raises(VlatrimError, match=r"^batch size 4096 exceeds the \d+ training samples; lower --batch-size$"):
        recover(dirs["pruned"], dirs["data"], tmp_path / "run", trainer=_trainer(batch_size=4096))
    assert not (tmp_path / "run").exists()


def test_teacher_with_other_normalization_fails_before_training(dirs, tmp_path):
    other = tmp_path / "other"
    vla = tiny_vla(synthetic_frames(seed=9), "llama", blocks=4)
    vla.save_pretrained(other)
    with pytest.raises(VlatrimError, match="teacher normalization observation.state.mean differs from the student's"):
        recover(dirs["pruned"], dirs["data"], tmp_path / "run", teacher=other, trainer=_trainer("distill"),
                settings=RecoverySettings(method="distill"))
    assert not (tmp_path / "run").exists()


def test_cli_bad_input_is_one_line(dirs, tmp_path, capsys):
    code = cli(["recover", "--model", str(tmp_path / "nope"), "--data", str(dirs["data"]), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlatrim: --model ") and "is not a checkpoint directory" in err and "\n" not in err


# ------------------------------------------------------------------ kill -9 and resume
_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import vlatrim.train.recovery.base as base
    from vlatrim.cli.main import main

    flag, stop_at = Path(sys.argv[1]), int(sys.argv[2])
    calls = [0]
    loss = base.RecoveryMethod.loss
    def slow_loss(self, model, batch):
        calls[0] += 1
        if calls[0] == stop_at:  # tell the parent where we are, then wait for its SIGKILL mid-step
            flag.write_text(str(calls[0]))
            time.sleep(600)
        return loss(self, model, batch)
    base.RecoveryMethod.loss = slow_loss
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.parametrize("method", ["lora"])
def test_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_run(dirs, tmp_path, method):
    args = ["--model", str(dirs["pruned"]), "--data", str(dirs["data"]), "--method", method, "--steps", "6",
            "--batch-size", "8", "--checkpoint-every", "2", "--log-every", "1", "--seed", "3", "--device", "cpu",
            "--lora-rank", "4", "--lora-dropout", "0.1"]  # dropout: the RNG state must come back too
    flag = tmp_path / "at_step"
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    # Step 5's forward: steps 1-4 are done and checkpointed at 2 and 4; 5 is lost with the process.
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(flag), "5", "recover", *args, "--out", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child never reached step 5"
            time.sleep(0.05)
    finally:  # the child sleeps at step 5 until killed: never leave it behind, even when the test fails
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert not (killed / "config.json").exists()

    assert cli(["recover", *args, "--out", str(killed), "--resume"]) == 0
    assert cli(["recover", *args, "--out", str(tmp_path / "straight")]) == 0
    a, b = load_file(str(killed / "model.safetensors")), load_file(str(tmp_path / "straight" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical: same data order, optimizer and RNG state
    rep = json.loads((killed / "recover.json").read_text())
    assert rep["resumed_from"] == 4 and rep["budget"]["steps_this_call"] == 2 and rep["budget"]["samples"] == 48
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in p.read_text().splitlines()]
    assert strip(killed / "log.jsonl") == strip(tmp_path / "straight" / "log.jsonl")


# ------------------------------------------------------------------ data parallel: 2 processes (gloo) vs 1
def _torchrun(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """`vlatrim ARGS` in 2 CPU processes under torchrun: Accelerate sees RANK / WORLD_SIZE and runs DDP
    over gloo."""
    import socket

    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free rendezvous port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), "-m", "vlatrim", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["full", "lora", "distill"])
def test_two_process_run_follows_the_one_process_loss_curve(dirs, tmp_path, method):
    args = ["recover", "--model", str(dirs["pruned"]), "--data", str(dirs["data"]), "--method", method,
            "--steps", "8", "--batch-size", "8", "--log-every", "1", "--seed", "3", "--device", "cpu"]
    if method == "distill":  # action and hidden-state terms, both means of per-sample values
        args += ["--teacher", str(dirs["teacher"]), "--distill-hidden-weight", "0.5"]
    two = _torchrun([*args, "--out", str(tmp_path / "two")], timeout=300)  # the global batch (8) split 4 + 4
    assert two.returncode == 0, two.stderr[-3000:]
    assert cli([*args, "--out", str(tmp_path / "one")]) == 0
    one_rep, two_rep = (json.loads((tmp_path / d / "recover.json").read_text()) for d in ("one", "two"))
    assert (one_rep["budget"]["processes"], two_rep["budget"]["processes"]) == (1, 2)
    assert one_rep["budget"]["samples"] == two_rep["budget"]["samples"] == 64
    curve = lambda d: [json.loads(x)["loss"] for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
    one, two_ = curve("one"), curve("two")
    assert len(one) == len(two_) == 8
    # The action loss is a mean over the chunk steps inside their episodes, and the two halves hold
    # different numbers of them: each process divides by the global batch's count (the trainer's
    # loss_denominator), so the averaged gradients are the whole batch's. Measured: within 1.5e-7
    # relative over the 8 steps (1.3% at step 1 when each half divided by its own count).
    np.testing.assert_allclose(two_, one, rtol=2e-6)
    assert two_rep["held_out"]["l1"] == pytest.approx(one_rep["held_out"]["l1"], rel=1e-5)


@pytest.mark.integration
def test_an_error_only_the_main_process_sees_ends_every_process(dirs, tmp_path):
    # --out is a file: only the main process creates the run directory, so only it sees the error. The
    # other process must report the same error, not die at the next barrier with gloo's "Connection
    # closed by peer" traceback once the main process has exited.
    (out := tmp_path / "out").write_text("not a directory")
    run = _torchrun(["recover", "--model", str(dirs["pruned"]), "--data", str(dirs["data"]), "--out", str(out),
                     "--steps", "2", "--batch-size", "8", "--device", "cpu"], timeout=120)
    assert run.returncode != 0
    lines = [x for x in run.stderr.splitlines() if x.startswith("vlatrim: ")]
    assert len(lines) == 2 and all(str(out) in x for x in lines), run.stderr[-3000:]  # one line per process
    assert sum(x.startswith("vlatrim: the main process failed: ") for x in lines) == 1
    assert out.read_text() == "not a directory"
