"""Synthetic conversion logs: impressions, clicks and conversions of (keyword, ad text) pairs whose true click
and conversion probabilities are known functions of the text (RELATE's CTCVR reward; spec ``papers_spec.md``
§B.2, §C 26).

The synthetic world's funnel, per impression of ad ``text`` for ``keyword``:

- click with probability ``synthetic.true_ctr(keyword, text)`` (keyword coverage, a call to action, length
  near 80 characters);
- after a click, convert with probability ``true_cvr(keyword, text)``: a *different* function of the text —
  a brand of the keyword's category named, an explicit price (``$49``), trust signals (free returns,
  warranty, ratings) raise it; a freebie call to action (``try it free``) lowers it although it raises the
  click probability. So the text that maximizes CTR is not the one that maximizes CTCVR = CTR·CVR, which is
  what the entire-space (ESMM) model of ``rewards.esmm`` has to learn.

``conversion_logs`` draws rows ``{"id", "keyword", "text", "impressions", "clicks", "conversions", "p_click",
"p_convert"}``: impressions log-uniform in a range, clicks ~ Binomial(impressions, p_click), conversions ~
Binomial(clicks, p_convert) — conversions are only observed after clicks, as in real logs — from one seeded
``random.Random``: deterministic in the seed. ``p_click`` / ``p_convert`` are the hidden truth (evaluation only).
"""

from __future__ import annotations

import math
import random
import re

from megatron_ads.data.synthetic import AD_PRICES, CATALOGUE, CITIES, CTA_PHRASES, PRICE, true_ctr

__all__ = ["FREEBIE_PHRASES", "PRICE_RANGES", "TRUST_PHRASES", "conversion_logs", "cvr_factors", "true_cvr"]

TRUST_PHRASES = ("free returns", "30-day returns", "free shipping", "warranty", "rated 4.8", "trusted by")
"""Trust signals that raise the true conversion probability (each distinct one counts, at most 2)."""
FREEBIE_PHRASES = ("try it free", "free trial", "free sample")
"""Freebie calls to action: they draw clicks (``try it free`` is a CTA) but lower the conversion probability."""
PRICE_RANGES = {"cheap": (19, 49), "mid": (59, 149), "luxury": (199, 499)}
"""Dollar amounts an explicit price sentence quotes, per price level (inclusive)."""
_PRICE = re.compile(r"\$\s?\d")
_FILLERS = ("Free returns.", "30-day returns.", "Free shipping on every order.", "2-year warranty.",
            "Rated 4.8 by our customers.", "Trusted by thousands.", "New arrivals every week.",
            "Compare styles and sizes.", "Made to last.", "Limited time only.")
_PRICE_SENTENCES = ("From ${p}.", "Only ${p}.", "Now ${p}.")
# true_cvr's logit: bias and weights (documented in true_cvr's docstring)
_B0, _W_BRAND, _W_PRICE, _W_TRUST, _W_FREEBIE = -2.5, 1.2, 1.0, 0.5, -1.5


def _has_word(phrase: str, low: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(phrase.lower()) + r"(?!\w)", low) is not None


def cvr_factors(keyword: str, text: str) -> dict[str, float]:
    """The inputs of ``true_cvr``: ``brand`` (1 when the text names a brand of the keyword's category in
    ``CATALOGUE``; 0 for any other keyword), ``price`` (1 for an explicit dollar amount), ``trust`` (distinct
    ``TRUST_PHRASES``, capped at 2), ``freebie`` (1 for any of ``FREEBIE_PHRASES``); case-insensitive."""
    low = text.lower()
    cat = CATALOGUE.get(keyword.strip().lower())
    brand = float(bool(cat) and any(_has_word(b, low) for b in cat["brands"]))
    return {"brand": brand, "price": float(_PRICE.search(text) is not None),
            "trust": float(min(sum(p in low for p in TRUST_PHRASES), 2)),
            "freebie": float(any(p in low for p in FREEBIE_PHRASES))}


