"""The training loop: data order, chunk targets, overfitting, exact resume, the run directory, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vlatrim.errors import VlatrimError
from vlatrim.models.reference import ReferenceVLA, VLAConfig
from vlatrim.train.config import TrainerConfig
from vlatrim.train.data import ChunkDataset, DemoFrames, ResumableBatchSampler, split_episodes
from vlatrim.train.trainer import Trainer

IMG, T = 32, 3
INSTR = {0: "open the drawer", 1: "close the window"}


def synthetic_frames(n_ep: int = 6, length: int = 10, seed: int = 0, img: int = IMG) -> DemoFrames:
    """Episodes whose action is a fixed function of the image's mean colour and the task (learnable)."""
    rng = np.random.default_rng(seed)
    n = n_ep * length
    base = rng.integers(0, 256, (n, 1, 1, 3))  # a random flat colour per frame, plus pixel noise
    images = np.clip(base + rng.integers(-20, 21, (n, img, img, 3)), 0, 255).astype(np.uint8)
    task = np.repeat(np.arange(n_ep) % 2, length)
    colour = images.reshape(n, -1, 3).mean(1) / 127.5 - 1.0  # (n, 3) in [-1, 1]
    actions = np.concatenate([colour * np.where(task[:, None] == 0, 1.0, -1.0), task[:, None] * 2.0 - 1], 1)
    return DemoFrames(images=images, states=rng.normal(size=(n, 4)).astype(np.float32),
                      actions=np.clip(actions, -1, 1).astype(np.float32),
                      episode_index=np.repeat(np.arange(n_ep), length), frame_index=np.tile(np.arange(length), n_ep),
                      task_index=task, instructions=dict(INSTR))


def tiny_vla(frames: DemoFrames, backbone: str = "tiny-bert") -> ReferenceVLA:
    torch.manual_seed(0)
    vla = ReferenceVLA.from_backbone(VLAConfig(image_size=IMG, chunk_size=T, max_text_tokens=8), backbone)
    vla.set_normalization(frames.stats())
    return vla


def test_batch_sampler_order_is_a_function_of_the_batch_number():
    full = list(ResumableBatchSampler(10, 4, seed=3, start=0, num_batches=7))
    tail = list(ResumableBatchSampler(10, 4, seed=3, start=4, num_batches=3))
    assert tail == full[4:]
    # Two full batches per epoch (drop_last); each epoch is a permutation of distinct indices.
    assert len(set(full[0] + full[1])) == 8
    assert full[0:2] != full[2:4]  # a new shuffle each epoch
    with pytest.raises(VlatrimError, match="batch size 11 exceeds the 10 training samples"):
        ResumableBatchSampler(10, 11, 0, 0, 1)


def test_chunk_targets_stay_inside_the_episode():
    frames = synthetic_frames(n_ep=2, length=4)
    ds = ChunkDataset(frames, [1], chunk_size=3, tokenize=lambda s: (torch.zeros(len(s), 2, dtype=torch.long),
                                                                     torch.ones(len(s), 2, dtype=torch.long)))
    b = ds.__getitems__([0, 2, 3])  # frames 0, 2, 3 of episode 1 (rows 4, 6, 7)
    a = torch.from_numpy(frames.actions)
    assert torch.equal(b["action"][0], a[4:7])
    assert b["action_mask"].tolist() == [[True, True, True], [True, True, False], [True, False, False]]
    assert torch.equal(b["action"][2], a[[7, 7, 7]])  # padded with the last action (masked out)
    assert torch.equal(b["image"][1], torch.from_numpy(frames.images[6]))


def test_split_holds_out_the_last_episodes_of_each_task():
    frames = synthetic_frames(n_ep=10)
    train, val = split_episodes(frames, 0.2)
    # Tasks alternate by episode (0: even, 1: odd); 20% of 5 episodes each -> one per task.
    assert val == [8, 9] and train == [0, 1, 2, 3, 4, 5, 6, 7]
    assert split_episodes(frames, 0.0) == (list(range(10)), [])


