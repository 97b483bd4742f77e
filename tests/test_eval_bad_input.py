"""vlatrim eval / analyze refuse bad input in one line before anything runs or is written."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from test_reference_model import IMG, T, make_vla
from vlatrim.cli.main import main
from vlatrim.errors import VlatrimError
from vlatrim.sim.evaluate import EvalConfig, Evaluator
from vlatrim.sim.policy import PolicyIO

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


class _Declared:
    """A policy that must never run, declaring 32 px corner images and chunks of 4."""

    def __init__(self, cameras: tuple[str, ...] = ("corner",)) -> None:
        self.io = PolicyIO(action_dim=4, state_dim=4, cameras=cameras, image_size=32, chunk_size=4)

    def reset(self, n: int) -> None:
        raise AssertionError("no episode may run")

    def predict(self, obs):
        raise AssertionError("no episode may run")


@pytest.mark.parametrize("kw, message", [
    ({"image_size": 96}, "--image-size 96 differs from the policy's image size 32 px (its io.image_size); "
                         "give --image-size 32 or omit it"),
    ({"image_size": 32, "n_action_steps": 100}, "--n-action-steps 100 is more than the policy's chunk of 4 action(s) "
                                                "(its io.chunk_size); valid: 1..4"),
])
def test_evaluator_refuses_settings_the_policy_cannot_take(kw, message):
    with pytest.raises(VlatrimError) as e:
        Evaluator("metaworld", EvalConfig(tasks="reach", episodes=1, **kw)).check(_Declared())
    assert str(e.value) == message and not mp.active_children()


def test_evaluator_accepts_the_declared_size_and_any_size_without_images():
    Evaluator("metaworld", EvalConfig(tasks="reach", episodes=1, image_size=32, n_action_steps=4)).check(_Declared())
    # A policy that reads no image has nothing rendered for it: its declared size does not matter.
    Evaluator("metaworld", EvalConfig(tasks="reach", episodes=1, image_size=64)).check(_Declared(cameras=()))


@pytest.fixture(scope="module")
def vla_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy") / "vla"
    make_vla("tiny-bert").save_pretrained(d)
    return d


@pytest.mark.parametrize("flags, line", [
    (["--image-size", "48"], f"--image-size 48 differs from the policy's image size {IMG} px (its io.image_size); "
                             f"give --image-size {IMG} or omit it"),
    (["--image-size", "0"], "--image-size must be in 8..1024 px, got 0"),
    (["--n-action-steps", "100"], f"--n-action-steps 100 is more than the policy's chunk of {T} action(s) "
                                  f"(its io.chunk_size); valid: 1..{T}"),
    pytest.param(["--device", "cuda"], "--device 'cuda' needs CUDA, which this machine lacks; valid here: cpu, auto",
                 marks=no_cuda),
    (["--device", "tpu"], "--device 'tpu' is not valid; valid: cpu, cuda, cuda:N, auto"),
])
def test_eval_cli_refuses_in_one_line_and_writes_nothing(vla_dir, tmp_path, capsys, flags, line):
    out = tmp_path / "ev"
    rc = main(["eval", "--policy", str(vla_dir), "--tasks", "reach", "--episodes", "1", "--out", str(out), *flags])
    assert rc == 2
    assert capsys.readouterr().err == f"vlatrim: {line}\n"
    assert not out.exists() and not mp.active_children()


@no_cuda
def test_analyze_cli_refuses_cuda_without_it(vla_dir, tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["analyze", "--model", str(vla_dir), "--data", str(tmp_path), "--out", str(out), "--device", "cuda"]) == 2
    assert capsys.readouterr().err == "vlatrim: --device 'cuda' needs CUDA, which this machine lacks; valid here: cpu, auto\n"
    assert not out.exists() and not (tmp_path / "a.partial").exists()