def true_cvr(keyword: str, text: str) -> float:
    """The synthetic world's post-click conversion probability of ad ``text`` shown for ``keyword``:
    ``sigmoid(-2.5 + 1.2·brand + 1.0·price + 0.5·trust - 1.5·freebie)`` with the factors of ``cvr_factors``
    (brand of the keyword's category named, explicit price, trust signals ≤ 2, freebie call to action).
    Ranges from about 0.018 to 0.67; independent of length and keyword coverage (which drive ``true_ctr``)."""
    f = cvr_factors(keyword, text)
    logit = _B0 + _W_BRAND * f["brand"] + _W_PRICE * f["price"] + _W_TRUST * f["trust"] + _W_FREEBIE * f["freebie"]
    return 1.0 / (1.0 + math.exp(-logit))


def _text(rng: random.Random, cat: str) -> str:
    c = CATALOGUE[cat]
    brand, item, level = rng.choice(c["brands"]), rng.choice(c["items"]), rng.choice(AD_PRICES)
    title = rng.choice([f"{brand} {item}", f"{brand} {item} - {cat}", f"{cat} by {brand}",
                        f"{PRICE.get(level, 'great').capitalize()} {item}",
                        f"{item} in {rng.choice(CITIES).capitalize()}"])
    parts = rng.sample(_FILLERS, rng.randint(0, 3))
    if rng.random() < 0.4:
        lo, hi = PRICE_RANGES[level]
        parts.insert(rng.randint(0, len(parts)), rng.choice(_PRICE_SENTENCES).format(p=rng.randint(lo, hi)))
    if rng.random() < 0.5:
        parts.insert(rng.randint(0, len(parts)), rng.choice(CTA_PHRASES).capitalize() + rng.choice([".", "!"]))
    return " ".join([title + "."] + parts)


def conversion_logs(n: int, seed: int = 0, *, impressions: tuple[int, int] = (50, 2000),
                    off_keyword: float = 0.2) -> list[dict]:
    """``n`` rows ``{"id", "keyword", "text", "impressions", "clicks", "conversions", "p_click", "p_convert"}``,
    deterministic in ``seed``: an ad text built from the catalogue (a title with or without the brand, the
    category words or a price word; 0–3 filler / trust sentences; an explicit price 40 % of the time; a call to
    action from ``synthetic.CTA_PHRASES`` 50 % of the time), shown for its own category as keyword, or another
    one with probability ``off_keyword``; impressions log-uniform in ``impressions`` (inclusive); clicks ~
    Binomial(impressions, p_click = ``true_ctr``); conversions ~ Binomial(clicks, p_convert = ``true_cvr``)."""
    lo_i, hi_i = impressions
    if n < 1 or not 1 <= lo_i <= hi_i or not 0.0 <= off_keyword <= 1.0:
        raise ValueError(f"conversion_logs: expected n >= 1, 1 <= impressions[0] <= impressions[1], "
                         f"0 <= off_keyword <= 1; got n={n}, impressions={impressions}, off_keyword={off_keyword}")
    rng = random.Random(f"conversion_logs:{seed}")
    cats = sorted(CATALOGUE)
    rows = []
    for i in range(n):
        cat = rng.choice(cats)
        text = _text(rng, cat)
        keyword = rng.choice([x for x in cats if x != cat]) if rng.random() < off_keyword else cat
        imp = min(max(int(round(math.exp(rng.uniform(math.log(lo_i), math.log(hi_i))))), lo_i), hi_i)
        p_click, p_convert = true_ctr(keyword, text), true_cvr(keyword, text)
        clicks = sum(rng.random() < p_click for _ in range(imp))
        conversions = sum(rng.random() < p_convert for _ in range(clicks))
        rows.append({"id": f"cv{seed}-{i}", "keyword": keyword, "text": text, "impressions": imp, "clicks": clicks,
                     "conversions": conversions, "p_click": p_click, "p_convert": p_convert})
    return rows
