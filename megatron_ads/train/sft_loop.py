"""Multi-task SFT on the Trainer: task data, the Eq. 2 reweighted loss, and validation by label scoring.

Data: synthetic rule-labeled corpora per task (``data/synthetic.py``) split train/val/test; each
training example is the task prompt + "label + reasoning" target (or its label-only form with an
empty <think>), tokenized to a fixed length with loss on target tokens only.

Loss (Eq. 2): per-sample mean NLL ℓ_{t,i}, instance weights w_{t,i} from perplexity progress between
validation intervals (Eq. 3–5), task weights λ_t from validation difficulty (Eq. 6–7).

Validation: label-candidate scoring — the summed log-probability of each allowed label continuation,
all candidates of a batch in one forward-only pass through the pipeline; query–ad fields are scored in
order (relevance, location, quality), each given the fields predicted before it. The normalized metric
per task (query_ad: Bad-view BACC; ad_user: AUC) drives λ_t.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_ads.data import synthetic
from megatron_ads.data.packing import Example, collate, encode
from megatron_ads.data.tasks import load_jsonl, parse_output, task
from megatron_ads.eval.metrics import QUERY_AD_VIEWS, auc, binary_metrics
from megatron_ads.eval.report import plot_sft_run
from megatron_ads.train.loop import Trainer
from megatron_ads.train.sft import InstanceReweighter, TaskReweighter, weighted_loss

CLASSIFICATION = ("query_ad", "ad_user")
WEIGHT_BINS = 16
QUERY_AD_FIELDS = (("relevance", "Label", ("bad", "fair", "good")), ("location", "LocationLabel", ("good", "bad")),
                   ("quality", "AdQuality", ("good", "bad")))
GEN_VAL_ROWS = 32
"""Validation rows of generation tasks (greedy decoding costs one forward per token)."""
GEN_MAX_NEW_TOKENS = 48


class SFTTrainer(Trainer):
    """Trainer whose data and loss are multi-task SFT (``job.sft``)."""

    def __init__(self, job, **kwargs):
        super().__init__(job, **kwargs)
        s = job.sft
        self.data: dict[str, dict[str, list[dict]]] = {}
        for name in s.tasks:
            if name in s.files:
                self.data[name] = self._user_data(name, s.files[name])
            else:
                rows = synthetic.generate(name, self._synthetic_config(name))
                self.data[name] = synthetic.split(rows, seed=s.data_seed)
        self.train_tasks = list(s.tasks)
        if s.general_path:
            general = load_jsonl(s.general_path, task("general"))
            self.data["general"] = {"train": general, "val": [], "test": []}
            self.train_tasks.append("general")
        self.tokenizer = self._tokenizer()
        self.instance = InstanceReweighter(beta=s.beta, w_min=s.w_min, w_max=s.w_max)
        self.tasks = TaskReweighter(tasks=list(s.tasks), alpha=s.alpha,
                                    general_task="general" if s.general_path else None,
                                    general_weight=s.general_weight if s.general_path else 0.0)
        self.val_path = self.out / "val_metrics.jsonl"
        self._interval_w: list[tuple[str, float]] = []
        """(task, instance weight) of every sample trained on since the last validation (last stage)."""

    def _user_data(self, name: str, files: dict) -> dict[str, list[dict]]:
        """A task's own labeled JSONL (validated; errors name file, line, field). Without a val (test) file,
        10% of train becomes val (test)."""
        spec = task(name)
        train = load_jsonl(files["train"], spec)
        out = {k: load_jsonl(files[k], spec) for k in ("val", "test") if files.get(k)}
        if len(out) < 2:
            parts = synthetic.split(train, val=0.0 if "val" in out else 0.1, test=0.0 if "test" in out else 0.1,
                                    seed=self.job.sft.data_seed)
            train = parts["train"]
            for k in ("val", "test"):
                out.setdefault(k, parts[k])
        if not out["val"]:
            raise ValueError(f"sft.files.{name}: no validation rows (give a 'val' file or more train rows)")
        return {"train": train, **out}

    def _synthetic_config(self, name: str) -> synthetic.SyntheticConfig:
        s = self.job.sft
        extra = dict(s.synthetic.get(name, {}))
        try:
            return synthetic.SyntheticConfig(**{**extra, "size": s.train_size, "seed": s.data_seed})
        except TypeError as exc:
            raise ValueError(f"sft.synthetic.{name}: {exc}") from exc

    def _tokenizer(self):
        from megatron_ads.data.tokenizer import load_tokenizer, train_bpe_tokenizer

        m = self.job.model
        tok_dir = Path(m.path) / ("tokenizer" if m.init == "mcore" else "") if m.init != "random" else None
        if tok_dir is not None and (tok_dir / "tokenizer.json").is_file():
            return load_tokenizer(tok_dir)
        texts = []  # random init: a byte-level BPE from (up to) 300 training rows of every task
        for name in self.train_tasks:
            spec = task(name)
            texts += [spec.prompt(row) + spec.target(row) for row in self.data[name]["train"][:300]]
        tok = train_bpe_tokenizer(self.cfg.vocab_size, texts)
        if self.rank == 0:
            tok.save_pretrained(str(self.out / "tokenizer"))
        return tok

    # ------------------------------------------------------------------ data
    def _examples(self, step: int) -> list[Example]:
        """This DP rank's examples for ``step`` (deterministic in the data seed and the step)."""
        t, s = self.job.train, self.job.sft
        rng = random.Random(f"{s.data_seed}:{step}")
        picks = []
        probs = self._task_probabilities()
        for _ in range(self.global_batch):
            name = rng.choices(self.train_tasks, weights=[probs[t] for t in self.train_tasks])[0]
            row = rng.choice(self.data[name]["train"])
            picks.append((name, row, rng.random() < s.label_only_fraction))
        dp_rank = self.ps.get_data_parallel_rank()
        per_rank = t.num_microbatches * t.micro_batch
        mine = picks[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        out = []
        for name, row, label_only in mine:
            label_only = label_only and name != "general"
            ex = encode(self.tokenizer, task(name), row, t.seq_len, label_only=label_only)
            out.append(dataclasses.replace(ex, sample_id=f"{ex.sample_id}:{'L' if label_only else 'R'}"))
        return out

    def _task_probabilities(self) -> dict[str, float]:
        """Task-mixer probabilities: λ_t in "sampling" mode, else uniform over the adaptive tasks
        (the general task always gets its fixed share)."""
        s = self.job.sft
        if s.task_weighting == "sampling" and s.reweight_tasks:
            return dict(self.tasks.lambdas)
        return self._uniform_lambdas()

    def _uniform_lambdas(self) -> dict[str, float]:
        s = self.job.sft
        share = 1.0 - (s.general_weight if s.general_path else 0.0)
        lam = {t: share / len(s.tasks) for t in s.tasks}
        if s.general_path:
            lam["general"] = s.general_weight
        return lam

    def _microbatches(self, step: int):
        ex = self._examples(step)
        b = self.job.train.micro_batch
        for i in range(0, len(ex), b):
            yield collate(ex[i:i + b])

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        tokens = batch["tokens"].to(self.device)
        pos = torch.arange(tokens.shape[1], device=self.device).unsqueeze(0).expand_as(tokens)
        out = model(tokens, pos, None, labels=batch["labels"].to(self.device))
        return out, partial(self._sft_loss, batch)

    def _sft_loss(self, batch: dict, token_nll_BS: torch.Tensor):
        mask = batch["loss_mask"].to(token_nll_BS.device)
        nll = token_nll_BS.float()
        per_sample = (nll * mask).sum(1) / mask.sum(1).clamp_min(1)
        s = self.job.sft
        if s.prompt_loss_weight > 0:  # ℓ_{t,i} + ρ · (mean NLL of the prompt tokens)
            pm = batch["prompt_mask"].to(nll.device)
            per_sample = per_sample + s.prompt_loss_weight * (nll * pm).sum(1) / pm.sum(1).clamp_min(1)
        w = (self.instance.weights(batch["sample_ids"], nll, mask) if s.reweight_instances
             else torch.ones(len(batch["sample_ids"])))
        self._interval_w.extend(zip(batch["tasks"], w.tolist()))
        if s.task_weighting == "sampling":  # the mixer already drew tasks by λ_t: a plain weighted mean
            loss = (w.to(per_sample) * per_sample).mean()
        else:
            lam = self.tasks.lambdas if s.reweight_tasks else self._uniform_lambdas()
            # λ sums to 1 over tasks; scale by the number of tasks so the loss stays on the per-sample scale
            loss = weighted_loss(per_sample, batch["tasks"], w, lam) * len(self.train_tasks)
        report = torch.stack([per_sample.detach().sum(), torch.tensor(float(len(per_sample)))])
        return loss, torch.tensor(1, dtype=torch.int), {"lm loss": report}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def score(self, prompts: list[str], targets: list[str]) -> list[float]:
        """Summed log-probability of each target given its prompt (forward-only pipeline; all ranks get it)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        t = self.job.train
        spec_len = t.seq_len
        rows = []
        for i, (p, tgt) in enumerate(zip(prompts, targets)):
            pid = self.tokenizer(p, add_special_tokens=False)["input_ids"]
            tid = self.tokenizer(tgt, add_special_tokens=False)["input_ids"]
            pid = pid[-(spec_len + 1 - len(tid)):]
            ids = pid + tid
            ids = ids + [self.tokenizer.pad_token_id] * (spec_len + 1 - len(ids))
            mask = [0.0] * spec_len
            for j in range(len(pid) - 1, len(pid) + len(tid) - 1):
                mask[j] = 1.0
            rows.append(Example(str(i), "score", ids, mask, len(tid)))
        b = t.micro_batch
        while len(rows) % b:
            rows.append(rows[-1])
        batches = [collate(rows[i:i + b]) for i in range(0, len(rows), b)]
        self.model.eval()
        try:
            store = get_forward_backward_func()(
                forward_step_func=self._score_step, data_iterator=iter(batches), model=[self.model],
                num_microbatches=len(batches), seq_length=spec_len, micro_batch_size=b, forward_only=True)
        finally:
            self.model.train()
        out = torch.zeros(len(rows), dtype=torch.float64)
        if self.ps.is_pipeline_last_stage():
            out = torch.cat([d["logp"].double().cpu() for d in store])
        dist.broadcast(out, src=dist.get_world_size() - 1)
        return out[: len(prompts)].tolist()

    def _score_step(self, data_iterator, model):
        batch = next(data_iterator)
        tokens = batch["tokens"].to(self.device)
        pos = torch.arange(tokens.shape[1], device=self.device).unsqueeze(0).expand_as(tokens)
        out = model(tokens, pos, None, labels=batch["labels"].to(self.device))

        def loss_func(mask, nll):
            logp = -(nll.float() * mask.to(nll.device)).sum(1)
            return torch.zeros((), device=nll.device), torch.tensor(1, dtype=torch.int), {"logp": logp.detach()}

        return out, partial(loss_func, batch["loss_mask"])

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy decoding (see ``generate_ids``); texts without the EOS."""
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer.decode([x for x in g if x != eos]) for g in self.generate_ids(prompts, max_new_tokens)]

    @torch.no_grad()
    def generate_ids(self, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding through the pipeline: one forward-only pass per new token (no KV cache; meant for
        validation-sized batches). Every rank returns the same new token ids, up to and including EOS."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        t = self.job.train
        seq, b = t.seq_len, t.micro_batch
        if max_new_tokens >= seq:
            raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be below train.seq_len={seq}")
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        ctx = [self.tokenizer(p, add_special_tokens=False)["input_ids"][-(seq - max_new_tokens):] for p in prompts]
        n = len(ctx)
        ctx += [ctx[-1]] * ((-n) % b)
        new: list[list[int]] = [[] for _ in ctx]
        finished = [False] * len(ctx)
        self.model.eval()
        try:
            for _ in range(max_new_tokens):
                rows = [c + g for c, g in zip(ctx, new)]
                batches = []
                for i in range(0, len(rows), b):
                    chunk = rows[i:i + b]
                    tok = torch.tensor([r + [pad] * (seq - len(r)) for r in chunk], dtype=torch.long)
                    batches.append({"tokens": tok, "last": torch.tensor([len(r) - 1 for r in chunk])})
                store = get_forward_backward_func()(
                    forward_step_func=self._next_token_step, data_iterator=iter(batches), model=[self.model],
                    num_microbatches=len(batches), seq_length=seq, micro_batch_size=b, forward_only=True)
                nxt = torch.zeros(len(rows), dtype=torch.long)
                if self.ps.is_pipeline_last_stage():
                    nxt = torch.cat([d["next"].cpu() for d in store])
                dist.broadcast(nxt, src=dist.get_world_size() - 1)
                for i, tk in enumerate(nxt.tolist()):
                    if not finished[i]:
                        new[i].append(tk)
                        finished[i] = tk == eos
                if all(finished):
                    break
        finally:
            self.model.train()
        return new[:n]

    def _next_token_step(self, data_iterator, model):
        batch = next(data_iterator)
        tokens = batch["tokens"].to(self.device)
        pos = torch.arange(tokens.shape[1], device=self.device).unsqueeze(0).expand_as(tokens)
        out = model(tokens, pos, None)

        def loss_func(last, logits_BSV):
            nxt = logits_BSV[torch.arange(logits_BSV.shape[0]), last.to(logits_BSV.device)].argmax(-1)
            return torch.zeros((), device=logits_BSV.device), torch.tensor(1, dtype=torch.int), {"next": nxt}

        return out, partial(loss_func, batch["last"])

    def _validate_query_gen(self, rows: list[dict], rec: dict[str, Any]) -> None:
        from megatron_ads.eval.metrics import ParsedJSONL
        from megatron_ads.eval.querygen import evaluate_query_gen

        preds = {str(p["id"]): p for p in self.predict_query_gen(rows)}
        gold = ParsedJSONL({str(r["id"]): r for r in rows}, [])
        m = evaluate_query_gen(gold, ParsedJSONL(preds, []))
        for k in ("Relevance", "Diversity", "Difficulty", "Distinct2"):
            rec[f"query_gen/{k}"] = m[k]
        rec["query_gen/malformed"] = m["malformed"] / max(1, m["n"])
        rec["query_gen/example"] = next(iter(preds.values()))["raw"] if preds else ""

    def predict_query_ad(self, rows: list[dict]) -> list[dict]:
        """Prediction rows (``eval`` format: labels + per-field probs) by label-candidate scoring.

        Fields are scored in order (relevance, location, quality), each given the fields chosen before it,
        in label-only form (empty <think>); probs are the softmax of the candidates' summed log-probs.
        """
        spec = task("query_ad")
        preds = [{"id": r["id"], "labels": {}, "probs": {}} for r in rows]
        for fld, tag, cands in QUERY_AD_FIELDS:
            prompts, targets = [], []
            for r, pr in zip(rows, preds):
                prefix = "<think></think>\n" + "".join(f"<{tg}>{pr['labels'][f]}</{tg}>\n" for f, tg, _ in QUERY_AD_FIELDS
                                                     if f in pr["labels"])
                for c in cands:
                    prompts.append(spec.prompt(r) + prefix)
                    targets.append(f"<{tag}>{c}</{tag}>")
            scores = self.score(prompts, targets)
            for i, pr in enumerate(preds):
                sl = torch.tensor(scores[i * len(cands):(i + 1) * len(cands)])
                p = torch.softmax(sl, 0)
                pr["labels"][fld] = cands[int(sl.argmax())]
                pr["probs"][fld] = {c: float(p[k]) for k, c in enumerate(cands)}
        return preds

    def predict_ad_user(self, rows: list[dict]) -> list[dict]:
        """Prediction rows (``eval`` format: score + probs over 0..3) by label-candidate scoring."""
        spec = task("ad_user")
        prompts = [spec.prompt(r) + "<think></think>\n" for r in rows for _ in range(4)]
        targets = [f"<Score>{c}</Score>" for _ in rows for c in range(4)]
        scores = self.score(prompts, targets)
        preds = []
        for i, r in enumerate(rows):
            sl = torch.tensor(scores[i * 4:(i + 1) * 4])
            p = torch.softmax(sl, 0)
            preds.append({"id": r["id"], "score": int(sl.argmax()), "probs": {str(c): float(p[c]) for c in range(4)}})
        return preds

    def predict_query_gen(self, rows: list[dict]) -> list[dict]:
        """Prediction rows (``eval`` format: queries + the raw text) by greedy decoding in label-only form."""
        spec = task("query_gen")
        texts = self.generate([spec.prompt(r) + "<think></think>\n" for r in rows], GEN_MAX_NEW_TOKENS)
        return [{"id": r["id"], "queries": parse_output(spec, "<think></think>\n" + t).fields.get("queries"), "raw": t}
                for r, t in zip(rows, texts)]

    def validate(self) -> dict[str, Any]:
        """Score the validation rows of each task; returns metrics, λ_t and the interval's weight summary."""
        s = self.job.sft
        rec: dict[str, Any] = {"step": self.step}
        norm: dict[str, float] = {}
        for name in s.tasks:
            rows = self.data[name]["val"][: s.val_rows]
            if name == "query_ad":
                preds = self.predict_query_ad(rows)
                for view, (fld, is_defect) in QUERY_AD_VIEWS.items():
                    mv = binary_metrics([is_defect(r["labels"][fld]) for r in rows],
                                        [is_defect(pr["labels"][fld]) for pr in preds])
                    rec[f"{name}/{view if view.endswith('view') else fld}_BACC"] = mv["BACC"]
                rec[f"{name}/mean_BACC"] = sum(rec[f"{name}/{k}_BACC"] for k in
                                               ("bad_view", "location", "quality")) / 3
                norm[name] = rec[f"{name}/{s.metric_of(name)}"]
            elif name == "ad_user":
                preds = self.predict_ad_user(rows)
                a = auc([r["score"] > 0 for r in rows], [1 - pr["probs"]["0"] for pr in preds])
                m = binary_metrics([r["score"] == 0 for r in rows], [pr["score"] == 0 for pr in preds])
                rec[f"{name}/AUC"], rec[f"{name}/BACC"] = a, m["BACC"]
                v = rec[f"{name}/{s.metric_of(name)}"]
                norm[name] = 0.5 if v != v else v  # NaN (one class only) -> uninformative
            elif name == "query_gen":
                self._validate_query_gen(rows[:GEN_VAL_ROWS], rec)
                norm[name] = rec[f"{name}/{s.metric_of(name)}"]
            else:  # pragma: no cover - SFTSpec only admits tasks with a synthetic generator
                raise ValueError(f"sft: no validation for task {name!r}")
        if s.reweight_tasks:
            lam = self.tasks.update(norm)
            rec.update({f"lambda/{k}": v for k, v in lam.items()})
        ws = list(self.instance.current.values())
        self.instance.roll_checkpoint()
        rec["instance_ppl_tracked"] = len(self.instance.previous)
        rec["train_ppl_mean"] = sum(ws) / len(ws) if ws else None
        rec["weights"] = self._weight_summary()
        return rec

    def _weight_summary(self) -> dict[str, Any]:
        """Histogram (log-spaced bins over [w_min, w_max]) and per-task mean of the interval's instance weights.

        Weights live on the last pipeline stage of every DP replica; one world all-reduce sums them.
        """
        s = self.job.sft
        lo, hi = math.log10(s.w_min), math.log10(max(s.w_max, s.w_min * 1.001))
        edges = torch.logspace(lo, hi, WEIGHT_BINS + 1, dtype=torch.float64)
        counts = torch.zeros(WEIGHT_BINS, dtype=torch.float64)
        tasks = self.train_tasks
        per_task = torch.zeros(2 * len(tasks), dtype=torch.float64)
        for name, w in self._interval_w:
            k = int(torch.searchsorted(edges, torch.tensor(w, dtype=torch.float64), right=True)) - 1
            counts[min(max(k, 0), WEIGHT_BINS - 1)] += 1
            i = tasks.index(name)
            per_task[2 * i] += w
            per_task[2 * i + 1] += 1
        self._interval_w = []
        both = torch.cat([counts, per_task])
        dist.all_reduce(both)
        counts, per_task = both[:WEIGHT_BINS], both[WEIGHT_BINS:]
        return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts],
                "mean_by_task": {t: (float(per_task[2 * i] / per_task[2 * i + 1]) if per_task[2 * i + 1] else None)
                                 for i, t in enumerate(tasks)},
                "samples_by_task": {t: int(per_task[2 * i + 1]) for i, t in enumerate(tasks)}}

    # ------------------------------------------------------------------ held-out test report
    def test_report(self) -> dict[str, Any]:
        """Predict the test split of every task, write ``eval/<task>.{pred,gold}.jsonl`` and score them with
        the ``megatron-ads eval`` code path; ``eval/report.md`` holds the paper-style tables (rank 0)."""
        from megatron_ads.eval.metrics import evaluate, markdown

        s = self.job.sft
        out_dir = self.out / "eval"
        results: dict[str, Any] = {}
        sections = []
        for name in s.tasks:
            rows = self.data[name]["test"][: s.test_rows]
            if not rows:
                continue
            if name == "query_ad":
                preds = self.predict_query_ad(rows)
                gold = [{"id": r["id"], "labels": r["labels"]} for r in rows]
            elif name == "ad_user":
                preds = self.predict_ad_user(rows)
                gold = [{"id": r["id"], "score": r["score"]} for r in rows]
            else:
                preds = self.predict_query_gen(rows)
                gold = [{"id": r["id"], "keyword": r["keyword"], "ad": r["ad"]} for r in rows]
            if self.rank != 0:
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            pred_path, gold_path = out_dir / f"{name}.pred.jsonl", out_dir / f"{name}.gold.jsonl"
            synthetic.write_jsonl(preds, pred_path)
            synthetic.write_jsonl(gold, gold_path)
            r = evaluate(name, pred_path, gold_path)
            results[name] = {k: v for k, v in r.items() if k not in ("pred_line_errors", "unmatched_predictions")}
            sections.append(f"## {name} (step {self.step}, {len(rows)} test rows)\n\n{markdown(name, r)}\n")
        if self.rank == 0 and sections:
            tmp = out_dir / "report.md.tmp"
            tmp.write_text(f"# Held-out test report: {self.out}\n\n" + "\n".join(sections))
            tmp.replace(out_dir / "report.md")
            (out_dir / "report.json").write_text(json.dumps(results, indent=1))
            print(f"[sft] test report: {out_dir / 'report.md'}", flush=True)
        return results

    def run(self) -> dict[str, Any]:
        summary = super().run()
        if self.job.sft.test_rows > 0 and not summary["stopped_by_signal"]:
            summary["test"] = self.test_report()
        return summary

    # ------------------------------------------------------------------ hooks into the loop
    def train_step(self) -> dict[str, Any]:
        rec = super().train_step()
        if self.step % self.job.sft.eval_every == 0 or self.step == self.job.train.steps:
            val = self.validate()
            if self.rank == 0:
                with open(self.val_path, "a") as f:
                    f.write(json.dumps(val) + "\n")
                print("[sft] val " + " ".join(f"{k}={v:.4f}" for k, v in val.items()
                                              if isinstance(v, float)), flush=True)
                plot_sft_run(self.out)
            rec.update({k: v for k, v in val.items() if k not in ("step", "weights")})
        return rec

    def checkpoint_common(self) -> dict[str, Any]:
        return {**super().checkpoint_common(), "sft_tasks": self.tasks.state_dict()}

    def restore_common(self, state: dict[str, Any]) -> None:
        super().restore_common(state)
        if "sft_tasks" in state:
            self.tasks.load_state_dict(state["sft_tasks"])

    def checkpoint_rank(self) -> dict[str, Any]:
        # each rank tracks the perplexities of the samples it saw (Eq. 3-6 compare them across checkpoints)
        return {**super().checkpoint_rank(), "sft_instance": self.instance.state_dict()}

    def restore_rank(self, mine: dict[str, Any] | None, saved: list[dict[str, Any]]) -> None:
        super().restore_rank(mine, saved)
        if mine is not None:
            self.instance.load_state_dict(mine["sft_instance"])
        elif saved:  # another layout: samples move between ranks, so every rank takes the union (ids are unique)
            merged = dict(saved[0]["sft_instance"], previous={}, current={})
            for st in saved:
                merged["previous"].update(st["sft_instance"]["previous"])
                merged["current"].update(st["sft_instance"]["current"])
            self.instance.load_state_dict(merged)


def sft_worker(job_dict: dict) -> dict[str, Any]:
    """Entry point of one SFT rank."""
    from megatron_ads.config.train import JobConfig

    return SFTTrainer(JobConfig.from_dict(job_dict)).run()
