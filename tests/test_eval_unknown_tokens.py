"""After a vocabulary cut, instruction words whose pieces were removed reach the model as [UNK]: the
evaluator says so once and eval.json records the counts per task and the overall share."""

from __future__ import annotations

import json

import pytest

from test_reference_model import IMG, make_vla
from vlatrim.cli.main import main
from vlatrim.families import load_policy
from vlatrim.sim.backends import get_backend


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    root = tmp_path_factory.mktemp("unk")
    make_vla("tiny-bert").save_pretrained(root / "vla")
    texts = root / "texts.txt"
    texts.write_text(get_backend("metaworld").instruction("drawer-close-v3") + "\n")
    assert main(["prune", "--model", str(root / "vla"), "--vocab-from", str(texts), "--out", str(root / "cut")]) == 0
    return root


def test_the_policy_counts_the_tokens_its_cut_tokenizer_reads_as_unknown(cut):
    mw = get_backend("metaworld")
    known, other = mw.instruction("drawer-close-v3"), mw.instruction("reach-v3")
    full, pruned = load_policy(str(cut / "vla")), load_policy(str(cut / "cut"))
    tok = pruned.model.tokenizer
    ids = tok([other], padding="max_length", truncation=True, max_length=pruned.model.config.max_text_tokens,
              return_tensors="pt")
    expect_unk = int(((ids["input_ids"] == tok.unk_token_id) & ids["attention_mask"].bool()).sum())
    assert expect_unk > 0
    (n_k, u_k), (n_o, u_o) = pruned.unknown_tokens([known, other])
    assert u_k == 0 and u_o == expect_unk and n_o == int(ids["attention_mask"].sum())
    assert [u for _, u in full.unknown_tokens([known, other])] == [0, 0]  # the uncut vocabulary knows both


def test_eval_json_records_unknown_tokens_and_warns_once(cut, tmp_path, caplog):
    out = tmp_path / "ev"
    assert main(["eval", "--policy", str(cut / "cut"), "--tasks", "drawer-close,reach", "--episodes", "1",
                 "--max-steps", "2", "--workers", "1", "--image-size", str(IMG), "--out", str(out)]) == 0
    data = json.loads((out / "eval.json").read_text())
    dc, re_ = data["per_task"]["drawer-close-v3"], data["per_task"]["reach-v3"]
    assert dc["unknown_tokens"] == 0 and re_["unknown_tokens"] > 0
    share = re_["unknown_tokens"] / (dc["instruction_tokens"] + re_["instruction_tokens"])
    assert data["overall"]["unknown_token_share"] == pytest.approx(share, abs=1e-12)
    warnings = [r.getMessage() for r in caplog.records if "unknown to the policy's tokenizer" in r.getMessage()]
    assert len(warnings) == 1 and f"reach-v3 {re_['unknown_tokens']}" in warnings[0]
