"""The shared-bottom CTR/CVR model (ESMM) and the ``ctcvr`` reward (RELATE §3.3.3; spec ``papers_spec.md``
§B.2, §C 26).

How it works:

- Features of a (keyword, ad text) pair: ``ctr.features`` (the frozen embedder's vectors and the cheap
  features, ``ctr.FEATURE_VERSION``) — the same input as the frozen CTR model.
- ``ESMMNet``: a shared bottom MLP (GELU) gives a representation h; two towers (MLP, GELU) give the click
  logit a and the post-click conversion logit b. pCTR = σ(a), pCVR = σ(b), pCTCVR = pCTR·pCVR, so
  pCTCVR ≤ pCTR for every input by construction (§C 26; also exact in floating point: ``predict`` multiplies
  two float64 numbers in [0, 1]).
- Entire-space training (ESMM, Ma et al. 2018, RELATE's ref. [10]): every term is over *impressions*:
  L = BCE(pCTR, click) + w·BCE(pCTCVR, click ∧ conversion). pCVR is never fit on the clicked subspace: it
  gets gradient only through pCTCVR. Log rows ``{"keyword", "text", "impressions", "clicks", "conversions"}``
  (e.g. ``data.conversions.conversion_logs``, handed in by the caller) are aggregated counts: a row with n
  impressions, c clicks, v conversions adds −[c·log pCTR + (n−c)·log(1−pCTR)] − w·[v·log pCTCVR +
  (n−v)·log(1−pCTCVR)]; the sum is divided by Σn — exactly the mean over the expanded impressions
  (``esmm_loss``). log(1 − σ(a)σ(b)) = logsumexp(−a, −b, −a−b) − softplus(−a) − softplus(−b) (stable).
  Full batch, AdamW, deterministic in ``ESMMConfig.seed``.
- ``ESMMModel.predict(keywords, texts) -> (ctr, cvr, ctcvr)``; ``save(dir)`` writes ``model.safetensors`` and
  ``esmm_config.json`` (architecture, feature version, embedder, training summary); ``load(dir, embedder)``
  reads them back. No pickle.
- The ``ctcvr`` reward (registered) over ``resources.esmm_model``: x_j the keyword (``meta[keyword_key]``),
  y_j the completion's parsed ``fields`` joined with ". " (as ``ctr_uplift``), y_base the original ad
  (``meta[base_key]``). ``absolute``: g(CTCVR(x, y)) — RELATE's reward, the predicted CTCVR of the generated
  text; ``uplift``: g(CTCVR(x, y) − CTCVR(x, y_base)); ``relative``: g(Eq. 10 per sample,
  ``relate.delta_ctcvr(CTCVR(x, y), CTCVR(x, y_base))``). A malformed completion cannot be shown: its CTCVR
  is 0. No keyword (or, in the base-relative modes, no y_base): not applicable (None).
- ``predicted_delta_ctcvr``: Eq. 10 offline — the relative lift of the mean predicted CTCVR of a set of texts
  over that of their baselines.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from megatron_ads.rewards.ctr import (FEATURE_VERSION, base_text, features, join_fields,  # noqa: F401
                                      read_model_dir, save_model_dir)  # FEATURE_VERSION: re-exported (what a saved model records)
from megatron_ads.rewards.registry import RewardOutput, RewardResources, register
from megatron_ads.rewards.relate import delta_ctcvr
from megatron_ads.rewards.retrieval import GTransform, MiniLMEmbedder

CONFIG_FILE, WEIGHTS_FILE = "esmm_config.json", "model.safetensors"
LOG_KEYS = ("keyword", "text", "impressions", "clicks", "conversions")
"""Fields of a conversion-log row ``train_esmm`` reads."""


def _mlp(d: int, widths: Sequence[int]) -> tuple[list[torch.nn.Module], int]:
    layers: list[torch.nn.Module] = []
    for h in widths:
        layers += [torch.nn.Linear(d, h), torch.nn.GELU()]
        d = h
    return layers, d


def _check_widths(name: str, widths: Any, allow_empty: bool) -> None:
    if not isinstance(widths, list) or (not widths and not allow_empty) or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in widths):
        what = "a list" if allow_empty else "a non-empty list"
        raise ValueError(f"{name}: expected {what} of widths >= 1, got {widths!r}")


@dataclass(kw_only=True, slots=True)
class ESMMConfig:
    """Architecture and training of the shared-bottom CTR/CVR model."""

    bottom: list[int] = field(default_factory=lambda: [64])
    """Hidden widths of the shared bottom MLP (one GELU layer each; non-empty)."""
    tower: list[int] = field(default_factory=lambda: [32])
    """Hidden widths of each tower (CTR, CVR) before its logit ([]: a linear head on the bottom)."""
    epochs: int = 300
    """Full-batch AdamW steps."""
    lr: float = 3e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW (decoupled) weight decay."""
    ctcvr_weight: float = 1.0
    """w: weight of the CTCVR term against the CTR term (ESMM: 1)."""
    seed: int = 0
    """Initialization seed (training is deterministic in it)."""

    def __post_init__(self):
        _check_widths("bottom", self.bottom, allow_empty=False)
        _check_widths("tower", self.tower, allow_empty=True)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs: expected an integer >= 1, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected a finite value > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: expected a finite value >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.ctcvr_weight, (int, float)) and math.isfinite(self.ctcvr_weight)
                and self.ctcvr_weight > 0):
            raise ValueError(f"ctcvr_weight: expected a finite value > 0, got {self.ctcvr_weight!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: expected an integer, got {self.seed!r}")


