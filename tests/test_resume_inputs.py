"""Resume trusts contents, not paths: a run records content fingerprints of what it reads (the dataset,
the evaluated checkpoint) and a resume whose inputs changed is refused; one writer per run directory
(a lock naming its holder's pid, a stale one taken over); a study stage killed before its first
checkpoint starts again instead of refusing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_recover_methods import synthetic_frames
from test_recover_run import dirs, write_lerobot  # noqa: F401  (a module fixture: dataset and tiny checkpoints)
from vlatrim.errors import VlatrimError
from vlatrim.sim.evaluate import PROGRESS_DIR, EpisodeResult, EvalConfig, EvalStore
from vlatrim.utils.hashing import FULL_HASH_MAX, content_fingerprint
from vlatrim.utils.lock import lock_path, run_dir_lock


# ---------------------------------------------------------------------------------------- fingerprints
def test_fingerprint_reads_contents_not_sizes_or_mtimes(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(b"x" * 100)
    (d / "sub" / "b.txt").write_text("hello")
    (d / ".lock").write_text("ignored")  # hidden files (locks, temporaries) are not contents
    before = content_fingerprint(d)
    st = (d / "a.bin").stat()
    (d / "a.bin").write_bytes(b"y" * 100)  # same size, same mtime
    os.utime(d / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_fingerprint(d) != before
    (d / "a.bin").write_bytes(b"x" * 100)
    (d / ".lock").write_text("changed")
    assert content_fingerprint(d) == before
    (d / "sub" / "b.txt").rename(d / "sub" / "c.txt")  # a renamed file is another tree
    assert content_fingerprint(d) != before


def test_fingerprint_of_a_large_file_samples_it_and_reads_the_safetensors_header(tmp_path):
    big = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    body = rng.integers(0, 255, FULL_HASH_MAX + (1 << 20), dtype=np.uint8).tobytes()
    big.write_bytes(len(header).to_bytes(8, "little") + header + body)
    a = content_fingerprint(big)
    raw = bytearray(big.read_bytes())
    changed = bytearray(raw)
    changed[200::32 << 10] = bytes(len(changed[200::32 << 10]))  # a retrained model differs everywhere
    big.write_bytes(bytes(changed))
    assert content_fingerprint(big) != a
    renamed = raw.replace(b'"w"', b'"v"', 1)  # a header change alone (same size)
    big.write_bytes(bytes(renamed))
    assert content_fingerprint(big) != a
    big.write_bytes(bytes(raw))
    assert content_fingerprint(big) == a


# ---------------------------------------------------------------------------------------- lock
def test_lock_refuses_a_second_writer_naming_the_holder_and_takes_over_a_stale_one(tmp_path):
    run = tmp_path / "runs" / "r"
    with run_dir_lock(run) as path:
        assert path == lock_path(run) and json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(VlatrimError, match=rf"is being written by another process \(pid {os.getpid()};"):
            with run_dir_lock(run):
                pass
    assert not lock_path(run).exists() and not (tmp_path / "runs").exists()  # nothing left behind
    # Another live process holds it: refused, naming that pid; once it is gone, the lock is stale.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir(parents=True)
        lock_path(run).write_text(json.dumps({"pid": holder.pid, "host": None}))
        with pytest.raises(VlatrimError, match=rf"pid {holder.pid}"):
            with run_dir_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_dir_lock(run) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not lock_path(run).exists()


def test_train_and_recover_refuse_a_second_writer(dirs, tmp_path):  # noqa: F811
    from vlatrim.train.recovery import recover
    from vlatrim.train.run import train_reference

    out = tmp_path / "run"
    with run_dir_lock(out):
        with pytest.raises(VlatrimError, match=rf"--out .* is being written by another process \(pid {os.getpid()}"):
            train_reference(dirs["data"], out, preset="tiny", resume=True)
        with pytest.raises(VlatrimError, match=rf"pid {os.getpid()}"):
            recover(dirs["pruned"], dirs["data"], out, resume=True)
    assert not out.exists()


# ---------------------------------------------------------------------------------------- train / recover
def _changed_copy(src: Path, dst: Path, seed: int) -> None:
    """``dst`` holds another dataset of the same layout (replaced in place under the same path)."""
    shutil.rmtree(dst, ignore_errors=True)
    write_lerobot(dst, synthetic_frames(n_ep=6, length=8, seed=seed))


def test_train_resume_refuses_a_dataset_replaced_at_the_same_path(dirs, tmp_path):  # noqa: F811
    from vlatrim.train.run import train_reference

    data = tmp_path / "data"
    shutil.copytree(dirs["data"], data)
    out = tmp_path / "run"
    train_reference(data, out, preset="tiny", steps=2, checkpoint_every=1, backbone="tiny-bert")
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["inputs"] == {"data": content_fingerprint(data)}
    assert train_reference(data, out, preset="tiny", resume=True)["resumed_from"] == 2  # same contents: fine
    _changed_copy(dirs["data"], data, seed=7)
    with pytest.raises(VlatrimError, match=r"cannot resume: the run in --out was made with other settings "
                                           r"\(inputs\.data: run has '[0-9a-f]{64}', now '[0-9a-f]{64}'\); its inputs changed"):
        train_reference(data, out, preset="tiny", resume=True)


def test_recover_resume_refuses_a_dataset_replaced_at_the_same_path(dirs, tmp_path):  # noqa: F811
    from vlatrim.train.recovery import recover, recovery_trainer_config

    data = tmp_path / "data"
    shutil.copytree(dirs["data"], data)
    out = tmp_path / "run"
    trainer = recovery_trainer_config("full", steps=2, batch_size=8, checkpoint_every=1, device="cpu")
    recover(dirs["pruned"], data, out, trainer=trainer)
    assert json.loads((out / "run_config.json").read_text())["inputs"] == {"data": content_fingerprint(data)}
    _changed_copy(dirs["data"], data, seed=11)
    with pytest.raises(VlatrimError, match=r"cannot resume: the run in --out was made with other settings \(inputs\.data: "):
        recover(dirs["pruned"], data, out, trainer=trainer, resume=True)


# ---------------------------------------------------------------------------------------- eval
def test_eval_resume_refuses_other_weights_at_the_same_path(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"\0" * 64)
    cfg = EvalConfig(tasks="reach", episodes=3, max_steps=20)
    out = tmp_path / "ev"
    store = EvalStore(out, cfg, str(ckpt))
    store.record(EpisodeResult("reach-v3", 0, (5, 0), True, 7), None)
    store.close()
    saved = json.loads((out / PROGRESS_DIR / "settings.json").read_text())
    assert saved["inputs"] == {"policy": content_fingerprint(ckpt)}
    store = EvalStore(out, cfg, str(ckpt), resume=True)  # unchanged: resumes
    assert [r.episode for r in store.done] == [0]
    store.close()
    (ckpt / "model.safetensors").write_bytes(b"\1" * 64)  # retrained in place: another policy
    with pytest.raises(VlatrimError, match=r"cannot resume: the unfinished evaluation in --out .* \(inputs\.policy: "
                                           r"run has '[0-9a-f]{64}', now '[0-9a-f]{64}'\); its inputs changed"):
        EvalStore(out, cfg, str(ckpt), resume=True)
    # A journal written before fingerprints were recorded still resumes (nothing to compare).
    del saved["inputs"]
    (out / PROGRESS_DIR / "settings.json").write_text(json.dumps(saved))
    EvalStore(out, cfg, str(ckpt), resume=True).close()


def test_eval_refuses_a_second_writer(tmp_path):
    from vlatrim.sim.evaluate import run_eval
    from vlatrim.sim.policy import builtin_policy

    out = tmp_path / "ev"
    with run_dir_lock(out):
        with pytest.raises(VlatrimError, match=rf"pid {os.getpid()}"):
            run_eval(builtin_policy("random", 0, "metaworld"), EvalConfig(tasks="reach", episodes=1, max_steps=5), out,
                     policy_name="random", progress=False)
    assert not out.exists()



def test_a_lock_being_created_is_held_and_a_long_torn_one_is_stale(tmp_path):
    run = tmp_path / "r"
    path = lock_path(run)
    path.write_text("")  # another process created it an instant ago and has not written its pid yet
    with pytest.raises(VlatrimError, match="is being written by another process"):
        with run_dir_lock(run):
            pass
    old = path.stat().st_mtime - 60
    os.utime(path, (old, old))  # torn by a kill a minute ago: stale
    with run_dir_lock(run) as held:
        assert json.loads(held.read_text())["pid"] == os.getpid()
