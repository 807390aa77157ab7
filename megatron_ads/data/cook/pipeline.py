"""Data cooking (AdNanny §3): labeled raw rows -> reasoning-augmented SFT rows, given three callables.

The models are handed in (``cli.cook`` wires the inference engine and the frozen MiniLM embedder; tests
hand in scripted ones), so every step here is plain code:

- ``Teacher.generate(prompts, seeds, temperature, top_p, max_new_tokens, stop_text)`` -> ``(text,
  finish_reason)`` per prompt, prompt i sampled with seed ``seeds[i]``; ``Teacher.fits(prompt,
  max_new_tokens)`` says whether a prompt and its generation fit the model;
- ``Verifier.score(prompts, targets)`` -> the summed log-probability of each target after its prompt (the
  ``data.tasks.Scorer`` protocol: one prefill per prompt, shared by its candidates);
- ``embed(texts)`` -> unit vectors [N, D].

Steps (``run`` for the inputs, ``validate_prompt`` first, ``finalize`` last):

0. *Read* (``read_raw``): the task's rows with their gold labels (query_gen: ``queries`` or one ``query``),
   validated like SFT files (``BadInput`` naming file, line and field).
1. *Keyword filters* (query_gen, ``keyword_prefilter``): every (keyword, query) pair in input order through
   ``filters.keyword_filter``; a row keeps its surviving queries, a row with none left is dropped.
2. *Golden-set validation* (``validate_prompt``): every variation of the prompt, greedy, on the golden rows;
   per variation format validity, label consistency and grounding, per prompt the agreement between the
   variations; below a threshold the prompt is refused (``PromptRefused``, naming prompt and figure).
3. *Rejection sampling* (``cook_batch``): ``n_candidates`` per input, candidate k under variation k mod V,
   sampled with seed ``candidate_seed(cfg.seed, id, k)``; then, per candidate, the first failing filter of
   schema → contradiction → boilerplate → grounding (``cfg.grounding``) → self-consistency (among the input's
   candidates that passed the rules) → verifier. The survivors are ranked by verifier score (then
   self-consistency); the best ``keep_per_input`` become rows. One journal record per input (``cook_batch``'s
   return).
4. *Corpus* (``finalize``): kept inputs in input order, shuffled (``split_seed``), split train/val/test;
   rows are standardized (``standard_row``: the task's fields, ``reasoning``, ``cook`` provenance), exactly
   what ``train sft`` reads through ``sft.files`` (``Task.target`` puts ``reasoning`` in ``<think>`` before the
   gold tags).
"""

from __future__ import annotations

import math
import random
import zlib
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from megatron_ads.config.cook import CookConfig
from megatron_ads.data.cook import filters as F
from megatron_ads.data.cook.prompts import CookPrompt, render, row_view
from megatron_ads.data.tasks import QUERY_GEN, Task, _get, validate_row
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import iter_jsonl

Embed = Callable[[Sequence[str]], np.ndarray]
KEEP, DROP = "kept", "dropped"
TOO_LONG = "too_long"


class Teacher(Protocol):
    def generate(self, prompts: list[str], seeds: list[int], *, temperature: float, top_p: float,
                 max_new_tokens: int, stop_text: str | None) -> list[tuple[str, str]]:
        """``(text, finish_reason)`` per prompt (finish: ``stop`` or ``length``)."""

    def fits(self, prompt: str, max_new_tokens: int) -> bool:
        """Whether the prompt plus ``max_new_tokens`` fit the model's positions."""


class Verifier(Protocol):
    def score(self, prompts: list[str], targets: list[str]) -> list[float]:
        """Summed log-probability of each target after its prompt."""


class PromptRefused(BadInput):
    """A cook prompt failed golden-set validation (exit 2); ``report`` holds the figures."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


# ------------------------------------------------------------------------------------ 0. read
def normalize_row(task: Task, row: Any) -> Any:
    """A raw row in the task's schema: a query_gen row with one ``query`` gets ``queries: [query]``."""
    if task.name == QUERY_GEN.name and isinstance(row, dict) and "queries" not in row and "query" in row:
        row = {**row, "queries": [row["query"]]}
        row.pop("query")
    return row