def test_image_swap_pairs_same_step_of_another_episode_of_the_task():
    from vlatrim.train.evaluate import swap_partners

    f = synthetic_frames(n_ep=6, length=10)  # tasks alternate: 0, 2, 4 are task 0; 1, 3, 5 task 1
    m = ~((f.episode_index == 4) & (f.frame_index >= 5))  # episode 4 ends after 5 steps
    frames = DemoFrames(images=f.images[m], states=f.states[m], actions=f.actions[m], episode_index=f.episode_index[m],
                        frame_index=f.frame_index[m], task_index=f.task_index[m], instructions=f.instructions)
    ds = ChunkDataset(frames, [2, 3, 4], T,
                      lambda s: (torch.zeros(len(s), 2, dtype=torch.long), torch.ones(len(s), 2, dtype=torch.long)))
    keep, other, n_tasks = swap_partners(ds)
    # Task 0 has held-out episodes 2 and 4 (a cycle of two); task 1 only episode 3, which has no partner.
    assert n_tasks == 1 and keep.tolist() == list(range(0, 10)) + list(range(20, 25))
    # Episode 2 (rows 20-29) <-> episode 4 (rows 40-44), same step; past episode 4's end, its last frame.
    assert other.tolist() == [40, 41, 42, 43, 44, 44, 44, 44, 44, 44] + [20, 21, 22, 23, 24]


def test_image_swap_error_tells_a_model_that_ignores_its_camera():
    from vlatrim.train.evaluate import image_swap_error, offline_action_error

    frames = synthetic_frames(n_ep=8, length=10)
    val = [4, 5, 6, 7]  # two held-out episodes per task
    vla = tiny_vla(frames).eval()
    ds = ChunkDataset(frames, val, T, vla.tokenize)
    seen = image_swap_error(vla, ds)
    assert seen["samples"] == 40 and seen["tasks"] == 2
    assert seen["l1"] == pytest.approx(offline_action_error(vla, ds)["l1"], abs=1e-6)
    assert seen["action_change"] > 1e-5  # untrained, the image moves the prediction only a little (2e-4)
    # Zero the projector's input weights: every image gives the same tokens, so the prediction
    # cannot change and the error stays the same, exactly.
    with torch.no_grad():
        vla.projector[0].weight.zero_()
    blind = image_swap_error(vla, ds)
    assert blind["action_change"] == 0.0 and blind["l1_other_image"] == blind["l1"]
    assert image_swap_error(vla, ChunkDataset(frames, [6, 7], T, vla.tokenize)) is None  # one episode per task


