"""Parity vs transformers on checkpoints transformers itself wrote (save_pretrained): they declare an MTP
layer and hold none, so ``mtp=auto`` builds without MTP; plus ``mtp=drop`` on our MTP flavor.

All layouts run in one set of 4 gloo workers (one start-up); each report names its checkpoint."""

import pytest

from megatron_ads.checkpoint.parity import run_parity_rank
from megatron_ads.runtime.launch import spawn

pytestmark = pytest.mark.distributed
ATOL = 1e-5
DEEPSEEK = ["ds_qlora", "ds_noqlora", "ds_groups4"]
DENSE = ["llama_tied", "llama_hd", "qwen2"]


def _worker(runs):
    return [run_parity_rank(hf, **kwargs) for hf, kwargs in runs]


def test_transformers_saved_checkpoints_match_hf_across_layouts(hf_saved, tiny_ckpts):
    runs = [(str(hf_saved(n)), dict(pp=pp, ep=ep)) for n in DEEPSEEK for pp, ep in [(1, 1), (2, 2)]]
    runs += [(str(hf_saved(n)), dict(pp=2)) for n in DENSE]
    runs.append((str(tiny_ckpts("tiny_deepseek_v3_mtp")), dict(pp=2, ep=2, mtp="drop")))
    reports = spawn(_worker, 4, runs)[0]
    assert len(reports) == len(runs)
    for (hf, kw), rep in zip(runs, reports):
        where = (hf.rsplit("/", 1)[-1], kw, rep["max_abs_diff"])
        assert (rep["pp"], rep["ep"]) == (kw["pp"], kw.get("ep", 1)), where
        assert rep["max_abs_diff"] <= ATOL and rep["argmax_agreement"] == 1.0, where
        assert rep["max_abs_logit"] > 0.5, where  # weights large enough that a wrong mapping would show
        assert rep["per_layer"] and all(r["max_abs_diff"] <= ATOL for r in rep["per_layer"]), where
        assert rep["mtp_layers"] == 0, where
        if kw.get("mtp") == "drop":
            assert rep["mtp_reason"].startswith("mtp=drop"), rep["mtp_reason"]
        elif "/ds_" in hf:
            assert "num_nextn_predict_layers=1" in rep["mtp_reason"] and "mtp=auto" in rep["mtp_reason"], where
        else:
            assert rep["mtp_reason"] is None, where