def read_raw(path: str | Path, task: Task) -> list[dict]:
    """The labeled rows of a raw JSONL file (``normalize_row``), validated with their labels. Raises BadInput
    listing every problem (file, line, field), FileNotFoundError for a missing file."""
    rows, problems, seen = [], [], {}
    for n, row in iter_jsonl(path, on_error=lambda n, msg: problems.append(msg)):
        row = normalize_row(task, row)
        bad = validate_row(task, row, with_targets=True)
        if not bad and str(row["id"]) in seen:
            bad = [f"field 'id': duplicate {row['id']!r} (first on line {seen[str(row['id'])]})"]
        problems += [f"{path}:{n}: {p}" for p in bad]
        if not bad:
            seen[str(row["id"])] = n
            rows.append(row)
    if problems:
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        raise BadInput(f"{len(problems)} invalid {task.name} row(s) in {path}{more}:\n" + "\n".join(problems[:20]))
    return rows


# ------------------------------------------------------------------------------------ 1. keyword filters
def ad_text(row: dict) -> str:
    ad = row.get("ad") or {}
    return " ".join(str(ad.get(k, "")) for k in ("title", "description", "url")).strip()


def keyword_prefilter(task: Task, rows: list[dict], cfg: CookConfig, embed: Embed
                      ) -> tuple[list[dict], dict[str, str], dict[str, Any]]:
    """Keyword filters over every (keyword, query) pair (query_gen; other tasks pass through).

    Returns the rows left (with their surviving ``queries``), the dropped inputs ``{id: filter}`` (the filter
    of the row's last removed query) and the query counts ``{"raw", "kept", "dropped": {filter: n}}``."""
    counts: dict[str, Any] = {"raw": 0, "kept": 0, "dropped": {f: 0 for f in F.KEYWORD_FILTERS}}
    if task.name != QUERY_GEN.name:
        return rows, {}, {}
    pairs = [(i, str(q)) for i, r in enumerate(rows) for q in r["queries"]]
    queries = [q for _, q in pairs]
    kws = [str(rows[i]["keyword"]) for i, _ in pairs]
    ads = [ad_text(rows[i]) for i, _ in pairs]
    qv, kv, av = (embed(queries), embed(kws), embed(ads)) if pairs else (np.zeros((0, 1)),) * 3
    items = [{"keyword": kws[j], "query": queries[j], "cos_keyword": float(qv[j] @ kv[j]),
              "cos_ad": float(qv[j] @ av[j]), "vec": qv[j]} for j in range(len(pairs))]
    verdicts = F.keyword_filter(items, cfg)
    keep: dict[int, list[str]] = {}
    last: dict[int, str] = {}
    for (i, q), v in zip(pairs, verdicts):
        counts["raw"] += 1
        if v is None:
            counts["kept"] += 1
            keep.setdefault(i, []).append(q)
        else:
            counts["dropped"][v] += 1
            last[i] = v
    out, dropped = [], {}
    for i, r in enumerate(rows):
        if keep.get(i):
            out.append({**r, "queries": keep[i]})
        else:
            dropped[str(r["id"])] = last.get(i, F.BROADER)
    return out, dropped, counts


# ------------------------------------------------------------------------------------ helpers
def candidate_seed(seed: int, row_id: Any, k: int) -> int:
    """The sampling seed of candidate ``k`` of input ``row_id`` (independent of batches, workers, resuming)."""
    return zlib.crc32(f"{seed}:{row_id}:{k}".encode()) & 0x7FFFFFFF


def stop_text(task: Task, answer: str) -> str | None:
    """Where the teacher's generation may stop: ``</think>`` (gold answer mode) or the task's closing tag
    (its last output field's; None when that field repeats)."""
    if answer == "gold":
        return "</think>"
    if not task.outputs or task.outputs[-1].repeated:
        return None
    return f"</{task.outputs[-1].tag}>"