def test_loss_decreases_when_overfitting_a_few_batches(tmp_path):
    frames = synthetic_frames(n_ep=1, length=8)
    vla = tiny_vla(frames, "tiny-llama")  # no dropout: the memorisation curve is smooth
    ds = ChunkDataset(frames, [0], T, vla.tokenize)  # 8 samples: the same batch every step
    cfg = TrainerConfig(steps=100, batch_size=8, lr=3e-3, warmup_steps=5, min_lr_ratio=1.0, checkpoint_every=100,
                        log_every=10)
    Trainer(vla, ds, cfg, tmp_path).fit()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(10, 101, 10))
    # Mean L1 (normalized units) over steps 1-10 vs 91-100 (measured ~0.85 -> ~0.1): memorising one
    # batch must cut it by well over half.
    assert log[-1]["loss"] < 0.4 * log[0]["loss"], [round(r["loss"], 3) for r in log]


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-llama"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, backbone):
    frames = synthetic_frames()
    cfg = TrainerConfig(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, checkpoint_every=2, log_every=1, seed=1)
    ref = tiny_vla(frames, backbone)
    Trainer(ref, ChunkDataset(frames, range(6), T, ref.tokenize), cfg, tmp_path / "a").fit()

    first = tiny_vla(frames, backbone)
    res = Trainer(first, ChunkDataset(frames, range(6), T, first.tokenize), cfg, tmp_path / "b").fit(stop_after=3)
    assert res.step == 3 and not res.finished
    # Pausing checkpoints step 3; a kill after step 3 would not have: drop it, so the resumed run
    # replays step 3 from the step-2 checkpoint (and must drop the step-3 line from the log).
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-0000003")
    # A fresh process would rebuild the model from scratch: perturb it so only the checkpoint can restore it.
    second = tiny_vla(frames, backbone)
    with torch.no_grad():
        for p in second.parameters():
            p.add_(1.0)
    res = Trainer(second, ChunkDataset(frames, range(6), T, second.tokenize), cfg, tmp_path / "b").fit(resume=True)
    assert res.resumed_from == 2 and res.step == 6  # newest checkpoint was step 2 (every 2; 3 was the stop)
    a, b = ref.state_dict(), second.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in p.read_text().splitlines()]
    assert strip(tmp_path / "b" / "log.jsonl") == strip(tmp_path / "a" / "log.jsonl")
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]


def test_accumulated_micro_batches_follow_the_full_batch_run(tmp_path):
    # Two micro-batches of 4 per step against one batch of 8: the same samples (the first epoch's order
    # does not depend on the batch size), so the loss curve and the weights must agree up to float
    # rounding. The action loss is a mean over the chunk steps inside their episodes, and the halves
    # hold different numbers of them: only the global denominator (Trainer._with_loss_denominator) makes
    # the mean of the halves the full batch's mean. Without it: curves 1.1% apart, weights 0.016.
    frames = synthetic_frames()  # 6 episodes x 10 frames: 7 full batches of 8 in the first epoch

    def run(out, grad_accum):
        vla = tiny_vla(frames, "tiny-llama")  # no dropout, whose masks would depend on the batch split
        cfg = TrainerConfig(steps=6, batch_size=8, grad_accum=grad_accum, lr=3e-3, warmup_steps=1,
                            checkpoint_every=6, log_every=1, seed=2)
        Trainer(vla, ChunkDataset(frames, range(6), T, vla.tokenize), cfg, tmp_path / out).fit()
        return vla, [json.loads(x)["loss"] for x in (tmp_path / out / "log.jsonl").read_text().splitlines()]

    (whole, one), (split, two) = run("whole", 1), run("split", 2)
    # Measured: curves within 7e-8 relative, weights within 1.5e-7; the bounds leave >10x room.
    np.testing.assert_allclose(two, one, rtol=1e-6)
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(split.state_dict()[k], v, rtol=0, atol=2e-6)


def test_fused_adamw_does_the_default_update():
    # make_adamw picks the fused kernel for plain parameters; it must be the same AdamW (a few ulps:
    # the fused kernel orders the arithmetic differently).
    from vlatrim.train.trainer import default_param_groups, make_adamw

    cfg = TrainerConfig(lr=1e-2, weight_decay=0.1)
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
    b = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5))
    b.load_state_dict(a.state_dict())
    fused = make_adamw(default_param_groups(a, cfg.weight_decay), cfg)
    plain = torch.optim.AdamW(default_param_groups(b, cfg.weight_decay), lr=cfg.lr, foreach=False)
    assert fused.defaults["fused"] is True
    x = torch.randn(4, 6)
    for _ in range(5):
        for m, opt in ((a, fused), (b, plain)):
            m(x).square().sum().backward()
            opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_resume_keeps_this_runs_adamw_kernel():
    # A checkpoint's param groups carry the kernel flags of the run that wrote it; loading it must not
    # switch this run's fused kernel off (or on).
    from vlatrim.train.trainer import _kernel_flags_kept, default_param_groups, make_adamw

    m = torch.nn.Linear(3, 2)
    old = torch.optim.AdamW(default_param_groups(m, 0.01), lr=1e-3)  # unfused, as before make_adamw
    m(torch.ones(1, 3)).sum().backward()
    old.step()
    new = make_adamw(default_param_groups(m, 0.01), TrainerConfig(lr=1e-3))
    with _kernel_flags_kept(new):
        new.load_state_dict(old.state_dict())
    assert all(g["fused"] is True for g in new.param_groups)
    assert torch.equal(new.state[m.weight]["exp_avg"], old.state[m.weight]["exp_avg"])


