import json
import os
from dataclasses import dataclass

import pytest

from vlatrim.cli import main as cli_main
from vlatrim.cli.registry import COMMANDS
from vlatrim.errors import VlatrimError
from vlatrim.registry import Registry
from vlatrim.utils.io import atomic_dir, ensure_empty_dir, read_json, write_json_atomic


def test_registry_rejects_duplicates_and_lists_valid_names():
    reg: Registry[int] = Registry("widget")
    reg.register("a")(1)
    reg.register("b")(2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(3)
    assert reg.get("b") == 2
    assert reg.names() == ["a", "b"]
    with pytest.raises(VlatrimError, match=r"unknown widget 'c'; valid: a, b"):
        reg.get("c")


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    out = write_json_atomic(tmp_path / "sub" / "r.json", {"x": 1.5, "p": tmp_path})
    assert json.loads(out.read_text()) == {"x": 1.5, "p": str(tmp_path)}
    assert sorted(os.listdir(out.parent)) == ["r.json"]


def test_atomic_dir_removes_everything_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with atomic_dir(target) as tmp:
        (tmp / "ok.bin").write_bytes(b"y")
    assert (target / "ok.bin").read_bytes() == b"y"
    with pytest.raises(VlatrimError, match="already exists"):
        with atomic_dir(target):
            pass


def test_read_json_and_ensure_empty_dir_errors(tmp_path):
    with pytest.raises(VlatrimError, match="does not exist"):
        read_json(tmp_path / "missing.json", "analysis")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(VlatrimError, match="not valid JSON"):
        read_json(bad)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(VlatrimError, match="not empty"):
        ensure_empty_dir(tmp_path / "full")
    assert ensure_empty_dir(tmp_path / "new").is_dir()


def test_cli_unknown_verb_is_a_one_line_error(capsys):
    assert cli_main.main(["no-such-verb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlatrim: unknown verb 'no-such-verb'") and "\n" not in err


def test_cli_dispatches_to_registered_dataclass(monkeypatch):
    seen = {}

    @dataclass
    class Probe:
        """A probe verb."""

        n: int = 1

        def run(self) -> None:
            seen["n"] = self.n

    monkeypatch.setitem(COMMANDS._entries, "zz-probe", {"sub": Probe})
    assert cli_main.main(["zz-probe", "sub", "--n", "7"]) == 0
    assert seen == {"n": 7}


def test_atomic_outputs_follow_the_umask_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        f = write_json_atomic(tmp_path / "r.json", {})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("")
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
