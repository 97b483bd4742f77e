"""A checkpoint whose weights hold NaN or Inf is refused by eval, recover and analyze (it used to
evaluate to 0% success), naming the first such tensor."""

from __future__ import annotations

import shutil

from test_recover_run import dirs  # noqa: F401  (a module fixture: dataset and tiny checkpoints)


def test_eval_recover_and_analyze_refuse_nan_weights_naming_the_tensor(dirs, tmp_path, capsys):  # noqa: F811
    from safetensors.torch import load_file, save_file

    from vlatrim.cli.main import main

    bad = tmp_path / "bad"
    shutil.copytree(dirs["teacher"], bad)
    weights = load_file(str(bad / "model.safetensors"))
    name = sorted(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 3)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[:2] = float("nan")
    weights[name].view(-1)[2] = float("inf")
    save_file(weights, str(bad / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    for argv in (["eval", "--policy", str(bad), "--tasks", "reach", "--episodes", "1", "--out", str(tmp_path / "ev")],
                 ["recover", "--model", str(bad), "--data", str(dirs["data"]), "--out", str(tmp_path / "rec"),
                  "--steps", "2", "--device", "cpu"],
                 ["analyze", "--model", str(bad), "--data", str(dirs["data"]), "--out", str(tmp_path / "an"),
                  "--scorers", "block_influence", "--device", "cpu"]):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert err.startswith(f"vlatrim: checkpoint {str(bad)!r} holds non-finite weights: tensor {name!r} ") and \
            "has 3 NaN/Inf values" in err, (argv[0], err)
        assert err.count("\n") == 1
    assert not any((tmp_path / d).exists() for d in ("ev", "rec", "an"))
