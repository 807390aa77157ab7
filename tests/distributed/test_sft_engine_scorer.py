"""SFT validation on the inference engine (``cli.workers.engine_scorer``) against the scorer it replaced:
megatron-core's forward-only pipeline schedule over the trainer's own DDP-wrapped chunk, one full re-forward
per generated token (``_ReforwardScorer`` below, the former ``infer.pipeline_scoring.PipelineScorer``). After
a short tiny SFT run, on the same chunk: validation values, label probabilities (to 1e-5) and greedy
generations (identical ids), prompts longer than ``train.seq_len`` included (both left-truncate); the
trainer's val_metrics.jsonl holds what the engine gives; the chunk is back in train mode and trains on.
At pp1 (one rank) and pp2 x ep2 (four ranks, DP 2)."""

import json
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn

pytestmark = pytest.mark.distributed
CFG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "sft_tiny_cpu.yaml"
SEQ = 192
COMMON = [f"train.seq_len={SEQ}", "train.micro_batch=4", "sft.train_size=100", "sft.val_rows=6", "sft.eval_every=2",
          "optim.warmup_steps=1", "train.steps=2", "sft.test_rows=0", "checkpoint.save_at_end=false"]
PROB_TOL = 1e-5
NEW = 8


class _ReforwardScorer:
    """Reference ``Scorer``: every forward through megatron's forward-only schedule at the full ``seq_len``
    (right-padded), greedy decoding by re-running the whole sequence per new token; results broadcast from
    the last global rank (on the last stage). Prompts are left-truncated to fit ``seq_len``."""

    def __init__(self, model, tokenizer, seq_len: int, micro_batch: int, device):
        self.model, self.tokenizer, self.seq_len, self.micro_batch, self.device = (
            model, tokenizer, seq_len, micro_batch, device)

    def _forward_only(self, step_func, batches):
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=step_func, data_iterator=iter(batches), model=[self.model],
            num_microbatches=len(batches), seq_length=self.seq_len, micro_batch_size=self.micro_batch,
            forward_only=True)

    @staticmethod
    def _share(t):
        import torch.distributed as dist

        dist.broadcast(t, src=dist.get_world_size() - 1)
        return t

    @staticmethod
    def _last_stage():
        from megatron.core import parallel_state as ps

        return ps.is_pipeline_last_stage()

    def _ids(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def score(self, prompts, targets):
        from megatron_ads.data.packing import Example, collate, model_forward

        seq, rows = self.seq_len, []
        for i, (p, tgt) in enumerate(zip(prompts, targets)):
            tid = self._ids(tgt)
            pid = self._ids(p)[-(seq + 1 - len(tid)):]
            ids = pid + tid
            ids = ids + [self.tokenizer.pad_token_id] * (seq + 1 - len(ids))
            mask = [0.0] * seq
            for j in range(len(pid) - 1, len(pid) + len(tid) - 1):
                mask[j] = 1.0
            rows.append(Example(str(i), "score", ids, mask, len(tid)))
        b = self.micro_batch
        while len(rows) % b:
            rows.append(rows[-1])

        def step(data_iterator, model):
            batch = next(data_iterator)
            return model_forward(model, batch, self.device), partial(_logp_loss, batch["loss_mask"])

        store = self._forward_only(step, [collate(rows[i:i + b]) for i in range(0, len(rows), b)])
        out = torch.zeros(len(rows), dtype=torch.float64)
        if self._last_stage():
            out = torch.cat([d["logp"].double().cpu() for d in store])
        return self._share(out)[: len(prompts)].tolist()

    def generate(self, prompts, max_new_tokens):
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer.decode([x for x in g if x != eos]) for g in self.generate_ids(prompts, max_new_tokens)]

    @torch.no_grad()
    def generate_ids(self, prompts, max_new_tokens):
        from megatron_ads.data.packing import model_forward

        seq, b = self.seq_len, self.micro_batch
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        ctx = [self._ids(p)[-(seq - max_new_tokens):] for p in prompts]
        n = len(ctx)
        ctx += [ctx[-1]] * ((-n) % b)
        new = [[] for _ in ctx]
        finished = [False] * len(ctx)

        def step(data_iterator, model):
            batch = next(data_iterator)
            return model_forward(model, batch, self.device, with_labels=False), partial(_argmax_at, batch["last"])

        for _ in range(max_new_tokens):
            rows = [c + g for c, g in zip(ctx, new)]
            batches = []
            for i in range(0, len(rows), b):
                chunk = rows[i:i + b]
                tok = torch.tensor([r + [pad] * (seq - len(r)) for r in chunk], dtype=torch.long)
                batches.append({"tokens": tok, "last": torch.tensor([len(r) - 1 for r in chunk])})
            store = self._forward_only(step, batches)
            nxt = torch.zeros(len(rows), dtype=torch.long)
            if self._last_stage():
                nxt = torch.cat([d["next"].cpu() for d in store])
            for i, tk in enumerate(self._share(nxt).tolist()):
                if not finished[i]:
                    new[i].append(tk)
                    finished[i] = tk == eos
            if all(finished):
                break
        return new[:n]


def _logp_loss(mask_BS, nll_BS):
    logp = -(nll_BS.float() * mask_BS.to(nll_BS.device)).sum(1)
    return torch.zeros(()), torch.tensor(1, dtype=torch.int), {"logp": logp.detach()}