@pytest.mark.skipif(not __import__("vlatrim.utils.hardware", fromlist=["x"]).cpu_has_native_bf16(),
                    reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
def test_cpu_bf16_autocast_trains_and_resumes_exactly(tmp_path):
    # The quick preset trains in bf16 on such CPUs: the loss must still fall and resume stay exact.
    frames = synthetic_frames()
    cfg = TrainerConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=1, checkpoint_every=2, log_every=1,
                        mixed_precision="bf16", device="cpu")
    ref = tiny_vla(frames, "tiny-llama")
    trainer = Trainer(ref, ChunkDataset(frames, range(6), T, ref.tokenize), cfg, tmp_path / "a")
    assert trainer.accelerator.mixed_precision == "bf16"
    trainer.fit()
    again = tiny_vla(frames, "tiny-llama")
    Trainer(again, ChunkDataset(frames, range(6), T, again.tokenize), cfg, tmp_path / "b").fit(stop_after=2)
    resumed = tiny_vla(frames, "tiny-llama")
    Trainer(resumed, ChunkDataset(frames, range(6), T, resumed.tokenize), cfg, tmp_path / "b").fit(resume=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
        assert v.dtype == torch.float32, k  # autocast computes in bf16; the weights stay fp32
    # The trained model handed back computes in fp32 (no autocast wrapper left on its forward).
    clone = tiny_vla(frames, "tiny-llama")
    clone.load_state_dict(ref.state_dict())
    batch = ChunkDataset(frames, range(6), T, ref.tokenize).__getitems__(list(range(8)))
    ref.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(ref(batch)["loss"], clone(batch)["loss"])
    # A study then recovers in fp32 in the same process: Accelerate's one-precision state must not refuse it.
    fp32 = Trainer(again, ChunkDataset(frames, range(6), T, again.tokenize),
                   TrainerConfig(steps=1, batch_size=8, mixed_precision="no", device="cpu"), tmp_path / "c")
    assert fp32.accelerator.mixed_precision == "no"


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    frames = synthetic_frames()
    vla = tiny_vla(frames)
    cfg = TrainerConfig(steps=4, batch_size=4, checkpoint_every=1, log_every=1)
    nan_at_3 = lambda model, batch, n=[0]: (n.__setitem__(0, n[0] + 1) or
                                            {"loss": model(batch)["loss"] * (float("nan") if n[0] == 3 else 1.0)})
    with pytest.raises(VlatrimError, match="non-finite loss \\(nan\\) at step 3; stopped"):
        Trainer(vla, ChunkDataset(frames, range(6), T, vla.tokenize), cfg, tmp_path, loss_fn=nan_at_3).fit()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000001", "step-0000002"]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    frames = synthetic_frames()
    vla = tiny_vla(frames)
    ds = ChunkDataset(frames, range(6), T, vla.tokenize)
    with pytest.raises(VlatrimError, match="nothing to resume: .* holds no complete checkpoint"):
        Trainer(vla, ds, TrainerConfig(steps=2, batch_size=4), tmp_path).fit(resume=True)
    Trainer(vla, ds, TrainerConfig(steps=2, batch_size=4, checkpoint_every=1), tmp_path).fit(stop_after=1)
    with pytest.raises(VlatrimError, match="it was trained with lr=0.0003, this run has lr=0.001"):
        Trainer(vla, ds, TrainerConfig(steps=2, batch_size=4, lr=1e-3), tmp_path).fit(resume=True)


def test_bad_trainer_settings():
    with pytest.raises(VlatrimError, match="batch size 10 is not divisible by grad_accum 3"):
        TrainerConfig(batch_size=10, grad_accum=3)
    with pytest.raises(VlatrimError, match="device 'tpu' is not valid; valid: auto, cpu, cuda"):
        TrainerConfig(device="tpu")


# ------------------------------------------------------------------ the run directory, through the real reader
def write_lerobot(root, frames: DemoFrames) -> None:
    from vlatrim.data.lerobot import LeRobotWriter, metaworld_features

    with LeRobotWriter(root, metaworld_features(frames.image_size), fps=80) as w:
        for ep in frames.episodes():
            rows = frames.episode_index == ep
            n = int(rows.sum())
            w.add_episode({"observation.images.corner": frames.images[rows], "observation.state": frames.states[rows],
                           "action": frames.actions[rows], "next.success": np.zeros(n, bool)},
                          task=frames.instructions[int(frames.task_index[rows][0])])


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "demo"
    write_lerobot(root, synthetic_frames(n_ep=6, length=10))
    return root


def test_train_run_directory_is_a_loadable_policy(tmp_path, dataset_dir):
    from vlatrim.families import load_policy
    from vlatrim.train.run import train_reference

    out = tmp_path / "run"
    summary = train_reference(dataset_dir, out, preset="tiny", steps=4, checkpoint_every=2, device="cpu")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "normalization.json", "tokenizer", "run_config.json",
            "log.jsonl", "checkpoints", "train.json"} <= names
    assert summary["steps"] == 4 and summary["dataset"]["held_out_episodes"] == 2  # 10% of 3 per task -> 1 each
    held = json.loads((out / "train.json").read_text())["held_out"]
    assert len(held["l1_per_dim"]) == 4 and len(held["l1_per_step"]) == 4 and held["episodes"] == [4, 5]
    assert held["samples"] == 20
    assert held["image_swap"] is None  # one held-out episode per task: no other scene to swap in
    # Normalization comes from the training episodes only.
    vla = ReferenceVLA.from_pretrained(out)
    train_stats = synthetic_frames(n_ep=6, length=10).stats([0, 1, 2, 3])
    np.testing.assert_allclose(vla.normalization_stats()["action"]["mean"], train_stats["action"]["mean"], rtol=0,
                               atol=1e-6)  # float64 stats stored as float32 buffers
    policy = load_policy(str(out))
    obs = {"image": np.zeros((2, IMG, IMG, 3), np.uint8), "state": np.zeros((2, 4), np.float32),
           "instruction": ["open the drawer"] * 2, "task": ["drawer-open-v3"] * 2, "raw": np.zeros((2, 39), np.float32)}
    act = policy.predict(obs)
    assert act.shape == (2, 4, 4) and act.dtype == np.float32 and np.abs(act).max() <= 1.0
    assert policy.image_size == IMG and policy.chunk_size == 4