class ESMMNet(torch.nn.Module):
    """Shared bottom MLP -> CTR tower and CVR tower; ``forward`` gives the (click, conversion) logits [N], [N]."""

    def __init__(self, in_dim: int, bottom: Sequence[int], tower: Sequence[int]):
        super().__init__()
        layers, d = _mlp(in_dim, bottom)
        self.bottom = torch.nn.Sequential(*layers)
        heads = []
        for _ in range(2):
            t, dt = _mlp(d, tower)
            heads.append(torch.nn.Sequential(*t, torch.nn.Linear(dt, 1)))
        self.ctr_tower, self.cvr_tower = heads

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.bottom(x)
        return self.ctr_tower(h).squeeze(-1), self.cvr_tower(h).squeeze(-1)

    @staticmethod
    def probabilities(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(pCTR, pCVR, pCTCVR = pCTR·pCVR) from the two logits."""
        p_ctr, p_cvr = torch.sigmoid(ctr_logit), torch.sigmoid(cvr_logit)
        return p_ctr, p_cvr, p_ctr * p_cvr


def esmm_loss(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor, impressions: torch.Tensor, clicks: torch.Tensor,
              conversions: torch.Tensor, ctcvr_weight: float = 1.0) -> torch.Tensor:
    """Entire-space loss per impression: [Σ_rows BCE_counts(pCTR; clicks of impressions) + w·BCE_counts(pCTCVR;
    conversions of impressions)] / Σ impressions, with pCTR = σ(a), pCTCVR = σ(a)·σ(b) (module docstring).

    Args: the logits a, b [N]; per-row counts [N] (impressions >= 1, 0 <= conversions <= clicks <= impressions);
    w. Returns: a scalar tensor, equal to the mean over the expanded impressions of
    BCE(pCTR, click) + w·BCE(pCTCVR, click ∧ conversion)."""
    a, b = ctr_logit, cvr_logit
    n, c, v = impressions.to(a.dtype), clicks.to(a.dtype), conversions.to(a.dtype)
    log_ctr, log_not_ctr = -F.softplus(-a), -F.softplus(a)
    log_ctcvr = log_ctr - F.softplus(-b)
    log_not_ctcvr = torch.logsumexp(torch.stack([-a, -b, -a - b]), 0) - F.softplus(-a) - F.softplus(-b)
    ctr_term = -(c * log_ctr + (n - c) * log_not_ctr)
    ctcvr_term = -(v * log_ctcvr + (n - v) * log_not_ctcvr)
    return (ctr_term + ctcvr_weight * ctcvr_term).sum() / n.sum()


class ESMMModel:
    """A frozen shared-bottom CTR/CVR model: ``predict(keywords, texts)`` -> (ctr, cvr, ctcvr)."""

    def __init__(self, net: ESMMNet, cfg: ESMMConfig, embedder, in_dim: int, summary: dict | None = None):
        self.net = net.eval().requires_grad_(False)
        self.cfg, self.embedder, self.in_dim = cfg, embedder, in_dim
        self.summary = dict(summary or {})

    def predict(self, keywords: Sequence[str], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per (keyword, text) pair: predicted click probability, post-click conversion probability and
        CTCVR = ctr·cvr, each [N] float64 (ctcvr <= ctr exactly)."""
        if len(keywords) != len(texts):
            raise ValueError(f"keywords: expected one per text ({len(texts)}), got {len(keywords)}")
        if not len(texts):
            return np.zeros(0), np.zeros(0), np.zeros(0)
        x = torch.from_numpy(features(self.embedder, keywords, texts))
        with torch.inference_mode():
            a, b = self.net(x)
        ctr = torch.sigmoid(a.double()).numpy()
        cvr = torch.sigmoid(b.double()).numpy()
        return ctr, cvr, ctr * cvr

    def predict_ctcvr(self, keywords: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Predicted CTCVR [N] (float64)."""
        return self.predict(keywords, texts)[2]

    def save(self, out_dir: str | Path) -> Path:
        """Write ``model.safetensors`` and ``esmm_config.json`` into ``out_dir``; returns it."""
        return save_model_dir(out_dir, self.net, CONFIG_FILE, {
            "model": "esmm", "in_dim": self.in_dim, "config": asdict(self.cfg),
            "embedder": str(getattr(self.embedder, "path", "")), "summary": self.summary})

    @classmethod
    def load(cls, model_dir: str | Path, embedder=None) -> "ESMMModel":
        """A model ``save`` wrote (``embedder``: the same frozen embedder; None: the packaged MiniLM)."""
        d, meta = read_model_dir(model_dir, CONFIG_FILE, "an ESMM model")
        try:
            cfg = ESMMConfig(**meta["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{d / CONFIG_FILE}: config: {exc}") from exc
        net = ESMMNet(int(meta["in_dim"]), cfg.bottom, cfg.tower)
        net.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
        return cls(net, cfg, embedder if embedder is not None else MiniLMEmbedder(), int(meta["in_dim"]),
                   meta.get("summary"))


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        raise ValueError("rows: expected at least one conversion-log row")
    for i, r in enumerate(rows):
        for key in LOG_KEYS:
            if key not in r:
                raise ValueError(f"rows[{i}].{key}: missing (a conversion-log row has {', '.join(LOG_KEYS)})")
        n, c, v = r["impressions"], r["clicks"], r["conversions"]
        if not (n >= 1 and 0 <= v <= c <= n):
            raise ValueError(f"rows[{i}]: expected impressions >= 1 and 0 <= conversions <= clicks <= impressions, "
                             f"got impressions={n}, clicks={c}, conversions={v}")


def train_esmm(rows: Sequence[Mapping[str, Any]], embedder, cfg: ESMMConfig | None = None) -> ESMMModel:
    """Fit an ESMM model on conversion-log rows ``{"keyword", "text", "impressions", "clicks", "conversions"}``
    with the entire-space loss (``esmm_loss``, aggregated counts); deterministic in ``cfg.seed``."""
    cfg = cfg or ESMMConfig()
    _check_rows(rows)
    t0 = time.perf_counter()
    x = torch.from_numpy(features(embedder, [r["keyword"] for r in rows], [r["text"] for r in rows]))
    n, c, v = (torch.tensor([float(r[k]) for r in rows]) for k in ("impressions", "clicks", "conversions"))
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        net = ESMMNet(x.shape[1], cfg.bottom, cfg.tower)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        loss = esmm_loss(*net(x), n, c, v, cfg.ctcvr_weight)
        loss.backward()
        opt.step()
    summary = {"rows": len(rows), "impressions": int(n.sum()), "clicks": int(c.sum()), "conversions": int(v.sum()),
               "final_loss": float(loss.detach()), "seconds": round(time.perf_counter() - t0, 3)}
    return ESMMModel(net, cfg, embedder, x.shape[1], summary)


def predicted_delta_ctcvr(model: ESMMModel, keywords: Sequence[str], texts: Sequence[str],
                          base_texts: Sequence[str]) -> float:
    """Eq. 10 offline: (mean predicted CTCVR of ``texts`` − that of ``base_texts``) / the latter, over the same
    keywords (``relate.delta_ctcvr``)."""
    if len(base_texts) != len(texts):
        raise ValueError(f"base_texts: expected one per text ({len(texts)}), got {len(base_texts)}")
    if not len(texts):
        raise ValueError("texts: expected at least one")
    return delta_ctcvr(float(np.mean(model.predict_ctcvr(keywords, texts))),
                       float(np.mean(model.predict_ctcvr(keywords, base_texts))))


# ------------------------------------------------------------------------------------ reward
CTCVR_MODES = ("absolute", "uplift", "relative")


@dataclass(kw_only=True, slots=True)
class CTCVRParams:
    """Parameters of the ``ctcvr`` reward."""

    mode: str = "absolute"
    """absolute: g(CTCVR(x, y)) (RELATE); uplift: g(CTCVR(x, y) − CTCVR(x, y_base)); relative: g of Eq. 10
    per sample, (CTCVR(x, y) − CTCVR(x, y_base)) / CTCVR(x, y_base)."""
    fields: list[str] = field(default_factory=lambda: ["title", "description"])
    """Parsed fields whose values, joined with ". ", are the generated text y."""
    base_key: str = "ad"
    """Meta key of the baseline y_base (uplift, relative): a mapping with the same fields, or a string."""
    keyword_key: str = "keyword"
    """Meta key of the keyword x (samples without one: not applicable, None)."""
    g: str = "identity"
    """g_t applied to the value: identity, scale, tanh or clip."""
    g_scale: float = 1.0
    """s of g_t."""

    def __post_init__(self):
        if self.mode not in CTCVR_MODES:
            raise ValueError(f"mode: expected one of {list(CTCVR_MODES)}, got {self.mode!r}")
        if not isinstance(self.fields, list) or not self.fields or any(
                not isinstance(f, str) or not f for f in self.fields):
            raise ValueError(f"fields: expected a non-empty list of parsed field names, got {self.fields!r}")
        for name in ("base_key", "keyword_key"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}: expected a non-empty meta key, got {value!r}")
        GTransform(kind=self.g, scale=self.g_scale)


class CTCVRReward:
    """The ``ctcvr`` reward bound to an ESMM model and a parser (see the module docstring)."""

    def __init__(self, params: CTCVRParams, model: ESMMModel, parse):
        self.p, self.model, self.parse = params, model, parse
        self.g = GTransform(kind=params.g, scale=params.g_scale)

    def base_text(self, row: Mapping[str, Any]) -> str | None:
        """y_base of a sample (None when its row has none)."""
        return base_text(row, self.p.base_key, self.p.fields)

    def __call__(self, prompts, completions, task, meta) -> RewardOutput:
        need_base = self.p.mode != "absolute"
        todo, kws, ys, bases = [], [], [], []
        for i, (text, row) in enumerate(zip(completions, meta)):
            kw = row.get(self.p.keyword_key)
            base = self.base_text(row) if need_base else None
            if not kw or (need_base and base is None):
                continue
            parsed = self.parse(task, text)
            todo.append(i)
            kws.append(str(kw))
            ys.append(None if parsed.errors else join_fields([parsed.fields.get(f) for f in self.p.fields]) or None)
            bases.append(base)
        values: list[float | None] = [None] * len(completions)
        if not todo:
            return RewardOutput(values)
        # one prediction per distinct (keyword, text): an unchanged rewrite scores exactly its baseline
        pairs = list(dict.fromkeys([(kws[j], y) for j, y in enumerate(ys) if y]
                                   + ([(k, b) for k, b in zip(kws, bases)] if need_base else [])))
        pred = dict(zip(pairs, self.model.predict_ctcvr([k for k, _ in pairs], [t for _, t in pairs]))) if pairs else {}
        for j, i in enumerate(todo):
            y_ctcvr = float(pred[(kws[j], ys[j])]) if ys[j] else 0.0  # an unshowable ad: CTCVR 0
            if self.p.mode == "absolute":
                m = y_ctcvr
            else:
                base_ctcvr = float(pred[(kws[j], bases[j])])
                m = y_ctcvr - base_ctcvr if self.p.mode == "uplift" else delta_ctcvr(y_ctcvr, base_ctcvr)
            values[i] = self.g(m)
        return RewardOutput(values)


@register("ctcvr", CTCVRParams, doc="predicted CTCVR (= CTR x CVR, shared-bottom ESMM model) of the generated text, "
                                    "absolute or against the baseline ad (RELATE)")
def build_ctcvr(params: CTCVRParams, resources: RewardResources) -> CTCVRReward:
    """CTCVR reward over ``resources.esmm_model``."""
    return CTCVRReward(params, resources.need("esmm_model", "ctcvr"), resources.need("parse", "ctcvr"))