def _closed(text: str, finish: str, cfg: CookConfig) -> str:
    """Gold answer mode with ``close_truncated``: a reasoning cut at the token limit is closed there."""
    if cfg.answer == "gold" and cfg.close_truncated and finish == "length" and "</think>" not in text:
        return text + "</think>"
    return text


def standard_row(task: Task, row: dict, reasoning: str, meta: dict) -> dict:
    """A corpus row: ``id``, the task's input and label fields (top-level keys of ``required``, ``outputs`` and
    ``gold_keys``), the cooked ``reasoning`` and its provenance ``cook``."""
    keys = ["id"] + [k.split(".")[0] for k in task.required] + [f.key.split(".")[0] for f in task.outputs] \
        + list(task.gold_keys)
    out = {k: row[k] for k in dict.fromkeys(keys) if k in row}
    out["reasoning"] = reasoning
    out["cook"] = meta
    return out


def _softmax_prob(logliks: Sequence[float], index: int) -> float:
    m = max(logliks)
    ex = [math.exp(x - m) for x in logliks]
    return ex[index] / sum(ex)


def verifier_scores(task: Task, prompt: CookPrompt, items: list[tuple[dict, str]], verifier: Verifier) -> list[float]:
    """The verifier's faithfulness score of each ``(row, reasoning)`` (``prompts`` module docstring): ``label``
    kind — the smallest probability of a gold label after the task's label-only prompt with the reasoning in
    ``<think>`` (each field after the gold values of the fields before it); ``judge`` kind — P(positive)."""
    if not items:
        return []
    v = prompt.verifier
    prompts, targets, groups = [], [], []  # groups: per item, per field, (start, n, gold index)
    for row, reasoning in items:
        per = []
        if v.kind == "judge":
            text = v.template.format(**row_view(task, row), reasoning=reasoning)
            per.append((len(prompts), len(v.candidates), v.candidates.index(v.positive)))
            for c in v.candidates:
                prompts.append(text)
                targets.append(f"{c}</{v.tag}>")
        else:
            prefix = task.prompt(row) + f"<think>{reasoning}</think>\n"
            for f in task.outputs:
                gold = str(_get(row, f.key)).lower()
                cands = list(f.allowed or ())
                per.append((len(prompts), len(cands), cands.index(gold)))
                for c in cands:
                    prompts.append(prefix)
                    targets.append(f"<{f.tag}>{c}</{f.tag}>")
                prefix += f"<{f.tag}>{gold}</{f.tag}>\n"
        groups.append(per)
    ll = verifier.score(prompts, targets)
    return [min(_softmax_prob(ll[s:s + n], g) for s, n, g in per) for per in groups]


