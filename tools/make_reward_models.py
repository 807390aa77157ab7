"""Train the frozen reward models of the RELATE recipe on the synthetic logs and save them (issue 15):

    python tools/make_reward_models.py [--out runs/reward_models] [--ctr-rows 1000] [--esmm-rows 600]
        [--ctr-epochs 300] [--esmm-epochs 200] [--seed 0]

- ``OUT/ctr``: ``rewards.ctr.CTRModel`` trained on ``data.synthetic.click_logs(ctr_rows, seed)`` (reward
  ``ctr_uplift``; ``grpo.resources.ctr_model``);
- ``OUT/esmm``: ``rewards.esmm.ESMMModel`` (shared-bottom CTR/CVR, CTCVR = CTR x CVR) trained on
  ``data.conversions.conversion_logs(esmm_rows, seed)`` (reward ``ctcvr``; ``grpo.resources.esmm_model``).

Both read the packaged MiniLM embedder (the GRPO trainer loads them on the same one). The defaults are the
row counts and epochs the unit tests measured (Spearman vs the true CTR 0.92, vs the true CTCVR 0.93); not
timed at full size (the test runs it with 60 rows and 5 epochs). The last line printed is one JSON object: the
two directories and the training summaries.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/reward_models", help="directory of ctr/ and esmm/")
    ap.add_argument("--ctr-rows", type=int, default=1000)
    ap.add_argument("--esmm-rows", type=int, default=600)
    ap.add_argument("--ctr-epochs", type=int, default=300)
    ap.add_argument("--esmm-epochs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic logs and of the initializations")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from megatron_ads.data import conversions, synthetic
    from megatron_ads.rewards import ctr, esmm
    from megatron_ads.rewards.retrieval import MiniLMEmbedder

    out = Path(a.out)
    embedder = MiniLMEmbedder()
    ctr_model = ctr.train_ctr(synthetic.click_logs(a.ctr_rows, seed=a.seed), embedder,
                              ctr.CTRConfig(epochs=a.ctr_epochs, seed=a.seed))
    esmm_model = esmm.train_esmm(conversions.conversion_logs(a.esmm_rows, seed=a.seed), embedder,
                                 esmm.ESMMConfig(epochs=a.esmm_epochs, seed=a.seed))
    res = {"ctr_model": str(ctr_model.save(out / "ctr")), "esmm_model": str(esmm_model.save(out / "esmm")),
           "ctr_summary": ctr_model.summary, "esmm_summary": esmm_model.summary}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
