"""Distillation recovery of a cut SmolVLA from its unpruned policy: the student's and the teacher's velocity
at the same noise and time, kept VLM text layers aligned with the teacher layers they were cut from, and
teachers whose predictions are in other units refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from distill_helpers import kd_before_and_after
from vlatrim.cli.main import main
from vlatrim.errors import VlatrimError
from vlatrim.families import FAMILIES, family_of
from vlatrim.families.lerobot_smolvla import LANGUAGE_PATH, lerobot_available
from vlatrim.train.recovery import RECOVERY_METHODS, DistillSettings, RecoverySettings

pytestmark = pytest.mark.skipif(not lerobot_available(),
                                reason="needs lerobot 0.4.4 (Python 3.11, transformers 4.57): run `make test-lerobot`")
FAMILY = "lerobot_smolvla"


def _distill(student, teacher, kept, **kw):
    method = RECOVERY_METHODS.get("distill")(RecoverySettings(method="distill", distill=DistillSettings(**kw)),
                                             FAMILIES.get(FAMILY))
    method.attach_teacher(teacher, student, kept)
    return method


def _batch(model, dataset: Path, n: int = 6) -> dict[str, torch.Tensor]:
    return FAMILIES.get(FAMILY).dataset(model, dataset, "all").data.__getitems__(list(range(n)))


def test_distillation_terms_are_exactly_zero_when_the_teacher_is_the_student(policy_dir, dataset):
    fam = family_of(policy_dir)
    student = fam.load(policy_dir)
    batch = _batch(student, dataset)
    method = _distill(student, copy.deepcopy(student), None, hidden_weight=0.5, action_weight=2.0)
    out = method.loss(student, batch)
    assert out["kd_action"].item() == 0.0 and out["kd_hidden"].item() == 0.0
    torch.testing.assert_close(out["loss"], fam.loss(student, batch)["loss"], rtol=0, atol=0)  # task loss alone


def test_the_compared_prediction_is_the_velocity_the_flow_matching_loss_scores(policy_dir, dataset):
    fam = family_of(policy_dir)
    student = fam.load(policy_dir)
    batch = _batch(student, dataset)
    s_out, t_out = fam.distill_outputs(student, copy.deepcopy(student), batch)
    v = s_out["raw"]
    assert v.shape == batch["policy.action"].shape  # the 4 real action dims of each chunk step, not the 32 padded
    assert torch.equal(s_out["raw_mask"], batch["action_mask"].bool())
    # In eval mode both use the batch's fixed draws: u_t = noise - action, and on the real dims the loss's
    # squared error is (u_t - v)^2. Recompute the loss from v (and the padded dims, which are pure noise targets).
    noise, target = batch["noise"], batch["policy.action"]
    a = target.shape[-1]
    with torch.no_grad():
        grabbed = []
        h = student.model.action_out_proj.register_forward_hook(lambda _m, _i, o: grabbed.append(o))
        fam.loss(student, batch)
        h.remove()
    v_all = grabbed[0]
    torch.testing.assert_close(v_all[..., :a], v, rtol=0, atol=0)
    u = noise.clone()
    u[..., :a] = noise[..., :a] - target
    per = (u - v_all).square() * batch["action_mask"][..., None]
    torch.testing.assert_close(per.mean(), s_out["loss"], rtol=1e-5, atol=1e-7)
    # In train mode the draws are fresh, but the student and the teacher share them.
    student.train()
    s_out, t_out = fam.distill_outputs(student, copy.deepcopy(student).train(), batch)
    torch.testing.assert_close(s_out["raw"], t_out["raw"], rtol=0, atol=0)


def test_kept_text_layers_align_with_the_teacher_layers_they_were_cut_from(policy_dir, dataset, tmp_path):
    cut = tmp_path / "cut"
    assert main(["prune", "--model", str(policy_dir), "--out", str(cut), "--drop-blocks", "2,3"]) == 0
    kept = json.loads((cut / "prune.json").read_text())["kept_blocks"]
    assert kept == [0, 1]
    fam = family_of(cut)
    student, teacher = fam.load(cut), fam.load(policy_dir)
    batch = _batch(student, dataset)
    # The prefix (images, text, state) never attends to the expert, so VLM layers 0 and 1 compute exactly what
    # the teacher's layers 0 and 1 compute: paired by prune.json the hidden term is 0; paired by index it is not.
    right = _distill(student, teacher, kept, hidden_weight=1.0).loss(student, batch)
    assert right["kd_hidden"].item() == 0.0
    assert right["kd_action"].item() > 0  # the expert lost layers 2 and 3: its velocity differs
    wrong = _distill(student, teacher, [2, 3], hidden_weight=1.0).loss(student, batch)
    assert wrong["kd_hidden"].item() > 1e-6  # random tiny layers change the residual little (measured 3e-5)


def test_distillation_pulls_the_student_velocity_towards_the_teacher(policy_dir, dataset, tmp_path):
    cut = tmp_path / "cut"
    assert main(["prune", "--model", str(policy_dir), "--out", str(cut), "--drop-blocks", "2,3"]) == 0
    fam = family_of(cut)
    student, teacher = fam.load(cut), fam.load(policy_dir)
    batch = _batch(student, dataset)  # eval mode: the batch's fixed draws, so the term is comparable across steps
    method = _distill(student, teacher, None, task_weight=0.0, action_weight=1.0)
    method.prepare(student)
    first, last = kd_before_and_after(method, student, batch, lr=1e-4, steps=8)  # 1e-3 overshoots here
    assert last < 0.5 * first
    assert all(p.grad is None for p in teacher.parameters())  # the teacher never trains


def test_recover_distill_trains_what_full_trains_and_lerobot_reloads_it(policy_dir, dataset, tmp_path):
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    cut = tmp_path / "cut"
    assert main(["prune", "--model", str(policy_dir), "--out", str(cut), "--drop-blocks", "2,3"]) == 0
    runs = {}
    for method in ("full", "distill"):
        out = tmp_path / method
        extra = ["--teacher", str(policy_dir), "--distill-hidden-weight", "0.5"] if method == "distill" else []
        assert main(["recover", "--model", str(cut), "--data", str(dataset), "--out", str(out), "--method", method,
                     *extra, "--steps", "2", "--batch-size", "4", "--checkpoint-every", "2"]) == 0
        runs[method] = json.loads((out / "recover.json").read_text())
    rec = runs["distill"]
    assert rec["method"] == "distill" and rec["teacher"]["path"] == str(policy_dir.resolve())
    assert rec["params"]["trainable"] == runs["full"]["params"]["trainable"]  # the same parameters as full
    assert {"task", "kd_action", "kd_hidden"} <= set(rec["final_log"])
    before = SmolVLAPolicy.from_pretrained(str(cut), strict=True)
    after = SmolVLAPolicy.from_pretrained(str(tmp_path / "distill"), strict=True)  # LeRobot reloads it
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])}
    assert any(k.startswith(f"{LANGUAGE_PATH}.0.") for k in changed)  # the text layers the cut touched train
    assert any(k.startswith("model.vlm_with_expert.lm_expert.") for k in changed)
    assert not any(".vision_model." in k for k in changed)


@pytest.mark.parametrize("overrides, message", [
    ({"chunk_size": 4, "n_action_steps": 4}, "teacher chunk_size is 4 but the student's is 8"),
    ({"max_action_dim": 16}, "teacher max_action_dim is 16 but the student's is 32"),
])
def test_a_teacher_in_other_units_is_refused_with_nothing_written(policy_dir, make_policy, dataset, tmp_path,
                                                                 capsys, overrides, message):
    other = make_policy(tmp_path / "other", **overrides)
    out = tmp_path / "r"
    assert main(["recover", "--model", str(policy_dir), "--data", str(dataset), "--out", str(out), "--method",
                 "distill", "--teacher", str(other), "--steps", "1", "--batch-size", "4"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_teacher_with_other_normalisation_stats_is_refused(policy_dir, dataset):
    fam = family_of(policy_dir)
    student, teacher = fam.load(policy_dir), fam.load(policy_dir)
    post = teacher._vlatrim_processors[1]
    step = next(s for s in post.steps if getattr(s, "stats", None))
    key = next(iter(step.stats))
    stat = next(iter(step.stats[key]))
    step.stats[key][stat] = step.stats[key][stat] * 2 + 1
    with pytest.raises(VlatrimError, match=f"teacher normalization {key}.{stat} differs from the student's"):
        fam.check_teacher(student, teacher)


def test_train_also_trains_the_vision_encoder_lerobot_freezes_after_a_vision_cut(policy_dir, dataset, tmp_path):
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    cut = tmp_path / "cut"
    assert main(["prune", "--model", str(policy_dir), "--out", str(cut), "--pathway", "vision",
                 "--drop-blocks", "0"]) == 0
    vision = "model.vlm_with_expert.vlm.model.vision_model"
    runs = {}
    for name, extra in (("plain", []), ("vision", ["--train-also", vision])):
        out = tmp_path / name
        assert main(["recover", "--model", str(cut), "--data", str(dataset), "--out", str(out), "--method", "full",
                     *extra, "--steps", "2", "--batch-size", "4", "--checkpoint-every", "2"]) == 0
        after = SmolVLAPolicy.from_pretrained(str(out), strict=True)
        before = SmolVLAPolicy.from_pretrained(str(cut), strict=True)
        runs[name] = (json.loads((out / "recover.json").read_text()),
                      {k for k, v in after.state_dict().items() if not torch.equal(v, before.state_dict()[k])})
    assert before.config.freeze_vision_encoder  # LeRobot's default: without --train-also the encoder stays as cut
    assert not any(k.startswith(vision + ".") for k in runs["plain"][1])
    assert any(k.startswith(vision + ".encoder.layers.") for k in runs["vision"][1])
    n_vision = sum(p.numel() for n, p in before.named_parameters() if n.startswith(vision + "."))
    assert runs["vision"][0]["params"]["trainable"] == runs["plain"][0]["params"]["trainable"] + n_vision
    assert runs["vision"][0]["settings"]["recovery"]["train_also"] == [vision]
