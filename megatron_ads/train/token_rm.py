"""TPPO token reward model: the pure parts of ``train rm`` with ``rm.kind=token`` (``train.token_rm_loop`` runs
them on the Trainer; the loss settings are the ``rm`` section's): the run's examples (``token_rm_examples``:
``data.token_labels`` judged by ``eval.adtasks.query_relevant``), an example's token ids and classes with the
policy's tokenizer (``encode_example``: ``tppo.word_token_labels``), and the validation / test metrics of the
head's class probabilities (``token_metrics``). No megatron-core here.

Shapes: N responses, S = train.seq_len, C = 3 classes.
"""

from __future__ import annotations

import torch

from megatron_ads.config.train import RMSpec
from megatron_ads.data.token_labels import token_rm_data, user_rows
from megatron_ads.eval.adtasks import query_relevant
from megatron_ads.eval.metrics import auc
from megatron_ads.train import tppo

__all__ = ["encode_example", "pad_rows", "token_metrics", "token_rm_examples"]


def token_rm_examples(r: RMSpec) -> dict[str, list[dict]]:
    """The run's examples ``{"train", "val", "test"}`` (``data.token_labels.token_rm_data`` of ``rm.rows`` user
    rows, judged by ``eval.adtasks.query_relevant``). ValueError naming ``rm.rows`` when train or val is empty."""
    data = token_rm_data(user_rows(r.rows, r.data_seed), judge=query_relevant, seed=r.data_seed,
                         val=r.val_fraction, test=r.test_fraction, responses_per_row=r.responses_per_row,
                         perturb_rate=r.perturb_rate, label_only_fraction=r.label_only_fraction)
    for k in ("train", "val"):
        if not data[k]:
            raise ValueError(f"rm: the {k} split of rm.rows={r.rows} user rows is empty; raise rm.rows")
    return data


def encode_example(tokenizer, ex: dict, seq_len: int) -> dict[str, list[int]]:
    """Token ids of example ``ex`` (prompt left-truncated + response + EOS, at most ``seq_len``) with, per token,
    its class (``tppo.word_token_labels``: 0 on the prompt, EOS and non-query words), ``response`` (1 on the
    response's tokens, EOS included) and ``qidx`` (the index of the query one of whose words the token overlaps,
    else -1: tags, separators, whitespace-only tokens, reasoning, prompt, EOS). ValueError naming
    ``train.seq_len`` when the response alone does not fit."""
    enc = tokenizer(ex["response"], add_special_tokens=False, return_offsets_mapping=True)
    words = [(s, e, q) for s, e, _c in ex["word_spans"]
             for q, (qs, qe) in enumerate(ex["query_spans"]) if qs <= s and e <= qe]
    qidx = [next((q for s, e, q in words if b > a and s < b and e > a), -1) for a, b in enc["offset_mapping"]]
    n_resp = len(qidx) + 1  # EOS
    if n_resp > seq_len:
        raise ValueError(f"rm: example {ex['id']!r}: the response is {n_resp} tokens with EOS, more than "
                         f"train.seq_len={seq_len}; raise train.seq_len")
    keep = seq_len - n_resp
    prompt = list(tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"])
    prompt = prompt[-keep:] if keep > 0 else []
    ids, classes = tppo.word_token_labels(tokenizer, ex["response"], ex["word_spans"], prompt_ids=prompt,
                                          add_eos=True)
    n = len(prompt)
    return {"ids": ids, "classes": classes, "response": [0] * n + [1] * n_resp, "qidx": [-1] * n + qidx + [-1]}


def pad_rows(rows: list[list[int]], S: int, fill: int) -> torch.Tensor:
    """Rows of ints right-padded with ``fill`` to length ``S``: long [len(rows), S]."""
    out = torch.full((len(rows), S), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def token_metrics(probs_NSC: torch.Tensor, encoded: list[dict], examples: list[dict],
                  kind: str = "prob_diff") -> tuple[dict[str, float], list[dict]]:
    """Metrics of the class probabilities [N, S, 3] of ``examples`` (their ``encode_example`` rows): over response
    tokens ``token_acc`` (argmax = gold on gold classes 1 and 2), ``recall_0/1/2`` and ``loss`` (the token RM loss
    with w = 0.5 on all response tokens, no balancing); per query, its score = the mean per-token reward
    (``tppo.token_reward_from_probs``, ``kind``) over its tokens, against the hidden judge: ``query_auc``,
    ``query_acc`` (score > 0 read as relevant), ``relevant_rate``; and ``query_min_auc`` / ``query_min_acc`` with
    the query's lowest token reward as its score (the judge's own rule: one off-topic word makes a query
    irrelevant, which a mean can outvote). Returns (metrics, per-query rows)."""
    N, S = probs_NSC.shape[:2]
    labels = pad_rows([e["classes"] for e in encoded], S, 0)
    resp = pad_rows([e["response"] for e in encoded], S, 0).bool()
    qidx = pad_rows([e["qidx"] for e in encoded], S, -1)
    probs = probs_NSC.double()
    pred = probs.argmax(-1)
    out: dict[str, float] = {"n_examples": N}
    nan = float("nan")
    lab = resp & (labels > 0)
    out["token_acc"] = float((pred[lab] == labels[lab]).double().mean()) if bool(lab.any()) else nan
    for c in range(tppo.NUM_CLASSES):
        m = resp & (labels == c)
        out[f"recall_{c}"] = float((pred[m] == c).double().mean()) if bool(m.any()) else nan
    r_global = torch.tensor([e["r_global"] for e in examples], dtype=torch.float64)
    loss = tppo.token_rm_loss(torch.log(probs.clamp_min(1e-30)), labels, resp, r_global)
    out["loss"], out["local_loss"], out["global_loss"] = float(loss.total), float(loss.local), float(loss.global_)
    r_NS = tppo.token_reward_from_probs(probs, resp, kind)
    rows, scores, lows, rel = [], [], [], []
    for i, ex in enumerate(examples):
        for q, ok in enumerate(ex["query_relevant"]):
            m = qidx[i] == q
            if not bool(m.any()):
                continue
            s, low = float(r_NS[i][m].mean()), float(r_NS[i][m].min())
            scores.append(s)
            lows.append(low)
            rel.append(bool(ok))
            rows.append({"id": ex["id"], "row_id": ex["row_id"], "query": ex["queries"][q], "relevant": bool(ok),
                         "perturbed": bool(ex["perturbed"][q]), "score": s, "min_score": low})
    out["n_queries"] = len(scores)
    out["relevant_rate"] = sum(rel) / len(rel) if rel else nan
    for name, xs in (("query", scores), ("query_min", lows)):
        out[f"{name}_auc"] = auc(rel, xs) if rel else nan
        out[f"{name}_acc"] = sum((x > 0) == ok for x, ok in zip(xs, rel)) / len(rel) if rel else nan
    return out, rows
