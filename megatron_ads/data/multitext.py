"""Synthetic "multitext" ad logs and Bradley–Terry pair mining (RLPF / AdLlama; spec ``papers_spec.md`` §B.3,
§C 28).

Multitext data: the same ad — keyword, category, brand, item, city, price, image, landing page: every
non-text field fixed — shown with several text variants. Each variant's true click probability is
``synthetic.true_ctr(keyword, text)`` (keyword coverage, a call to action, length near 80 characters), so a
variant with the category words, a call to action and a moderate length is truly better. Impressions are
drawn log-uniformly per variant and clicks ~ Binomial(impressions, true CTR) from one seeded
``random.Random``: observed CTRs are noisy, and noisier for fewer impressions. Optionally (``ad_effect``) each
ad also has a hidden CTR level of its own, shared by its variants, as real ads do.

``mine_pairs`` turns the logs into preference pairs (preferred = the higher observed CTR), only within one
ad, only between variants with at least ``min_impressions`` each, and only when the CTR gap reaches
``min_ctr_gap``: ``relative`` (default) (ctr_w − ctr_l) / ctr_l (infinite when ctr_l = 0 < ctr_w), or
``absolute`` ctr_w − ctr_l. Equal observed CTRs never make a pair. ``true_order_rate`` says how often the
mined preference agrees with the hidden truth (the ceiling of a reward model's pairwise accuracy).

Everything is deterministic in the seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import combinations
from typing import Literal

from megatron_ads.data.synthetic import AD_PRICES, CATALOGUE, CITIES, CTA_PHRASES, PRICE, split, true_ctr

__all__ = ["GapKind", "VARYING_FIELDS", "mine_pairs", "multitext_logs", "split_by_ad", "true_order_rate"]

GapKind = Literal["relative", "absolute"]
VARYING_FIELDS = ("id", "text", "impressions", "clicks", "ctr", "p_click")
"""Fields that differ between the rows of one ad (the text and its outcomes); every other field is fixed."""
_FILLERS = ("Free shipping on every order.", "Rated 4.8 by our customers.", "New arrivals every week.",
            "30-day returns.", "Limited time only.", "Trusted by thousands.", "Compare styles and sizes.",
            "Made to last.")


def _variant(rng: random.Random, ad: dict) -> str:
    brand, item, cat = ad["brand"], ad["item"], ad["category"]
    price = PRICE.get(ad["price"], "great").capitalize()
    title = rng.choice([f"{brand} {item}", f"{brand} {item} - {cat}", f"{cat} by {brand}", f"{price} {item}",
                        f"{item} in {ad['city'].capitalize()}"])
    parts = rng.sample(_FILLERS, rng.randint(0, 4))
    if rng.random() < 0.5:
        parts.insert(rng.randint(0, len(parts)), rng.choice(CTA_PHRASES).capitalize() + rng.choice([".", "!"]))
    return " ".join([title + "."] + parts)


def multitext_logs(n_ads: int, seed: int = 0, *, variants: tuple[int, int] = (2, 5),
                   impressions: tuple[int, int] = (50, 2000), ad_effect: float = 0.0) -> list[dict]:
    """Rows ``{"id", "ad_id", "keyword", "ad", "text", "impressions", "clicks", "ctr", "p_click"}``: ``n_ads``
    ads, each with a uniform number of distinct text variants in ``variants`` (inclusive), impressions
    log-uniform in ``impressions`` (inclusive), clicks ~ Binomial(impressions, p_click) with p_click =
    ``true_ctr(keyword, text)`` (hidden truth, for evaluation only), ``ctr`` = clicks / impressions.
    ``ad`` holds the fixed fields (category, brand, item, city, price, image, url). Deterministic in ``seed``.

    ``ad_effect`` (default 0: none): the std of a hidden per-ad logit offset o ~ N(0, ad_effect²) that every
    variant of the ad shares, p_click = σ(logit(true_ctr) + o): what the image, audience and placement do to
    an ad's CTR in real logs, which multitext pairs hold fixed (so it cancels within an ad: the order of an
    ad's variants is still that of ``true_ctr``). It is drawn from its own seeded stream: texts and
    impressions are the same for every ``ad_effect``."""
    lo_v, hi_v = variants
    lo_i, hi_i = impressions
    if n_ads < 1 or not 2 <= lo_v <= hi_v or not 1 <= lo_i <= hi_i:
        raise ValueError(f"multitext_logs: expected n_ads >= 1, 2 <= variants[0] <= variants[1], "
                         f"1 <= impressions[0] <= impressions[1]; got n_ads={n_ads}, variants={variants}, "
                         f"impressions={impressions}")
    if not (ad_effect >= 0 and math.isfinite(ad_effect)):
        raise ValueError(f"ad_effect: expected a finite std >= 0, got {ad_effect}")
    rng = random.Random(f"multitext:{seed}")
    ad_rng = random.Random(f"multitext-ad:{seed}")
    cats = sorted(CATALOGUE)
    rows = []
    for a in range(n_ads):
        cat = rng.choice(cats)
        c = CATALOGUE[cat]
        ad_id = f"mt{seed}-{a}"
        ad = {"category": cat, "brand": rng.choice(c["brands"]), "item": rng.choice(c["items"]),
              "city": rng.choice(CITIES), "price": rng.choice(AD_PRICES), "image": f"img-{ad_id}",
              "url": f"https://example.com/{ad_id}"}
        offset = ad_rng.gauss(0.0, ad_effect) if ad_effect > 0 else 0.0
        want, texts = rng.randint(lo_v, hi_v), []
        for _ in range(20 * hi_v):
            if len(texts) == want:
                break
            t = _variant(rng, ad)
            if t not in texts:
                texts.append(t)
        for v, text in enumerate(texts):
            n = int(round(math.exp(rng.uniform(math.log(lo_i), math.log(hi_i)))))
            n = min(max(n, lo_i), hi_i)
            p = true_ctr(cat, text)
            if offset:
                p = 1.0 / (1.0 + math.exp(-(math.log(p / (1.0 - p)) + offset)))
            clicks = sum(rng.random() < p for _ in range(n))
            rows.append({"id": f"{ad_id}-{v}", "ad_id": ad_id, "keyword": cat, "ad": dict(ad), "text": text,
                         "impressions": n, "clicks": clicks, "ctr": clicks / n, "p_click": p})
    return rows


def _gap(ctr_w: float, ctr_l: float, kind: GapKind) -> float:
    if kind == "absolute":
        return ctr_w - ctr_l
    return (ctr_w - ctr_l) / ctr_l if ctr_l > 0 else math.inf


def mine_pairs(rows: Sequence[dict], min_impressions: int = 100, min_ctr_gap: float = 0.1,
               gap: GapKind = "relative") -> list[dict]:
    """Preference pairs ``{"ad_id", "keyword", "ad", "chosen", "rejected", "chosen_id", "rejected_id",
    "chosen_ctr", "rejected_ctr", "gap", "chosen_p", "rejected_p"}`` (p: the hidden truth when rows carry
    ``p_click``, else None): every two variants of one ``ad_id`` with >= ``min_impressions`` impressions each,
    different texts, and an observed CTR (clicks / impressions) gap >= ``min_ctr_gap`` (``gap`` relative or
    absolute, see the module docstring); chosen = the higher CTR. Rows of one ad_id must agree on every
    field outside ``VARYING_FIELDS`` (ValueError otherwise). Pairs come in ad order, then variant order."""
    if min_impressions < 1:
        raise ValueError(f"min_impressions: expected >= 1, got {min_impressions}")
    if not (min_ctr_gap >= 0 and not math.isnan(min_ctr_gap)):
        raise ValueError(f"min_ctr_gap: expected >= 0, got {min_ctr_gap}")
    if gap not in ("relative", "absolute"):
        raise ValueError(f"gap: expected relative or absolute, got {gap!r}")
    by_ad: dict[str, list[dict]] = {}
    for r in rows:
        by_ad.setdefault(str(r["ad_id"]), []).append(r)
    pairs = []
    for ad_id, group in by_ad.items():
        fixed = {k: v for k, v in group[0].items() if k not in VARYING_FIELDS}
        for r in group[1:]:
            other = {k: v for k, v in r.items() if k not in VARYING_FIELDS}
            if other != fixed:
                raise ValueError(f"rows of ad_id {ad_id!r}: non-text fields differ ({r.get('id')!r}: {other} vs "
                                 f"{group[0].get('id')!r}: {fixed}; only {', '.join(VARYING_FIELDS)} may vary)")
        ok = [r for r in group if int(r["impressions"]) >= min_impressions]
        for a, b in combinations(ok, 2):
            if a["text"] == b["text"]:
                continue
            ca, cb = a["clicks"] / a["impressions"], b["clicks"] / b["impressions"]
            if ca == cb:
                continue
            w, l, cw, cl = (a, b, ca, cb) if ca > cb else (b, a, cb, ca)
            g = _gap(cw, cl, gap)
            if g < min_ctr_gap:
                continue
            pairs.append({"ad_id": ad_id, "keyword": w.get("keyword"), "ad": w.get("ad"),
                          "chosen": w["text"], "rejected": l["text"], "chosen_id": w.get("id"),
                          "rejected_id": l.get("id"), "chosen_ctr": cw, "rejected_ctr": cl, "gap": g,
                          "chosen_p": w.get("p_click"), "rejected_p": l.get("p_click")})
    return pairs


def true_order_rate(pairs: Sequence[dict]) -> float:
    """Share of pairs whose hidden true CTRs agree with the mined preference (chosen_p > rejected_p; ties ½)."""
    known = [p for p in pairs if p.get("chosen_p") is not None and p.get("rejected_p") is not None]
    if not known:
        raise ValueError("pairs: no pair carries the hidden truth (chosen_p / rejected_p)")
    return sum(1.0 if p["chosen_p"] > p["rejected_p"] else 0.5 if p["chosen_p"] == p["rejected_p"] else 0.0
               for p in known) / len(known)


def split_by_ad(rows: Sequence[dict], val: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, list[dict]]:
    """Deterministic train/val/test split by ``ad_id`` (all variants of an ad on one side), via
    ``synthetic.split`` over the sorted ad ids; works on log rows and on mined pairs."""
    ids = sorted({str(r["ad_id"]) for r in rows})
    parts = split([{"ad_id": i} for i in ids], val=val, test=test, seed=seed)
    where = {r["ad_id"]: name for name, rs in parts.items() for r in rs}
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for r in rows:
        out[where[str(r["ad_id"])]].append(r)
    return out