def test_train_resume_refuses_changed_settings_and_continues(tmp_path, dataset_dir):
    from vlatrim.train.run import train_reference

    out = tmp_path / "run"
    with pytest.raises(VlatrimError, match="cannot resume: .* holds no run_config.json"):
        train_reference(dataset_dir, out, preset="tiny", resume=True)
    train_reference(dataset_dir, out, preset="tiny", steps=2, checkpoint_every=1)
    with pytest.raises(VlatrimError, match="is not empty; choose a new directory, or add --resume"):
        train_reference(dataset_dir, out, preset="tiny", steps=2)
    with pytest.raises(VlatrimError, match="cannot resume: --lr 0.5 differs from the run's 0.001"):
        train_reference(dataset_dir, out, preset="tiny", resume=True, lr=0.5)
    with pytest.raises(VlatrimError, match="cannot resume: --state False differs from the run's True"):
        train_reference(dataset_dir, out, preset="tiny", resume=True, use_state=False)
    with pytest.raises(VlatrimError, match="cannot resume: --keypoints 8 differs from the run's 0"):
        train_reference(dataset_dir, out, preset="tiny", resume=True, conv_keypoints=8)
    summary = train_reference(dataset_dir, out, preset="tiny", resume=True, use_state=True)  # finished: nothing to redo
    assert summary["steps"] == 2 and summary["resumed_from"] == 2


