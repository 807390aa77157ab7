"""The frozen CTR model and the predicted-CTR-uplift reward (AdNanny §4.3: ranking-oriented generation).

How it works:

- Features of a (keyword, ad text) pair: the frozen embedder's unit vectors e_k (keyword) and e_a (text),
  as ``[e_a, e_k ⊙ e_a, cos(e_k, e_a), coverage, chars/100, (chars/100)², words/20]`` (``features``):
  ``coverage`` is the share of the keyword's words found in the text. Nothing tells the model about calls
  to action: it learns them from the embedding.
- ``CTRNet``: a few-layer MLP (GELU) giving the click logit. ``train_ctr`` fits it with binary
  cross-entropy on click logs — rows ``{"keyword", "text", "impressions", "clicks"}`` (e.g.
  ``data.synthetic.click_logs``, handed in by the caller): the per-row click rate weighted by impressions,
  i.e. the same loss as one BCE term per impression — full batch, Adam, a few seconds on CPU,
  deterministic in ``CTRConfig.seed``.
- ``CTRModel.save(dir)`` writes ``model.safetensors`` (weights) and ``ctr_config.json`` (architecture,
  feature version, embedder, training summary); ``CTRModel.load(dir, embedder)`` reads them back. No pickle.
- The ``ctr_uplift`` reward (registered): r_j = g_t(CTR(x_j, y_j) − CTR(x_j, y_base,j)), x_j the
  keyword, y_j the completion's text fields (e.g. ``title`` + ``description`` of an ad rewrite), y_base
  the original (``meta["ad"]``). A malformed completion cannot be shown: its CTR counts as 0, so its
  reward is g_t(−CTR(x, y_base)). ``mode="batch"`` gives Eq. 8's batch mean instead (as recall@K).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from megatron_ads.rewards.registry import RewardOutput, RewardResources, register
from megatron_ads.rewards.retrieval import GTransform, MiniLMEmbedder, eq8_values
from megatron_ads.runtime.io import write_text

FEATURE_VERSION = 1
"""Version of ``features``' layout, stored with the weights (a mismatch refuses to load)."""
_WORD = re.compile(r"[\w']+")
CONFIG_FILE, WEIGHTS_FILE = "ctr_config.json", "model.safetensors"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def cheap_features(keyword: str, text: str) -> list[float]:
    """[coverage, chars/100, (chars/100)², words/20] of a (keyword, text) pair."""
    kw, words = _words(keyword), _words(text)
    cover = sum(w in set(words) for w in kw) / len(kw) if kw else 0.0
    c = len(text) / 100.0
    return [cover, c, c * c, len(words) / 20.0]