def _argmax_at(last_B, logits_BSV):
    nxt = logits_BSV[torch.arange(logits_BSV.shape[0]), last_B.to(logits_BSV.device)].argmax(-1)
    return torch.zeros(()), torch.tensor(1, dtype=torch.int), {"next": nxt}


def _worker(job_dict):
    from megatron_ads.cli.workers import sft_trainer
    from megatron_ads.data.synthetic import SyntheticConfig, generate
    from megatron_ads.data.tasks import THINK_EMPTY, task
    from megatron_ads.infer.scorer import EngineScorer
    from megatron_ads.train.sft_eval import validate_tasks

    tr = sft_trainer(job_dict)
    assert isinstance(tr.scorer, EngineScorer)
    tr.run()  # 2 steps; validation at step 2 through the engine
    ref = _ReforwardScorer(tr.model, tr.tokenizer, tr.job.train.seq_len, tr.job.train.micro_batch, tr.device)
    out = {"mode_after_run": tr.model.training}
    val = {}
    for name, sc in (("engine", tr.scorer), ("ref", ref)):
        with tr.predicting():
            val[name] = validate_tasks(tr.adaptive, tr.data, sc, tr.job.sft)[0]
    out["val"] = val
    # label probabilities of every row, and raw log-likelihoods of long (left-truncated) prompts
    qa, au = task("query_ad"), task("ad_user")
    rows = tr.data["query_ad"]["val"][:4]
    au_val = tr.data["ad_user"]["val"]
    long_prompts = [au.prompt(a) + au.prompt(b) + au.prompt(c) + THINK_EMPTY
                    for a, b, c in zip(au_val[:2], au_val[2:4], au_val[4:6])]
    targets = [f"<Score>{c}</Score>" for c in au.outputs[0].allowed]
    out["long_tokens"] = [len(tr.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in long_prompts]
    out["target_tokens"] = [len(tr.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets]
    pairs = ([p for p in long_prompts for _ in targets], [t for _ in long_prompts for t in targets])
    gen_rows = generate("query_gen", SyntheticConfig(size=3, seed=5))
    gen_prompts = [task("query_gen").prompt(r) + THINK_EMPTY for r in gen_rows] + [long_prompts[0]]
    for name, sc in (("engine", tr.scorer), ("ref", ref)):
        with tr.predicting():
            out[f"{name}_probs"] = [p["probs"] for p in qa.predict(rows, sc)]
            out[f"{name}_long"] = sc.score(*pairs)
            t0 = time.perf_counter()
            if name == "engine":
                out[f"{name}_ids"] = [g.output_ids for g in sc.generate_full(gen_prompts, NEW)]
            else:
                out[f"{name}_ids"] = sc.generate_ids(gen_prompts, NEW)
            out[f"{name}_gen_s"] = time.perf_counter() - t0
    out["mode_after"] = tr.model.training
    out["loss_after"] = tr.train_step()["loss"]  # the chunk still trains after the engine ran on it
    return out


def _flat(probs):
    return [v for p in probs for field in sorted(p) for _, v in sorted(p[field].items())]


@pytest.mark.parametrize("layout,nproc", [
    pytest.param([], 1, id="pp1"),  # ~10 s on a busy 2-core machine
    pytest.param(["parallel.pp=2", "parallel.ep=2"], 4, id="pp2xep2", marks=pytest.mark.slow),  # ~55 s
])
def test_engine_scorer_matches_pipeline_reforward(tmp_path, layout, nproc):
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *COMMON, *layout])
    results = spawn(_worker, nproc, job.to_dict())
    r = results[0]
    for other in results[1:]:  # every rank returns the same
        for key in ("val", "engine_probs", "engine_long", "engine_ids"):
            assert other[key] == r[key], key
    assert r["mode_after_run"] and r["mode_after"]
    assert all(n > SEQ for n in r["long_tokens"]) and len(set(r["target_tokens"])) == 1, r["long_tokens"]
    worst = max(abs(a - b) for a, b in zip(_flat(r["engine_probs"]), _flat(r["ref_probs"])))
    assert worst <= PROB_TOL, worst
    worst_ll = max(abs(a - b) for a, b in zip(r["engine_long"], r["ref_long"]))
    assert worst_ll <= 1e-4, worst_ll
    assert r["engine_ids"] == r["ref_ids"] and all(r["engine_ids"])
    e, f = r["val"]["engine"], r["val"]["ref"]
    assert e.keys() == f.keys()
    for k in e:
        if isinstance(e[k], float):
            assert abs(e[k] - f[k]) <= PROB_TOL, (k, e[k], f[k])
        else:
            assert e[k] == f[k], k
    logged = json.loads((tmp_path / "val_metrics.jsonl").read_text().splitlines()[-1])
    assert logged["step"] == 2 and all(logged[k] == v for k, v in e.items())  # the trainer's validation: the engine
    assert torch.isfinite(torch.tensor(r["loss_after"]))
    print(f"{nproc} ranks: generation engine {r['engine_gen_s']:.2f}s vs re-forward {r['ref_gen_s']:.2f}s; "
          f"prob diff {worst:.2e}, long-prompt loglik diff {worst_ll:.2e}")