# ------------------------------------------------------------------------------------ 2. golden set
def validate_prompt(task: Task, prompt: CookPrompt, golden: list[dict], teacher: Teacher, embed: Embed,
                    cfg: CookConfig, source: str = "") -> dict:
    """Run every variation of ``prompt`` greedily on the golden rows and measure it (module docstring, 2);
    ``grounding`` is the share of well-formed outputs that are neither boilerplate nor, with ``cfg.grounding``,
    name an entity the row does not hold (``filters.grounding``).

    Returns the report ``{prompt, golden_rows, source, variations: {name: {n, format_validity,
    label_consistency, grounding, agreement, example}}, agreement, thresholds, failures, passed}``;
    ``failures`` name the variation and the figure below its threshold. Raises nothing: ``check_validation``
    refuses."""
    stop = stop_text(task, cfg.answer)
    fit = [r for r in golden if all(teacher.fits(render(prompt, v, task, r, cfg.answer), cfg.max_new_tokens)
                                    for v in prompt.variations)]
    per_var: dict[str, dict[str, Any]] = {}
    reasonings: dict[str, list[str | None]] = {}
    lex = F.lexicon(cfg.grounding_lexicon) if cfg.grounding else None
    for v in prompt.variations:
        texts = [render(prompt, v, task, r, cfg.answer) for r in fit]
        outs = teacher.generate(texts, [0] * len(texts), temperature=0.0, top_p=1.0,
                                max_new_tokens=cfg.max_new_tokens, stop_text=stop) if texts else []
        ok = consistent = grounded = 0
        rs: list[str | None] = []
        for r, (text, finish) in zip(fit, outs):
            parsed, bad = F.schema_check(task, _closed(text, finish, cfg), cfg.answer, finish)
            if bad is not None:
                rs.append(None)
                continue
            ok += 1
            rs.append(parsed.reasoning)
            consistent += F.contradiction(task, r, parsed, cfg.answer) is None
            grounded += (not F.is_boilerplate(parsed.reasoning or "", F.entities(task, r), cfg.min_entity_overlap)
                         and (lex is None or F.grounding(task, r, parsed.reasoning or "", lex) is None))
        reasonings[v.name] = rs
        per_var[v.name] = {"n": len(fit), "format_validity": ok / len(fit) if fit else 0.0,
                           "label_consistency": consistent / ok if ok else None,
                           "grounding": grounded / ok if ok else None,
                           "example": outs[0][0] if outs else None}
    agreement, by_var = _agreement(reasonings, len(fit), embed)
    for name, a in by_var.items():
        per_var[name]["agreement"] = a
    th = validation_thresholds(cfg)
    failures = []
    if not fit:
        failures.append(f"no golden row fits the teacher (of {len(golden)})")
    for name, figs in per_var.items():
        for key in ("format_validity", "label_consistency", "grounding"):
            if figs[key] is not None and figs[key] < th[key]:  # None: no well-formed output to judge
                failures.append(f"variation {name!r}: {key.replace('_', ' ')} {figs[key]:.2f} < {th[key]:.2f}")
    if agreement is not None and agreement < th["agreement"]:
        failures.append(f"agreement between variations {agreement:.2f} < {th['agreement']:.2f}")
    return {"prompt": prompt.id, "task": task.name, "golden_rows": len(fit), "source": source,
            "variations": per_var, "agreement": agreement, "thresholds": th, "failures": failures,
            "passed": not failures}


def validation_thresholds(cfg: CookConfig) -> dict[str, float]:
    """The golden-set thresholds of ``cfg`` by figure name."""
    return {"format_validity": cfg.min_format_validity, "label_consistency": cfg.min_label_consistency,
            "grounding": cfg.min_grounding, "agreement": cfg.min_agreement}


def _agreement(reasonings: dict[str, list[str | None]], n: int, embed: Embed
               ) -> tuple[float | None, dict[str, float | None]]:
    """Mean over golden rows of the mean pairwise cosine between the variations' well-formed reasonings (rows
    with fewer than two count 0: no agreement shown), and per variation its mean cosine to the others. None
    with a single variation, or when no row has two well-formed reasonings (the format figures fail then)."""
    names = list(reasonings)
    if len(names) < 2 or not any(sum(bool(reasonings[k][i]) for k in names) >= 2 for i in range(n)):
        return None, {k: None for k in names}
    row_means: list[float] = []
    per: dict[str, list[float]] = {k: [] for k in names}
    for i in range(n):
        have = [(k, reasonings[k][i]) for k in names if reasonings[k][i]]
        if len(have) < 2:
            row_means.append(0.0)
            for k in names:
                per[k].append(0.0)
            continue
        sims = F.mean_pairwise_cosine(embed([t for _, t in have]))
        row_means.append(float(np.mean(sims)))
        got = dict(zip([k for k, _ in have], sims))
        for k in names:
            per[k].append(got.get(k, 0.0))
    mean = float(np.mean(row_means)) if row_means else 0.0
    return mean, {k: (float(np.mean(v)) if v else 0.0) for k, v in per.items()}