def test_train_rejects_bad_datasets(tmp_path):
    from vlatrim.train.run import train_reference

    with pytest.raises(VlatrimError, match="dataset directory .* does not exist"):
        train_reference(tmp_path / "nope", tmp_path / "out", preset="tiny")
    assert not (tmp_path / "out").exists()
    odd = tmp_path / "odd"
    write_lerobot(odd, synthetic_frames(n_ep=2, length=3, img=24))
    with pytest.raises(VlatrimError, match="image size 24 px is not divisible by the conv encoder's stride 16"):
        train_reference(odd, tmp_path / "out2", preset="tiny")
    assert not (tmp_path / "out2").exists()


def test_cli_train_and_one_line_errors(tmp_path, dataset_dir, capsys):
    from vlatrim.cli.main import main

    assert main(["train", "--data", str(dataset_dir), "--out", str(tmp_path / "r"), "--preset", "tiny",
                 "--steps", "2", "--device", "cpu"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert main(["train", "--data", str(dataset_dir), "--out", str(tmp_path / "ns"), "--preset", "tiny",
                 "--steps", "2", "--device", "cpu", "--state", "False", "--keypoints", "8"]) == 0
    capsys.readouterr()
    ns = ReferenceVLA.from_pretrained(tmp_path / "ns")
    assert ns.config.use_state is False and ns.state_proj is None
    assert ns.config.conv_keypoints == 8 and ns.vision.keypoints.conv.out_channels == 8
    assert json.loads((tmp_path / "ns" / "run_config.json").read_text())["model"]["use_state"] is False
    assert main(["train", "--data", str(dataset_dir), "--out", str(tmp_path / "r2"), "--backbone", "gpt-17"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlatrim: unknown backbone 'gpt-17'; valid: ") and "\n" not in err


def test_frozen_word_embeddings_stay_pretrained(tmp_path, dataset_dir):
    from vlatrim.models.backbones import load_backbone
    from vlatrim.train.run import train_reference
    from vlatrim.utils.seeding import seed_everything

    train_reference(dataset_dir, tmp_path / "run", preset="tiny", steps=3, train_word_embeddings=False)
    trained = ReferenceVLA.from_pretrained(tmp_path / "run")
    seed_everything(0)  # the run's seed: the backbone is the first thing it initialises
    initial = load_backbone("tiny-bert").model
    assert torch.equal(trained.backbone.get_input_embeddings().weight, initial.get_input_embeddings().weight)
    # ...while the rest of the backbone did train.
    assert not torch.equal(trained.backbone.encoder.layer[0].attention.self.query.weight,
                           initial.encoder.layer[0].attention.self.query.weight)


def test_every_preset_resolves_to_a_valid_architecture():
    from vlatrim.train.presets import TRAIN_PRESETS
    from vlatrim.train.run import resolve_run_config

    for name in TRAIN_PRESETS.names():
        cfg = VLAConfig.from_dict({**resolve_run_config(name, {})["model"], "image_size": 96})
        assert cfg.num_image_tokens >= 1, name
    mt10 = VLAConfig.from_dict({**resolve_run_config("mt10", {})["model"], "image_size": 96})
    assert (mt10.num_image_tokens, mt10.conv_keypoints, mt10.use_state) == (3 * 3 + 1, 32, False)  # the measured 0.706 run
