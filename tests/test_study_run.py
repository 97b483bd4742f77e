"""``vlatrim study`` end to end on the tiny preset and a synthetic LeRobot dataset (no rendering):
stages, resume, study.json schema, report.html."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vlatrim.cli.main import main
from vlatrim.data.lerobot import LeRobotWriter, metaworld_features
from vlatrim.errors import VlatrimError
from vlatrim.study.config import StudyConfig
from vlatrim.study.presets import resolve_study_config

TASKS = ["open the drawer", "close the drawer"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "ds"
    w = LeRobotWriter(root, metaworld_features(32), fps=10)
    rng = np.random.default_rng(0)
    for e in range(6):
        T = 8
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(T, 4)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(T, 4)).astype(np.float32),
                       "next.success": np.zeros(T, dtype=bool)}, TASKS[e % 2])
    w.close()
    return root


@pytest.fixture(scope="module")
def study(dataset, tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("study") / "s"
    rc = main(["study", "--out", str(out), "--preset", "tiny", "--data", str(dataset)])
    assert rc == 0
    return out, json.loads((out / "study.json").read_text()), str(dataset)


def test_study_runs_every_available_stage(study) -> None:
    out, s, _ = study
    assert s["schema_version"] == 1
    assert set(s) >= {"created", "settings", "device", "data", "base", "analysis", "variants", "bench", "stages",
                      "unavailable", "notes", "plots", "report"}
    assert s["base"]["num_blocks"] == 2 and s["data"]["generated"] is False
    assert s["data"]["frames"] == 48 and s["data"]["held_out_episodes"] == 2
    # tiny preset: ratio 0.5 of 2 blocks -> remove 1, ranked by drop-one.
    names = [v["name"] for v in s["variants"]]
    assert names[0] == "base" and "drop_one-drop1" in names
    base, drop = s["variants"][0], s["variants"][names.index("drop_one-drop1")]
    assert (base["blocks_kept"], drop["blocks_kept"]) == (2, 1) and drop["kind"] == "dropped"
    scores = s["analysis"]["scorers"]["drop_one"]["per_block"]
    assert drop["kept_blocks"] == [int(np.argmax(scores))]  # the block whose removal hurts least goes
    assert set(s["analysis"]["scorers"]) == {"drop_one", "block_influence"}
    assert 0 < drop["params_total"] < base["params_total"] and drop["flops_full"] < base["flops_full"]
    for v in (base, drop):
        assert v["offline_l1"] > 0 and v["success_rate"] is None and v["latency_full_ms"] > 0
    # Stages that exist in this build ran once, each in its own directory with stage.json.
    for st in ("base", "analysis", "base_eval", "variants/drop_one-drop1/pruned", "variants/drop_one-drop1/eval_dropped", "bench"):
        assert s["stages"][st]["status"] == "ran" and (out / st / "stage.json").is_file()
    assert (out / "base" / "model.safetensors").is_file() and not (out / "base" / "checkpoints").exists()
    assert (out / "variants/drop_one-drop1/pruned/prune.json").is_file()
    assert "closed_loop_eval" in s["unavailable"] and "closed_loop=False" in s["unavailable"]["closed_loop_eval"]
    if "recover" in s["unavailable"]:  # a build without vlatrim.train.recovery
        assert not any(v["kind"] in ("recovered", "control") for v in s["variants"])
        assert any("Recovery fine-tuning did not run" in n for n in s["notes"])
    else:  # the recovered pruned model and the unpruned control, same budget (tiny preset: 2 steps at batch 8, full)
        rec, ctl = s["variants"][names.index("drop_one-drop1-full")], s["variants"][names.index("control-full")]
        assert rec["kind"] == "recovered" and rec["bench_of"] == "drop_one-drop1" and rec["blocks_kept"] == 1
        assert ctl["kind"] == "control" and ctl["blocks_kept"] == 2
        for v in (rec, ctl):
            assert v["recover"]["budget"]["steps"] == 2 and v["recover"]["budget"]["samples"] == 16
            assert v["offline_l1"] == pytest.approx(v["recover"]["held_out_l1"], rel=1e-5)  # same held-out episodes
        assert rec["params_total"] == drop["params_total"] and rec["latency_full_ms"] == drop["latency_full_ms"]
        for st in ("control/recovered-full", "variants/drop_one-drop1/recovered-full", "variants/drop_one-drop1/eval_recovered-full"):
            assert s["stages"][st]["status"] == "ran"
        assert (out / "variants/drop_one-drop1/recovered-full/recover.json").is_file()
    assert not list(out.rglob("*.partial"))


def test_report_has_tables_images_and_settings(study) -> None:
    out, s, _ = study
    page = (out / "report.html").read_text()
    assert s["report"] == "report.html"
    assert set(s["plots"]) == {"offline_l1_vs_blocks.png", "efficiency_vs_blocks.png", "scorers.png", "pareto.png"}
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(imgs) == 4 and all(len(i) > 1000 for i in imgs)  # embedded, self-contained
    # The first lines after the title state the headline, which study.json carries too.
    assert s["headline"] and s["headline"][0].startswith("1 of 2 blocks removed (drop_one): L1 ")
    assert page.index(html.escape(s["headline"][0])) < page.index("<h2>")
    assert page.count("<table>") >= 3 and "drop_one-drop1" in page and "Spearman vs drop-one" in page
    assert '"train_preset": "tiny"' in page and "Device" in page
    for n in s["notes"]:
        assert n.split("(")[0].strip() in page.replace("&#x27;", "'")
    assert "src='http" not in page and "<script" not in page


# Appended to a copy of report.html: once the page has loaded, it writes what the browser shows (each image's
# decoded size, the variants table's cell texts) into a <pre id="probe"> that --dump-dom prints.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight}));
  const table = document.querySelector('table');
  const rows = [...table.querySelectorAll('tbody tr')].map(tr => [...tr.cells].map(td => td.textContent));
  const head = [...table.querySelectorAll('thead th')].map(th => th.textContent);
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({imgs, head, rows}); document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (Debian's chromium package; .ci/run installs it)")
def test_report_opens_in_headless_chromium_with_every_plot_and_the_study_numbers(study, tmp_path) -> None:
    out, s, _ = study
    page = (out / "report.html").read_text()
    probe = tmp_path / "report_probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    res = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stderr[-2000:]
    seen = json.loads(html.unescape(m.group(1)))
    # Every plot study.json lists is an image the browser decoded (a broken one has natural size 0).
    assert sorted(i["alt"] for i in seen["imgs"]) == sorted(s["plots"])
    assert all(i["w"] > 100 and i["h"] > 100 for i in seen["imgs"])
    # The variants table, as rendered, holds study.json's numbers.
    col = {h: i for i, h in enumerate(seen["head"])}
    assert len(seen["rows"]) == len(s["variants"])
    for cells, v in zip(seen["rows"], s["variants"], strict=True):
        assert cells[col["variant"]] == v["name"]
        assert cells[col["held-out L1"]] == f"{v['offline_l1']:.3f}"
        assert cells[col["params"]] == f"{v['params_total']:,}"
        assert cells[col["full ms"]] == f"{v['latency_full_ms']:.2f}"
        assert cells[col["weights MiB"]] == f"{v['weight_bytes'] / 2**20:.1f}"
        sr, w = v["success_rate"], v["success_wilson95"]
        assert cells[col["success"]] == ("\u2013" if sr is None else f"{sr:.2f} [{w[0]:.2f}, {w[1]:.2f}]")


def test_resume_skips_finished_stages(study, tmp_path) -> None:
    out, s, data = study
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")}
    rc = main(["study", "--out", str(out), "--preset", "tiny", "--data", data, "--resume"])
    assert rc == 0
    again = json.loads((out / "study.json").read_text())
    assert again["stages"] and all(v["status"] == "resumed" for v in again["stages"].values())
    assert set(again["stages"]) == set(s["stages"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("stage.json")} == mtimes
    assert [v["offline_l1"] for v in again["variants"]] == [v["offline_l1"] for v in s["variants"]]


def test_resume_after_interruption_reruns_only_missing_stages(study, dataset, tmp_path) -> None:
    import shutil

    out, _, data = study
    copy = tmp_path / "s2"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "bench")
    shutil.rmtree(copy / "variants" / "drop_one-drop1" / "eval_dropped")
    # An evaluation killed before it finished: its .partial directory (no stage.json) is redone.
    shutil.move(copy / "base_eval", copy / "base_eval.partial")
    (copy / "base_eval.partial" / "stage.json").unlink()
    assert main(["study", "--out", str(copy), "--preset", "tiny", "--data", data, "--resume"]) == 0
    moved = json.loads((copy / "study.json").read_text())
    assert all(v["params_total"] for v in moved["variants"])  # bench rows found by variant, not by old paths
    st = moved["stages"]
    ran = sorted(k for k, v in st.items() if v["status"] == "ran")
    assert ran == ["base_eval", "bench", "variants/drop_one-drop1/eval_dropped"]
    assert not (copy / "base_eval.partial").exists()
    assert st["base"]["status"] == "resumed" and st["base"]["seconds"] > 0 and st["variants/drop_one-drop1/pruned"]["status"] == "resumed"


def test_bad_settings_and_resume_mismatch(study, tmp_path, capsys) -> None:
    out, _, data = study
    assert main(["study", "--out", str(out), "--preset", "tiny", "--data", data]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["study", "--out", str(out), "--preset", "tiny", "--data", data, "--resume", "--train-steps", "5"]) == 2
    assert "was made with other settings (config.train_steps: run has 20, now 5)" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path / "x"), "--preset", "tiny", "--data", data, "--ratios", "1.0"]) == 2
    assert "ratio 1.0 is not valid" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path / "y"), "--preset", "tiny", "--data", data, "--scorer", "head_taylor"]) == 2
    assert "scores heads" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path / "w"), "--preset", "tiny", "--data", data, "--ratios", "0.5,x"]) == 2
    assert "--ratios takes numbers" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path / "v"), "--preset", "tiny", "--data", data, "--methods", "full,prune"]) == 2
    assert "recovery method 'prune' is not valid" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path / "z"), "--preset", "nope"]) == 2
    assert "unknown study preset 'nope'" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "vwxyz")


def test_config_block_counts_and_presets() -> None:
    cfg = StudyConfig(ratios=(0.1, 0.5, 0.51, 0.99), closed_loop=False)
    assert cfg.block_counts(6) == [1, 3, 5]  # rounded, at least 1, at most blocks - 1, deduplicated
    with pytest.raises(VlatrimError, match="at least 2"):
        cfg.block_counts(1)
    assert StudyConfig(scorers=("gateprobe",), analysis_scorers=("drop_one",)).analysis_scorers == ("drop_one", "gateprobe")
    demo = resolve_study_config("demo", {"ratios": (0.5,), "tasks": None})
    assert demo.ratios == (0.5,) and demo.tasks == ("drawer-close-v3",) and demo.image_size <= 96
    with pytest.raises(VlatrimError, match="unknown recovery method|not valid"):
        StudyConfig(methods=("prune-harder",))
    # The transfer presets adapt to tasks outside their pretraining tasks, over several budgets.
    for name, n_targets in (("transfer", 4), ("transfer-mt10", 10)):
        t = resolve_study_config(name, {})
        assert t.protocol == "transfer" and len(t.target_tasks) == n_targets and not set(t.tasks) & set(t.target_tasks)
        assert t.work_tasks() == t.target_tasks and len(t.recovery_budgets()) >= 2
    mt10 = set(resolve_study_config("mt10", {}).tasks)
    assert not mt10 & set(resolve_study_config("transfer-mt10", {}).target_tasks)
    # quick-budgets: the deployment protocol on exactly the transfer preset's pretraining (same base model).
    q, t = resolve_study_config("quick-budgets", {}), resolve_study_config("transfer", {})
    assert q.protocol == "deployment" and q.recovery_budgets() == t.recovery_budgets()
    same = ("tasks", "episodes_per_task", "image_size", "data_seed", "train_preset", "train_steps", "batch_size", "seed",
            "lr", "backbone", "ratios", "eval_episodes")
    assert {k: getattr(q, k) for k in same} == {k: getattr(t, k) for k in same}


def test_budget_axis_runs_every_variant_and_the_control_at_each_budget(dataset, tmp_path) -> None:
    out = tmp_path / "b"
    assert main(["study", "--out", str(out), "--preset", "tiny", "--data", str(dataset),
                 "--recover-budgets", "0.2,0.1"]) == 0
    s = json.loads((out / "study.json").read_text())
    rows = {r["name"]: r for r in s["variants"]}
    # tiny preset: the base trains 20 steps, so budgets 0.1 and 0.2 are 2 and 4 recovery steps.
    assert {n: (r["budget_fraction"], r["recover_steps"]) for n, r in rows.items() if "recover" in r} == {
        "control-full-b0.1": (0.1, 2), "control-full-b0.2": (0.2, 4),
        "drop_one-drop1-full-b0.1": (0.1, 2), "drop_one-drop1-full-b0.2": (0.2, 4)}
    (curve,) = s["budget_curves"]
    assert (curve["scorer"], curve["removed"], curve["method"]) == ("drop_one", 1, "full")
    # Budget 0: the base itself, and the pruned model as cut.
    assert [p["fraction"] for p in curve["control"]] == [p["fraction"] for p in curve["points"]] == [0.0, 0.1, 0.2]
    assert curve["control"][0]["offline_l1"] == rows["base"]["offline_l1"]
    assert curve["points"][0]["offline_l1"] == rows["drop_one-drop1"]["offline_l1"]
    # A pruned step costs fewer FLOPs: 3 forwards per sample x samples, with the pruned model's forward.
    for p, c in zip(curve["points"][1:], curve["control"][1:]):
        assert 0 < p["train_flops"] < c["train_flops"]
        assert p["train_flops"] == 3 * rows["drop_one-drop1"]["flops_full"] * p["steps"] * 8  # tiny: batch 8
    # From which budget on the pruned model meets the control, recomputed from the points (held-out L1: lower
    # is better).
    meets = [p["offline_l1"] <= next(c for c in curve["control"] if c["fraction"] == p["fraction"])["offline_l1"]
             for p in curve["points"]]
    step = next((p["fraction"] for i, p in enumerate(curve["points"]) if all(meets[i:])), None)
    assert curve["meets_control_step_matched_at"] == step
    assert "quality_vs_budget.png" in s["plots"] and (out / "quality_vs_budget.png").is_file()
    assert "<h2>Recovery budget</h2>" in (out / "report.html").read_text()


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="needs torchao (vlatrim[quantize])")
def test_quantization_stage_quantizes_every_variant_evaluates_and_benches_it(dataset, tmp_path) -> None:
    out = tmp_path / "q"
    assert main(["study", "--out", str(out), "--preset", "tiny", "--data", str(dataset), "--quantize", "int8-weight"]) == 0
    s = json.loads((out / "study.json").read_text())
    rows = {r["name"]: r for r in s["variants"]}
    floats = [n for n, r in rows.items() if r["kind"] != "quantized"]
    assert sorted(n for n, r in rows.items() if r["kind"] == "quantized") == sorted(f"{n}+int8-weight" for n in floats)
    for n in floats:
        f, q = rows[n], rows[f"{n}+int8-weight"]
        assert (q["quantized_from"], q["quantized_kind"], q["scheme"]) == (n, f["kind"], "int8-weight")
        assert q["blocks_kept"] == f["blocks_kept"] and q["params_total"] == f["params_total"]
        # Benched once per architecture: a quantized recovered model takes its quantized pruned model's figures.
        assert q["bench_of"] == f"{f['bench_of']}+int8-weight" and q["latency_full_ms"] > 0
        assert q["weight_bytes"] < 0.6 * f["weight_bytes"]  # tiny model: convolutions and norms stay float
        # Evaluated on the same held-out episodes: int8 weights move the action error only a little.
        assert q["offline_l1"] == pytest.approx(f["offline_l1"], rel=0.05) and q["offline_l1"] != f["offline_l1"]
        assert (out / "quantized/int8-weight" / n / "model/checkpoint/config.json").is_file()
    assert "pareto.png" in s["plots"] and (out / "pareto.png").is_file()
    assert any(line.startswith("The same model quantized int8-weight: L1 ") for line in s["headline"])
    # Resuming finds every stage done, the quantized ones included.
    assert main(["study", "--out", str(out), "--preset", "tiny", "--data", str(dataset), "--quantize", "int8-weight",
                 "--resume"]) == 0
    again = json.loads((out / "study.json").read_text())
    assert all(v["status"] == "resumed" for v in again["stages"].values())
    assert main(["study", "--out", str(tmp_path / "bad"), "--preset", "tiny", "--data", str(dataset),
                 "--quantize", "int3"]) == 2
    assert not (tmp_path / "bad").exists()


def test_pareto_front_and_headline_from_rows() -> None:
    from vlatrim.study.plots import pareto_front
    from vlatrim.study.results import headline

    # (cost, success): (2, 0.5) is beaten by (1, 0.6); (3, 0.9) is the best at its cost.
    assert pareto_front([(2.0, 0.5), (1.0, 0.6), (3.0, 0.9), (3.0, 0.8)]) == [1, 2]
    assert pareto_front([(1.0, 0.2), (2.0, 0.1)], higher_is_better=False) == [0, 1]  # L1: lower is better

    def row(name, kind, removed, success, lat, **kw):
        return {"name": name, "kind": kind, "removed": removed, "scorer": "drop_one", "method": "full",
                "success_rate": success, "success_wilson95": [success - 0.1, min(success + 0.1, 1.0)],
                "offline_l1": None, "latency_full_ms": lat, "latency_backbone_ms": lat / 2, "params_total": 100 - 10 * removed,
                "weight_bytes": (100 - 10 * removed) * 2**20, "recover_steps": 320, "budget_fraction": None, **kw}
    rows = [row("base", "base", 0, 0.8, 10.0, method=None), row("control-full", "control", 0, 0.85, 10.0),
            row("d2", "dropped", 2, 0.3, 8.0), row("d4", "dropped", 4, 0.1, 5.0),
            row("d2-full", "recovered", 2, 0.9, 8.0, bench_of="d2"), row("d4-full", "recovered", 4, 0.7, 5.0, bench_of="d4"),
            row("d2-full+int8-weight", "quantized", 2, 0.88, 9.0, bench_of="d2+int8-weight", quantized_from="d2-full",
                scheme="int8-weight"),
            row("d2+int8-weight", "quantized", 2, 0.3, 9.0, weight_bytes=20 * 2**20)]
    lines = headline(rows, 6)
    # 4 removed falls short of the control (0.70 < 0.85); 2 removed meets it.
    assert lines[0] == ("2 of 6 blocks removed (drop_one): 0.30 [0.20, 0.40] -> 0.90 [0.80, 1.00] after 320 steps of full "
                        "recovery, which meets the unpruned model fine-tuned with the same budget (0.85 [0.75, 0.95]); "
                        "backbone 1.2x faster, full forward 1.2x faster, 0.80x the parameters.")
    assert lines[1] == ("The same model quantized int8-weight: 0.88 [0.78, 0.98] (float 0.90 [0.80, 1.00]), weights 80.0 -> "
                        "20.0 MiB (0.25x), full forward 8.00 -> 9.00 ms.")
    assert headline([r for r in rows if r["kind"] != "recovered"], 6) == []


def test_budget_curves_step_and_flop_matched() -> None:
    from vlatrim.study.results import budget_curves

    def row(kind, frac, success, flops, removed=0):
        return {"name": f"{kind}{frac}", "kind": kind, "method": None if kind == "base" else "full",
                "scorer": "drop_one" if kind in ("recovered", "dropped") else None, "removed": removed, "budget_fraction": frac,
                "recover_steps": int((frac or 0) * 100), "success_rate": success, "success_wilson95": None,
                "offline_l1": None, "train_flops": flops}

    rows = [row("base", None, 0.6, None), row("control", 0.1, 0.7, 30.0), row("control", 0.5, 0.9, 150.0),
            row("control", 1.0, 0.95, 300.0), row("recovered", 0.1, 0.5, 10.0, 4), row("recovered", 0.5, 0.8, 50.0, 4),
            row("recovered", 1.0, 0.95, 100.0, 4), row("dropped", None, 0.2, None, 4)]
    (c,) = budget_curves(rows)
    assert [p["fraction"] for p in c["points"]] == [0.0, 0.1, 0.5, 1.0]  # budget 0: the pruned model as cut (0.2)
    # Same steps: 0.5 < 0.7, 0.8 < 0.9, 0.95 >= 0.95 -> meets at budget 1.0.
    assert c["meets_control_step_matched_at"] == 1.0
    # Same FLOPs: at 10 the control affords only budget 0 (the base, 0.6 > 0.5); at 50 budget 0.1 (0.7 <= 0.8).
    assert c["meets_control_flop_matched_at"] == 0.5
    # A pruned model that meets the control at a small budget and falls behind at the largest does not
    # "meet it from" that budget: the answer is from where it stays at least as good.
    rows = [row("base", None, 0.3, None), row("control", 0.2, 0.7, 60.0), row("control", 1.0, 0.9, 300.0),
            row("dropped", None, 0.4, None, 4), row("recovered", 0.2, 0.75, 20.0, 4), row("recovered", 1.0, 0.85, 100.0, 4)]
    (c,) = budget_curves(rows)
    # Same steps: 0.4 >= 0.3, 0.75 >= 0.7, 0.85 < 0.9.
    assert c["meets_control_step_matched_at"] is None
    # Same FLOPs: budget 0 and 0.2 meet the base (0.3); at 100 the control affords 0.2 (0.7 <= 0.85).
    assert c["meets_control_flop_matched_at"] == 0.0
    rows[-1]["success_rate"] = 0.95
    assert budget_curves(rows)[0]["meets_control_step_matched_at"] == 0.0
    rows[-2]["success_rate"] = 0.6  # 0.6 < 0.7 at 0.2: from 1.0 on
    assert budget_curves(rows)[0]["meets_control_step_matched_at"] == 1.0


@pytest.fixture(scope="module")
def target_dataset(tmp_path_factory) -> Path:
    """Demonstrations of two other tasks (other instructions, other actions) at the same image size."""
    root = tmp_path_factory.mktemp("tds") / "tds"
    w = LeRobotWriter(root, metaworld_features(32), fps=10)
    rng = np.random.default_rng(1)
    for e in range(6):
        T = 8
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (T, 32, 32, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(T, 4)).astype(np.float32),
                       "action": rng.uniform(-1, 1, size=(T, 4)).astype(np.float32),
                       "next.success": np.zeros(T, dtype=bool)}, ["close the door", "press the handle down"][e % 2])
    w.close()
    return root


def test_transfer_protocol_scores_tunes_and_evaluates_on_the_targets(dataset, target_dataset, tmp_path) -> None:
    out = tmp_path / "t"
    assert main(["study", "--out", str(out), "--preset", "tiny", "--data", str(dataset), "--protocol", "transfer",
                 "--target-tasks", "door-close,handle-press", "--target-data", str(target_dataset)]) == 0
    s = json.loads((out / "study.json").read_text())
    assert s["protocol"] == {"name": "transfer", "pretraining_data": str(dataset.resolve()),
                             "work_data": str(target_dataset.resolve()),
                             "evaluated_tasks": ["door-close-v3", "handle-press-v3"]}
    # The base trained on the pretraining data; scores, fine-tuning and evaluation used the targets.
    assert json.loads((out / "base" / "run_config.json").read_text())["data"] == str(dataset.resolve())
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert analysis["calibration"]["dataset"] == str(target_dataset.resolve())
    rows = {r["name"]: r for r in s["variants"]}
    for name, d in (("control-full", "control/recovered-full"), ("drop_one-drop1-full", "variants/drop_one-drop1/recovered-full")):
        assert json.loads((out / d / "recover.json").read_text())["data"]["path"] == str(target_dataset.resolve())
        assert rows[name]["offline_l1"] is not None
    assert "Transfer protocol" in (out / "report.html").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "transfer"], "the transfer protocol needs --target-tasks"),
    (["--protocol", "transfer", "--target-tasks", "drawer-close"], "target task(s) drawer-close-v3 are also pretraining tasks"),
    (["--target-tasks", "door-close"], "--target-tasks is used by --protocol transfer only"),
])
def test_transfer_protocol_bad_settings(dataset, tmp_path, capsys, argv, message) -> None:
    assert main(["study", "--out", str(tmp_path / "x"), "--preset", "tiny", "--data", str(dataset), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.filterwarnings("ignore:bf16 autocast on a CPU")
def test_fine_tuning_runs_in_the_precision_the_base_trained_in(dataset, tmp_path, monkeypatch) -> None:
    import dataclasses

    from vlatrim.train.presets import TRAIN_PRESETS

    tiny = TRAIN_PRESETS.get("tiny")

    def tiny_bf16():
        p = tiny()
        return dataclasses.replace(p, trainer={**p.trainer, "mixed_precision": "bf16"})

    monkeypatch.setitem(TRAIN_PRESETS._entries, "tiny", tiny_bf16)
    out = tmp_path / "s"
    assert main(["study", "--out", str(out), "--preset", "tiny", "--data", str(dataset), "--ratios", "0.5"]) == 0
    assert json.loads((out / "base" / "train.json").read_text())["mixed_precision"] == "bf16"
    recovered = [p.parent for p in out.rglob("recover.json")]
    assert {str(p.relative_to(out)) for p in recovered} == {"control/recovered-full", "variants/drop_one-drop1/recovered-full"}
    for d in recovered:  # the unpruned control and every recovery: bf16 autocast like the base (recovery's own default is fp32 on CPU)
        assert json.loads((d / "recover.json").read_text())["mixed_precision"] == "bf16"