def check_validation(report: dict) -> None:
    """Refuse a prompt whose golden-set report has failures (``PromptRefused`` naming prompt and figures)."""
    if report["failures"]:
        raise PromptRefused(f"prompt {report['prompt']} refused on the golden set ({report['golden_rows']} rows"
                            f"{', ' + report['source'] if report.get('source') else ''}): "
                            + "; ".join(report["failures"]), report)


# ------------------------------------------------------------------------------------ 3. rejection sampling
def cook_batch(task: Task, prompt: CookPrompt, rows: list[dict], teacher: Teacher, verifier: Verifier | None,
               embed: Embed, cfg: CookConfig, teacher_name: str = "") -> list[dict]:
    """Journal records of a batch of inputs (module docstring, 3): ``{id, task, prompt, status, dropped_by?,
    candidates: [{k, variation, seed, finish, dropped_by, why, self_consistency, verifier, reasoning}],
    rows: [corpus rows, best first]}``."""
    variations = prompt.variations
    lex = F.lexicon(cfg.grounding_lexicon) if cfg.grounding else None
    records: list[dict] = []
    jobs: list[tuple[int, int, str, int]] = []  # (record index, k, prompt text, seed)
    for row in rows:
        rec = {"id": row["id"], "task": task.name, "prompt": prompt.id, "candidates": [], "rows": []}
        texts = [render(prompt, variations[k % len(variations)], task, row, cfg.answer)
                 for k in range(cfg.n_candidates)]
        if not all(teacher.fits(t, cfg.max_new_tokens) for t in texts):
            rec.update(status=DROP, dropped_by=TOO_LONG)
        else:
            for k, t in enumerate(texts):
                jobs.append((len(records), k, t, candidate_seed(cfg.seed, row["id"], k)))
        records.append(rec)
    outs = teacher.generate([j[2] for j in jobs], [j[3] for j in jobs], temperature=cfg.temperature,
                            top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            stop_text=stop_text(task, cfg.answer)) if jobs else []
    for (ri, k, _, seed), (text, finish) in zip(jobs, outs):
        row = rows[ri]
        cand: dict[str, Any] = {"k": k, "variation": variations[k % len(variations)].name, "seed": seed,
                                "finish": finish, "dropped_by": None, "why": None, "self_consistency": None,
                                "verifier": None, "reasoning": None, "text": text[:4000]}
        parsed, bad = F.schema_check(task, _closed(text, finish, cfg), cfg.answer, finish)
        if bad is not None:
            cand.update(dropped_by=F.SCHEMA, why=bad)
        else:
            cand["reasoning"] = parsed.reasoning
            why = F.contradiction(task, row, parsed, cfg.answer)
            if why is not None:
                cand.update(dropped_by=F.CONTRADICTION, why=why)
            elif F.is_boilerplate(parsed.reasoning or "", F.entities(task, row), cfg.min_entity_overlap):
                cand.update(dropped_by=F.BOILERPLATE, why="cites no entity of the input")
            elif lex is not None and (why := F.grounding(task, row, parsed.reasoning or "", lex)) is not None:
                cand.update(dropped_by=F.GROUNDING, why=why)
        records[ri]["candidates"].append(cand)
    # self-consistency among each input's rule-passing candidates
    for rec in records:
        alive = [c for c in rec["candidates"] if c["dropped_by"] is None]
        if len(alive) >= 2:
            keeps, sims = F.self_consistency(embed([c["reasoning"] for c in alive]), cfg.self_consistency_min)
            for c, s, keep in zip(alive, sims, keeps):
                c["self_consistency"] = s
                if not keep:
                    c.update(dropped_by=F.SELF_CONSISTENCY,
                             why=f"mean cosine {s:.3f} to the other candidates < {cfg.self_consistency_min}")
    # verifier on the survivors
    pending = [(rec, rows[i], c) for i, rec in enumerate(records) for c in rec["candidates"] if c["dropped_by"] is None]
    if verifier is not None and pending:
        scores = verifier_scores(task, prompt, [(row, c["reasoning"]) for _, row, c in pending], verifier)
        for (_, _, c), s in zip(pending, scores):
            c["verifier"] = s
            if s < cfg.verifier_min:
                c.update(dropped_by=F.VERIFIER, why=f"verifier score {s:.3f} < {cfg.verifier_min}")
    for rec, row in zip(records, rows):
        if rec.get("status") == DROP:
            continue
        alive = [c for c in rec["candidates"] if c["dropped_by"] is None]
        if not alive:
            rec.update(status=DROP, dropped_by=_last_filter(rec["candidates"]))
            continue
        alive.sort(key=lambda c: (-(c["verifier"] if c["verifier"] is not None else 1.0),
                                  -(c["self_consistency"] if c["self_consistency"] is not None else 1.0), c["k"]))
        rec["status"] = KEEP
        for c in alive[:cfg.keep_per_input]:
            meta = {"prompt": prompt.id, "variation": c["variation"], "candidate": c["k"], "seed": c["seed"],
                    "verifier": c["verifier"], "self_consistency": c["self_consistency"], "teacher": teacher_name}
            rec["rows"].append(standard_row(task, row, c["reasoning"], meta))
    return records