def features(embedder, keywords: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """The model's input [N, 2·D + 5] (float32) for N (keyword, text) pairs."""
    if len(keywords) != len(texts):
        raise ValueError(f"keywords: expected one per text ({len(texts)}), got {len(keywords)}")
    e_k, e_a = embedder(list(keywords)), embedder(list(texts))
    cos = (e_k * e_a).sum(1, keepdims=True)
    cheap = np.array([cheap_features(k, t) for k, t in zip(keywords, texts)], dtype=np.float32).reshape(-1, 4)
    return np.concatenate([e_a, e_k * e_a, cos, cheap], axis=1).astype(np.float32)


@dataclass(kw_only=True, slots=True)
class CTRConfig:
    """Architecture and training of the frozen CTR model."""

    hidden: list[int] = field(default_factory=lambda: [64, 32])
    """Hidden widths of the MLP (one GELU layer each)."""
    epochs: int = 300
    """Full-batch Adam steps."""
    lr: float = 3e-3
    """Adam learning rate."""
    weight_decay: float = 1e-4
    """Adam (decoupled) weight decay."""
    seed: int = 0
    """Initialization seed (training is deterministic in it)."""

    def __post_init__(self):
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden: expected a non-empty list of widths >= 1, got {self.hidden!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs: expected >= 1, got {self.epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: expected > 0, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: expected >= 0, got {self.weight_decay!r}")


class CTRNet(torch.nn.Module):
    """MLP: features -> click logit."""

    def __init__(self, in_dim: int, hidden: Sequence[int]):
        super().__init__()
        layers, d = [], in_dim
        for h in hidden:
            layers += [torch.nn.Linear(d, h), torch.nn.GELU()]
            d = h
        layers.append(torch.nn.Linear(d, 1))
        self.mlp = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


def save_model_dir(out_dir: str | Path, net: torch.nn.Module, config_file: str, meta: dict) -> Path:
    """A frozen reward model's directory: ``net``'s weights as ``model.safetensors`` (no pickle) and ``meta``
    plus the feature version as ``config_file`` (JSON). Returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / WEIGHTS_FILE))
    write_text(out / config_file, json.dumps({"feature_version": FEATURE_VERSION, **meta}, indent=2) + "\n")
    return out


def read_model_dir(model_dir: str | Path, config_file: str, what: str) -> tuple[Path, dict]:
    """``(dir, meta)`` of a directory ``save_model_dir`` wrote; errors name the missing file or a feature
    version this code does not compute (``what``: e.g. "a CTR model", for the message)."""
    d = Path(model_dir)
    for name in (config_file, WEIGHTS_FILE):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name}: missing ({what} directory holds {config_file} and {WEIGHTS_FILE})")
    meta = json.loads((d / config_file).read_text())
    if meta.get("feature_version") != FEATURE_VERSION:
        raise ValueError(f"{d / config_file}: feature_version {meta.get('feature_version')!r}, "
                         f"this code computes version {FEATURE_VERSION}")
    return d, meta


class CTRModel:
    """A frozen CTR model: ``predict(keywords, texts)`` -> click probabilities."""

    def __init__(self, net: CTRNet, cfg: CTRConfig, embedder, in_dim: int, summary: dict | None = None):
        self.net = net.eval().requires_grad_(False)
        self.cfg, self.embedder, self.in_dim = cfg, embedder, in_dim
        self.summary = dict(summary or {})

    def predict(self, keywords: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Predicted click probability of each (keyword, text) pair [N] (float64)."""
        if not len(texts):
            return np.zeros(0)
        x = torch.from_numpy(features(self.embedder, keywords, texts))
        with torch.inference_mode():
            return torch.sigmoid(self.net(x)).double().numpy()

    def save(self, out_dir: str | Path) -> Path:
        """Write ``model.safetensors`` and ``ctr_config.json`` into ``out_dir``; returns it."""
        return save_model_dir(out_dir, self.net, CONFIG_FILE, {
            "in_dim": self.in_dim, "config": asdict(self.cfg),
            "embedder": str(getattr(self.embedder, "path", "")), "summary": self.summary})

    @classmethod
    def load(cls, model_dir: str | Path, embedder=None) -> "CTRModel":
        """A model ``save`` wrote (``embedder``: the same frozen embedder; None: the packaged MiniLM)."""
        d, meta = read_model_dir(model_dir, CONFIG_FILE, "a CTR model")
        cfg = CTRConfig(**meta["config"])
        net = CTRNet(int(meta["in_dim"]), cfg.hidden)
        net.load_state_dict(load_file(str(d / WEIGHTS_FILE)))
        return cls(net, cfg, embedder if embedder is not None else MiniLMEmbedder(), int(meta["in_dim"]),
                   meta.get("summary"))


def train_ctr(rows: Sequence[Mapping[str, Any]], embedder, cfg: CTRConfig | None = None) -> CTRModel:
    """Fit a CTR model on click-log rows ``{"keyword", "text", "impressions", "clicks"}`` (BCE on the click
    rate, weighted by impressions); deterministic in ``cfg.seed``."""
    cfg = cfg or CTRConfig()
    if not rows:
        raise ValueError("rows: expected at least one click-log row")
    for i, r in enumerate(rows):
        for key in ("keyword", "text", "impressions", "clicks"):
            if key not in r:
                raise ValueError(f"rows[{i}].{key}: missing")
        if not 0 <= r["clicks"] <= r["impressions"] or r["impressions"] < 1:
            raise ValueError(f"rows[{i}]: expected 0 <= clicks <= impressions and impressions >= 1, "
                             f"got clicks={r['clicks']}, impressions={r['impressions']}")
    t0 = time.perf_counter()
    x = torch.from_numpy(features(embedder, [r["keyword"] for r in rows], [r["text"] for r in rows]))
    imp = torch.tensor([float(r["impressions"]) for r in rows])
    y = torch.tensor([float(r["clicks"]) for r in rows]) / imp
    w = imp / imp.sum()
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        net = CTRNet(x.shape[1], cfg.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    for _ in range(cfg.epochs):
        opt.zero_grad(set_to_none=True)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(net(x), y, reduction="none") * w).sum()
        loss.backward()
        opt.step()
    summary = {"rows": len(rows), "impressions": int(imp.sum()), "final_bce": float(loss.detach()),
               "seconds": round(time.perf_counter() - t0, 3)}
    return CTRModel(net, cfg, embedder, x.shape[1], summary)


# ------------------------------------------------------------------------------------ reward
@dataclass(kw_only=True, slots=True)
class CTRParams:
    """Parameters of the ``ctr_uplift`` reward."""

    fields: list[str] = field(default_factory=lambda: ["title", "description"])
    """Parsed fields whose values, joined with ". ", are the generated text y."""
    base_key: str = "ad"
    """Meta key of the baseline y_base: a mapping with the same fields, or a string."""
    keyword_key: str = "keyword"
    """Meta key of the keyword x (samples without one: not applicable, None)."""
    mode: str = "per_sample"
    """per_sample, or batch (Eq. 8: mean uplift of the batch, the same value for each member)."""
    batch_by: str | None = "rollout"
    """batch mode: the meta key forming the batches (None: the whole call is one batch)."""
    g: str = "identity"
    """g_t: identity, scale, tanh or clip."""
    g_scale: float = 1.0
    """s of g_t."""

    def __post_init__(self):
        if not self.fields:
            raise ValueError("fields: expected at least one parsed field name")
        if self.mode not in ("per_sample", "batch"):
            raise ValueError(f"mode: expected one of ['per_sample', 'batch'], got {self.mode!r}")
        GTransform(kind=self.g, scale=self.g_scale)


def join_fields(parts: Sequence[Any]) -> str:
    return ". ".join(str(p).strip().rstrip(".") for p in parts if p is not None and str(p).strip())



def base_text(row: Mapping[str, Any], base_key: str, fields: Sequence[str]) -> str | None:
    """y_base of a sample: ``row[base_key]``'s ``fields`` joined (a mapping) or the string itself; None when
    the row has none (shared by the CTR and CTCVR rewards)."""
    base = row.get(base_key)
    if isinstance(base, Mapping):
        return join_fields([base.get(f) for f in fields]) or None
    return str(base) if isinstance(base, str) and base.strip() else None

class CTRUpliftReward:
    """The ``ctr_uplift`` reward bound to a CTR model and a parser (see the module docstring)."""

    def __init__(self, params: CTRParams, model: CTRModel, parse):
        self.p, self.model, self.parse = params, model, parse
        self.g = GTransform(kind=params.g, scale=params.g_scale)

    def base_text(self, row: Mapping[str, Any]) -> str | None:
        """y_base of a sample (None when its row has none)."""
        return base_text(row, self.p.base_key, self.p.fields)

    def __call__(self, prompts, completions, task, meta) -> RewardOutput:
        todo, kws, ys, bases = [], [], [], []
        for i, (text, row) in enumerate(zip(completions, meta)):
            kw, base = row.get(self.p.keyword_key), self.base_text(row)
            if not kw or base is None:
                continue
            parsed = self.parse(task, text)
            y = None if parsed.errors else join_fields([parsed.fields.get(f) for f in self.p.fields])
            todo.append(i)
            kws.append(str(kw))
            ys.append(y)
            bases.append(base)
        per: list[tuple[float, float] | None] = [None] * len(completions)
        if todo:
            base_ctr = self.model.predict(kws, bases)
            shown = [j for j, y in enumerate(ys) if y]
            y_ctr = np.zeros(len(todo))
            if shown:
                y_ctr[shown] = self.model.predict([kws[j] for j in shown], [ys[j] for j in shown])
            for j, i in enumerate(todo):
                per[i] = (float(y_ctr[j]), float(base_ctr[j]))
        return RewardOutput(eq8_values(per, meta, self.p.mode, self.p.batch_by, self.g))


@register("ctr_uplift", CTRParams, doc="predicted CTR of the generated text minus that of the baseline (frozen model)")
def build_ctr(params: CTRParams, resources: RewardResources) -> CTRUpliftReward:
    """CTR-uplift reward over ``resources.ctr_model``."""
    return CTRUpliftReward(params, resources.need("ctr_model", "ctr_uplift"), resources.need("parse", "ctr_uplift"))
