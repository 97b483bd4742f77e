"""Flags checked before anything starts: one ``vlatrim:`` line (exit 2), no traceback, nothing written,
inputs untouched (data --camera, analyze options and pathways, train / recover batch size, bench)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_bad_input_data import snapshot, write_dataset
from test_reference_model import make_vla
from vlatrim.cli.main import main

CAMERAS = "corner, corner2, corner3, corner4, topview, behindGripper, gripperPOV"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    # 4 episodes of 5 frames over 2 tasks: one episode per task is held out, 10 training samples.
    return write_dataset(tmp_path_factory.mktemp("ds") / "ds")


@pytest.fixture(scope="module")
def vla_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("policy") / "vla"
    make_vla("tiny-bert").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from vlatrim.models.adapters.tiny import TINY_MODELS

    d = tmp_path_factory.mktemp("bert") / "bert"
    TINY_MODELS.get("bert")().save_pretrained(d)  # 64 learned positions
    return d


def refused(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert exit 2 and one clean line; return the message."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    # transformers may draw a weight-loading bar on stderr first; the failure itself is one line, last.
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "it/s]" not in ln]
    assert len(lines) == 1 and lines[0].startswith("vlatrim: ") and "Traceback" not in err, err
    assert err.endswith(lines[0] + "\n")
    return lines[0][len("vlatrim: "):]


# ---------------------------------------------------------------------------------------- data
def test_data_refuses_unknown_camera_before_anything_starts(tmp_path, capsys, monkeypatch):
    import vlatrim.sim.backends.metaworld.demos as demos

    monkeypatch.setattr(demos, "_prepare_out", lambda *a: pytest.fail("--out was touched"))
    out = tmp_path / "demos"
    msg = refused(capsys, ["data", "metaworld", "--tasks", "reach", "--episodes-per-task", "1", "--out", str(out),
                           "--camera", "nosuchcam"])
    assert msg == f"--camera 'nosuchcam' is not a Meta-World camera; valid: {CAMERAS}"
    assert not out.exists()  # no .progress left: the corrected rerun is not refused


# ------------------------------------------------------------------------------------- analyze
def _analyze(vla_dir, dataset, out, *flags):
    return ["analyze", "--model", str(vla_dir), "--data", str(dataset), "--out", str(out), "--batches", "1",
            "--batch-size", "2", *flags]


@pytest.mark.parametrize("flags, line", [
    (["--angular-span", "0"], "--angular-span 0 is not valid; valid: a block count >= 1 (at most the number of blocks "
                              "in a scored block list)"),
    (["--angular-span", "100"], "angular span=100 (--angular-span) is longer than backbone.encoder.layer (2 blocks); "
                                "valid: 1..2"),
    (["--pathways", "nosuch"], "--pathways nosuch is not valid; valid: language, vision, action"),
    (["--pathways", "language", "nosuch"], "--pathways nosuch is not valid; valid: language, vision, action"),
])
def test_analyze_checks_options_before_any_scorer_runs(vla_dir, dataset, tmp_path, capsys, monkeypatch, flags, line):
    import vlatrim.analyze.api as api

    monkeypatch.setattr(api, "run_scorers", lambda *a, **k: pytest.fail("a scorer ran"))
    before = snapshot(vla_dir), snapshot(dataset)
    out = tmp_path / "a"
    assert refused(capsys, _analyze(vla_dir, dataset, out, *flags)) == line
    assert not out.exists() and not Path(f"{out}.partial").exists()
    assert (snapshot(vla_dir), snapshot(dataset)) == before


def test_analyze_refuses_pathways_the_model_lacks(vla_dir, dataset, tmp_path, capsys, monkeypatch):
    import vlatrim.analyze.calibration as cal

    monkeypatch.setattr(cal, "calibration", lambda *a, **k: pytest.fail("calibration batches were built"))
    out = tmp_path / "a"
    msg = refused(capsys, _analyze(vla_dir, dataset, out, "--pathways", "vision", "--scorers", "drop_one"))
    assert msg == "--pathways vision: the vlatrim_vla model has none of them; valid here: language"
    assert not out.exists() and not Path(f"{out}.partial").exists()


# ------------------------------------------------------------------------------ train / recover
BATCH_LINE = ("--batch-size 64 exceeds the 10 training samples of --data {data!r} (the frames of its training "
              "episodes; held-out episodes excluded); valid: 1..10")


@pytest.mark.parametrize("existing", [False, True])
def test_train_refuses_a_batch_larger_than_the_samples_before_writing(dataset, tmp_path, capsys, existing):
    out = tmp_path / "run"
    if existing:
        out.mkdir()  # an empty --out stays empty: no run_config.json
    msg = refused(capsys, ["train", "--data", str(dataset), "--out", str(out), "--preset", "tiny", "--batch-size", "64"])
    assert msg == BATCH_LINE.format(data=str(dataset))
    assert (list(out.iterdir()) == []) if existing else not out.exists()


def test_recover_refuses_a_batch_larger_than_the_samples_before_writing(vla_dir, dataset, tmp_path, capsys):
    before = snapshot(vla_dir)
    out = tmp_path / "rec"
    msg = refused(capsys, ["recover", "--model", str(vla_dir), "--data", str(dataset), "--out", str(out),
                           "--batch-size", "64", "--device", "cpu"])
    assert msg == BATCH_LINE.format(data=str(dataset))
    msg = refused(capsys, ["recover", "--model", str(vla_dir), "--data", str(dataset), "--out", str(out),
                           "--batch-size", "64", "--grad-accum", "4", "--device", "cpu"])
    assert msg.startswith("--batch-size 64 / --grad-accum 4 = 16 exceeds the 10 training samples") and \
        msg.endswith("valid: 1..40")
    assert not out.exists() and snapshot(vla_dir) == before


def test_a_batch_that_fits_is_not_refused(dataset):
    from vlatrim.data.frames import check_batch_fits, training_samples

    assert training_samples(dataset, 0.1) == 10 and training_samples(dataset, 0.0) == 20
    check_batch_fits(dataset, 10, 1, 0.1)
    check_batch_fits(dataset, 40, 4, 0.1)


# ---------------------------------------------------------------------------------------- bench
def _bench(model, out, *flags):
    return ["bench", "--model", str(model), "--out", str(out), "--warmup", "0", "--repeats", "1", *flags]


def test_bench_refuses_bad_flags_in_one_line(bert_dir, vla_dir, tmp_path, capsys):
    before = snapshot(bert_dir), snapshot(vla_dir)
    out = tmp_path / "b"
    assert refused(capsys, _bench(bert_dir, out, "--threads", "0")) == \
        "--threads 0 is not valid; valid: a number of CPU threads >= 1 (or omit it)"
    assert refused(capsys, _bench(bert_dir, out, "--seq-len", "100")) == \
        f"--seq-len 100 is more than the 64 positions of --model {str(bert_dir)!r} (its config's " \
        "max_position_embeddings); valid: 1..64"
    assert not out.exists()

    a_file = tmp_path / "bench.json"
    a_file.write_text("keep")
    assert refused(capsys, _bench(bert_dir, a_file)) == \
        f"--out {str(a_file)!r} is a file; valid: a directory (new or existing) to write bench.json into"
    assert a_file.read_text() == "keep"
    under_file = a_file / "sub"
    assert refused(capsys, _bench(bert_dir, under_file)) == \
        f"--out {str(under_file)!r} lies under {str(a_file)!r}, which is a file; valid: a directory path"

    long = tmp_path / ("x" * 300)
    msg = refused(capsys, _bench(bert_dir, long))
    assert msg.endswith("has a 300-byte name; valid: names of at most 255 bytes") and msg.startswith("--out ")
    assert len(msg) < 200  # the name is shortened, not echoed whole

    inside = vla_dir / "bench"
    assert refused(capsys, _bench(vla_dir, inside)) == \
        f"--out {str(inside)!r} is inside the checkpoint --model {str(vla_dir)!r}; valid: a directory outside every " \
        "input checkpoint (bench never writes into a model)"
    assert refused(capsys, ["bench", "--model", str(bert_dir), str(vla_dir), "--out", str(vla_dir)]).startswith(
        f"--out {str(vla_dir)!r} is inside the checkpoint --model {str(vla_dir)!r}")
    assert (snapshot(bert_dir), snapshot(vla_dir)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


def test_bench_refuses_an_unwritable_out(bert_dir, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes anywhere; stand in for a folder it may not write
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    else:
        locked.chmod(0o500)
    out = locked / "b"
    try:
        assert refused(capsys, _bench(bert_dir, out)) == \
            f"--out {str(out)!r} cannot be written: {str(locked)!r} is not writable; valid: a directory you can write to"
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_bench_still_writes_into_a_new_nested_out(bert_dir, tmp_path, capsys):
    out = tmp_path / "new" / "nested"
    assert main(_bench(bert_dir, out, "--seq-len", "64", "--threads", "1")) == 0, capsys.readouterr().err
    assert (out / "bench.json").is_file()