def _last_filter(cands: list[dict]) -> str:
    """The filter that removed an input's last candidates: the latest stage any candidate was dropped at."""
    order = {f: i for i, f in enumerate(F.CANDIDATE_FILTERS)}
    return max((c["dropped_by"] for c in cands), key=lambda f: order[f], default=F.SCHEMA)


def run(task: Task, prompt: CookPrompt, rows: list[dict], *, teacher: Teacher, verifier: Verifier | None,
        embed: Embed, cfg: CookConfig, done: set[str], append: Callable[[list[dict]], None], rank: int = 0,
        world: int = 1, teacher_name: str = "", on_batch: Callable[[int], None] | None = None) -> int:
    """Cook the inputs not in ``done`` (ids as str), this worker's share (pending input i to worker i mod
    ``world``), ``cfg.batch_size`` at a time; each batch's records go to ``append`` (the journal) before the
    next batch starts. Returns the number of inputs cooked."""
    pending = [r for r in rows if str(r["id"]) not in done][rank::world]
    for s in range(0, len(pending), cfg.batch_size):
        batch = pending[s:s + cfg.batch_size]
        append(cook_batch(task, prompt, batch, teacher, verifier, embed, cfg, teacher_name))
        if on_batch is not None:
            on_batch(len(batch))
    return len(pending)


# ------------------------------------------------------------------------------------ 4. corpus
def split_counts(n: int, cfg: CookConfig) -> tuple[int, int]:
    """(val, test) sizes for ``n`` kept inputs: the configured shares, at least one each when n >= 3."""
    n_val, n_test = int(n * cfg.val_fraction), int(n * cfg.test_fraction)
    if n >= 3:
        n_val = max(n_val, 1) if cfg.val_fraction > 0 else 0
        n_test = max(n_test, 1) if cfg.test_fraction > 0 else 0
    return n_val, n_test


def finalize(rows: list[dict], records: dict[str, dict], cfg: CookConfig) -> dict[str, list[dict]]:
    """The corpus splits from the journal records of ``rows`` (the cooked inputs, input order): kept inputs
    shuffled with ``split_seed``, then val, test, train; val and test take each input's best row, train
    every kept row of its inputs. Deterministic in the records and the seed (not in workers or resumes)."""
    kept = [records[str(r["id"])] for r in rows if records.get(str(r["id"]), {}).get("status") == KEEP]
    order = list(range(len(kept)))
    random.Random(cfg.split_seed).shuffle(order)
    n_val, n_test = split_counts(len(kept), cfg)
    val = [kept[i]["rows"][0] for i in order[:n_val]]
    test = [kept[i]["rows"][0] for i in order[n_val:n_val + n_test]]
    train = []
    for i in order[n_val + n_test:]:
        for j, r in enumerate(kept[i]["rows"]):
            train.append(r if j == 0 else {**r, "id": f"{r['id']}#{j + 1}"})
    return {"train": train, "val": val, "test": test}
