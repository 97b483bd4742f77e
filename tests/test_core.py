import json
import os
from dataclasses import dataclass
from typing import Literal

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


@dataclass
class _Typed:
    """A probe verb with typed flags."""

    out: str
    n: int = 1
    rate: float | None = None
    mode: Literal["fast", "slow"] = "fast"

    def run(self) -> None:
        raise AssertionError("not reached: parsing fails first")


@pytest.mark.parametrize("args,line", [
    (["--out", "o", "--n", "abc"], "vlatrim: --n expects an integer (INT), got 'abc'"),
    (["--out", "o", "--n=1.5"], "vlatrim: --n expects an integer (INT), got '1.5'"),
    (["--out", "o", "--rate", "x"], "vlatrim: --rate expects None or a number (FLOAT), got 'x'"),
    (["--out", "o", "--mode", "medium"], "vlatrim: --mode 'medium' is not valid; valid: fast, slow"),
    (["--n", "2"], "vlatrim: missing required --out; see 'vlatrim zz-typed --help'"),
    (["--out", "o", "--nope", "3"], "vlatrim: unrecognized argument(s) --nope 3; see 'vlatrim zz-typed --help'"),
])
def test_cli_typed_argument_errors_are_one_line(monkeypatch, capsys, args, line):
    monkeypatch.setitem(COMMANDS._entries, "zz-typed", _Typed)
    assert cli_main.main(["zz-typed", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""


def test_cli_real_verb_type_error_writes_nothing(tmp_path, capsys):
    out = tmp_path / "demos"
    assert cli_main.main(["data", "metaworld", "--tasks", "reach", "--out", str(out), "--episodes-per-task", "abc"]) == 2
    assert capsys.readouterr().err == "vlatrim: --episodes-per-task expects an integer (INT), got 'abc'\n"
    assert not out.exists()
    with pytest.raises(SystemExit) as e:  # --help still prints the full help (tyro exits 0 after it)
        cli_main.main(["eval", "--help"])
    assert e.value.code == 0 and "--episodes" in capsys.readouterr().out


def _screen(text: str) -> list[str]:
    """What a terminal shows for ``text``: carriage returns overwrite the current line from its start."""
    lines = []
    for segment in text.split("\n"):
        cur = ""
        for piece in segment.split("\r"):
            cur = piece + cur[len(piece):]
        lines.append(cur.rstrip())
    return lines


def test_cli_error_during_a_progress_bar_starts_its_own_line(monkeypatch, capsys):
    import sys

    from tqdm import tqdm

    @dataclass
    class Busy:
        """Fails halfway through a progress bar."""

        def run(self) -> None:
            bar = tqdm(total=4, desc="work", file=sys.stderr)  # still open when the error leaves run()
            bar.update(2)
            raise VlatrimError("boom at 2")

    monkeypatch.setitem(COMMANDS._entries, "zz-busy", Busy)
    assert cli_main.main(["zz-busy"]) == 2
    screen = _screen(capsys.readouterr().err)
    assert "vlatrim: boom at 2" in screen, screen


def test_warnings_during_a_progress_bar_start_their_own_line(capsys):
    import logging
    import sys

    from tqdm import tqdm

    from vlatrim.cli.output import TqdmLogHandler

    log = logging.getLogger("vlatrim.zz_probe")
    handler = TqdmLogHandler()
    handler.setFormatter(logging.Formatter("vlatrim: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        with tqdm(total=3, desc="eval", file=sys.stderr) as bar:
            bar.update(1)
            log.warning("worker 0 crashed; restarting it")
            bar.update(1)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    screen = _screen(capsys.readouterr().err)
    assert "vlatrim: worker 0 crashed; restarting it" in screen, screen
