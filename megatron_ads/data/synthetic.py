"""Rule-labeled synthetic ads corpora a tiny model can learn — labeled by construction, honestly.

A small catalogue (categories with brands and products, cities, price levels) generates queries,
ads, user histories and keywords. Labels come from explicit rules, and the reasoning text is
generated from the same rules, so it is faithful to the label:

- query–ad relevance: different category -> bad; same category but a price-intent or brand
  conflict -> fair; otherwise good. Location: the query names a city and the ad serves another ->
  bad. Quality: an all-caps title, a broken URL or an empty description -> bad.
- ad–user: 3 if the ad's category is the user's most frequent one, 2 if it appears in the history,
  1 if it shares the category's group, else 0.
- keyword query generation: narrower queries in the same category (brand, price, "near me" refinements).

Size, seed, class balance (``match_rate``) and defect rate are configurable per dataset, so the
defect rate varies like the paper's datasets A–F. ``split`` gives deterministic train/val/test.

Two fixed corpora serve the RL rewards (``rewards/`` takes them as arguments; it never imports ``data``):

- ``ad_corpus``: the retrieval corpus of the recall@K reward (AdNanny Eq. 8) — one ad per (category,
  brand, item, price) = 144 ads, and per query_gen keyword (a category name) its relevant ads: the 18 ads
  of that category.
- ``click_logs``: impressions and clicks of (keyword, ad text) pairs whose true click probability
  ``true_ctr`` is a known function of keyword coverage, a call to action and the text length: what the
  frozen CTR model of the CTR-uplift reward is trained on, so tests can check reward and truth agree.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from megatron_ads.data.tasks import AD_USER, QUERY_AD, QUERY_GEN
from megatron_ads.runtime.io import write_text

CATALOGUE = {
    "running shoes": {"group": "sports", "brands": ["Nike", "Asics", "Brooks"], "items": ["trail runners", "racing flats"]},
    "hiking boots": {"group": "sports", "brands": ["Merrell", "Salomon", "Keen"], "items": ["waterproof boots", "mid boots"]},
    "tents": {"group": "sports", "brands": ["REI", "Coleman", "MSR"], "items": ["2 person tent", "family tent"]},
    "coffee beans": {"group": "food", "brands": ["Lavazza", "Illy", "Peets"], "items": ["espresso roast", "dark roast"]},
    "green tea": {"group": "food", "brands": ["Ito En", "Yamamotoyama", "Harney"], "items": ["matcha", "sencha"]},
    "laptops": {"group": "electronics", "brands": ["Dell", "Lenovo", "Apple"], "items": ["ultrabook", "gaming laptop"]},
    "headphones": {"group": "electronics", "brands": ["Sony", "Bose", "Sennheiser"], "items": ["noise cancelling headphones", "earbuds"]},
    "sofas": {"group": "home", "brands": ["Ikea", "Ashley", "Wayfair"], "items": ["sectional sofa", "sleeper sofa"]},
}
CITIES = ["seattle", "austin", "boston", "denver", "chicago"]
PRICE = {"cheap": "budget", "luxury": "premium"}


@dataclass(kw_only=True, slots=True)
class SyntheticConfig:
    """Size and difficulty of one synthetic dataset."""

    size: int = 1000
    """Rows per task."""
    seed: int = 0
    """Generator seed."""
    match_rate: float = 0.5
    """Probability that an ad is drawn from the query's (or user's) category: the class balance."""
    conflict_rate: float = 0.3
    """Probability of a price/brand conflict when categories match (-> fair)."""
    city_rate: float = 0.4
    """Probability that a query names a city (location can only be bad then)."""
    city_mismatch_rate: float = 0.4
    """When the query names a city: probability that the ad's city is drawn at random from all cities
    (so it differs with probability 4/5) instead of copied from the query. The location defect rate is
    city_rate · city_mismatch_rate · 4/5 (0.128 at the defaults)."""
    defect_rate: float = 0.15
    """Probability of an ad-quality defect."""
    label_noise: float = 0.0
    """Probability that a row's labels are replaced by random ones (annotator noise; the reasoning then
    no longer matches the input — use it to make a task deliberately harder, never for real data)."""

    def __post_init__(self):
        for name in ("match_rate", "conflict_rate", "city_rate", "city_mismatch_rate", "defect_rate", "label_noise"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {v}")
        if self.size < 1:
            raise ValueError(f"size: expected >= 1, got {self.size}")


def _make_ad(rng: random.Random, category: str, price: str, city: str, defect: str | None,
             brand: str | None = None, item: str | None = None) -> dict:
    c = CATALOGUE[category]
    brand, item = brand or rng.choice(c["brands"]), item or rng.choice(c["items"])
    # the category is named once (in the title); description and URL speak of the brand and item
    title = f"{brand} {item} - {PRICE.get(price, 'great')} {category}"
    desc = f"Shop {brand} {item} in {city}. {PRICE.get(price, 'fair').capitalize()} prices, fast shipping."
    slug = item.replace(" ", "-")
    url = f"https://www.{brand.lower().replace(' ', '')}.example.com/{slug}"
    if defect == "caps":
        title = title.upper()
    elif defect == "url":
        url = url.replace("https://", "htps//")
    elif defect == "empty":
        desc = ""
    return {"title": title, "description": desc, "url": url, "_brand": brand, "_category": category,
            "_price": price, "_city": city, "_defect": defect}


def query_ad_row(rng: random.Random, cfg: SyntheticConfig, idx: int) -> dict:
    qcat = rng.choice(sorted(CATALOGUE))
    qbrand = rng.choice(CATALOGUE[qcat]["brands"]) if rng.random() < 0.3 else None
    qprice = rng.choice(["cheap", "luxury"]) if rng.random() < 0.4 else None
    qcity = rng.choice(CITIES) if rng.random() < cfg.city_rate else None
    parts = [qprice, qbrand, qcat, f"in {qcity}" if qcity else None]
    query = " ".join(p for p in parts if p)
    same = rng.random() < cfg.match_rate
    acat = qcat if same else rng.choice([c for c in sorted(CATALOGUE) if c != qcat])
    conflict = same and rng.random() < cfg.conflict_rate
    aprice = ({"cheap": "luxury", "luxury": "cheap"}[qprice] if conflict and qprice else
              (qprice or rng.choice(["cheap", "luxury", "mid"])))
    abrand = None
    if same and qbrand:
        abrand = rng.choice([b for b in CATALOGUE[acat]["brands"] if b != qbrand]) if conflict else qbrand
    acity = qcity if (qcity and rng.random() < 1.0 - cfg.city_mismatch_rate) else rng.choice(CITIES)
    defect = rng.choice(["caps", "url", "empty"]) if rng.random() < cfg.defect_rate else None
    ad = _make_ad(rng, acat, aprice, acity, defect, brand=abrand)
    reasons = []
    if acat != qcat:
        relevance = "bad"
        reasons.append(f"The query asks for {qcat} but the ad sells {acat}, a different category.")
    else:
        reasons.append(f"The query and the ad are both about {qcat}.")
        price_conflict = qprice is not None and aprice in PRICE and aprice != qprice
        brand_conflict = qbrand is not None and ad["_brand"] != qbrand
        if price_conflict:
            reasons.append(f"The query wants {qprice} items but the ad is {PRICE[aprice]}, a price-intent conflict.")
        if brand_conflict:
            reasons.append(f"The query names {qbrand} but the ad is for {ad['_brand']}.")
        relevance = "fair" if (price_conflict or brand_conflict) else "good"
        if relevance == "good":
            reasons.append("Nothing in the ad conflicts with the query's intent.")
    # the location reasoning names both cities side by side, so the comparison the label rests on is spelled out
    if qcity and acity != qcity:
        location = "bad"
        reasons.append(f"Query city {qcity}, ad city {acity}: different cities.")
    elif qcity:
        location = "good"
        reasons.append(f"Query city {qcity}, ad city {acity}: the same city.")
    else:
        location = "good"
        reasons.append(f"The query names no city; the ad serves {acity}.")
    quality = "bad" if defect else "good"
    reasons.append({"caps": "The title is written in all caps.", "url": "The URL is broken.",
                    "empty": "The description is empty.", None: "The ad text and URL are well formed."}[defect])
    public_ad = {k: v for k, v in ad.items() if not k.startswith("_")}
    return {"id": f"qa{cfg.seed}-{idx}", "query": query, "ad": public_ad,
            "labels": {"relevance": relevance, "location": location, "quality": quality},
            "reasoning": " ".join(reasons)}


def ad_user_row(rng: random.Random, cfg: SyntheticConfig, idx: int) -> dict:
    fav = rng.choice(sorted(CATALOGUE))
    others = [c for c in sorted(CATALOGUE) if c != fav]
    history_cats = [fav] * rng.randint(2, 4) + rng.sample(others, rng.randint(0, 2))
    rng.shuffle(history_cats)
    events = [f"{rng.choice(['searched', 'clicked', 'viewed'])} {rng.choice(CATALOGUE[c]['items'])} ({c})"
              for c in history_cats]
    if rng.random() < cfg.match_rate:
        acat = fav if rng.random() < 0.6 else rng.choice(history_cats)
    else:
        acat = rng.choice(others)
    ad = {k: v for k, v in _make_ad(rng, acat, rng.choice(["cheap", "luxury", "mid"]), rng.choice(CITIES),
                                    None).items() if not k.startswith("_")}
    if acat == fav:
        score, why = 3, f"The ad is for {acat}, the user's most frequent interest."
    elif acat in history_cats:
        score, why = 2, f"The user has shown some interest in {acat}."
    elif CATALOGUE[acat]["group"] == CATALOGUE[fav]["group"]:
        score, why = 1, f"{acat} is related to the user's interest in {fav} ({CATALOGUE[fav]['group']})."
    else:
        score, why = 0, f"The user shows no interest in {acat} or anything like it."
    return {"id": f"au{cfg.seed}-{idx}", "history": events, "ad": ad, "score": score, "reasoning": why}


def query_gen_row(rng: random.Random, cfg: SyntheticConfig, idx: int) -> dict:
    cat = rng.choice(sorted(CATALOGUE))
    c = CATALOGUE[cat]
    brand = rng.choice(c["brands"])
    ad = {k: v for k, v in _make_ad(rng, cat, "mid", rng.choice(CITIES), None).items() if not k.startswith("_")}
    queries = [f"{brand} {cat}", f"cheap {cat}", f"{rng.choice(c['items'])} {cat}", f"{cat} near me"]
    rng.shuffle(queries)
    return {"id": f"qg{cfg.seed}-{idx}", "keyword": cat, "ad": ad, "queries": queries[:3],
            "reasoning": f"Narrower queries stay in {cat} and add a brand, a price or a location refinement."}


def _noisy_query_ad(rng: random.Random, row: dict) -> None:
    row["labels"] = {"relevance": rng.choice(["bad", "fair", "good"]), "location": rng.choice(["good", "bad"]),
                     "quality": rng.choice(["good", "bad"])}


def _noisy_ad_user(rng: random.Random, row: dict) -> None:
    row["score"] = rng.randint(0, 3)


Row = Callable[[random.Random, SyntheticConfig, int], dict]
GENERATORS: dict[str, tuple[Row, Callable[[random.Random, dict], None] | None]] = {
    QUERY_AD.name: (query_ad_row, _noisy_query_ad),
    AD_USER.name: (ad_user_row, _noisy_ad_user),
    QUERY_GEN.name: (query_gen_row, None),
}
"""Per task: the row generator and the label randomizer of ``label_noise`` (None: no labels to randomize)."""


def generate(task_name: str, cfg: SyntheticConfig) -> list[dict]:
    """``cfg.size`` rows of a task, deterministic in ``cfg.seed``."""
    if task_name not in GENERATORS:
        raise ValueError(f"task: synthetic data exists for {sorted(GENERATORS)}, got {task_name!r}")
    make, randomize = GENERATORS[task_name]
    rng = random.Random(f"{task_name}:{cfg.seed}")
    rows = [make(rng, cfg, i) for i in range(cfg.size)]
    if cfg.label_noise > 0:
        noise = random.Random(f"{task_name}:{cfg.seed}:noise")
        for row in rows:
            if noise.random() < cfg.label_noise:
                if randomize is not None:
                    randomize(noise, row)
                row["noisy_label"] = True
    return rows


# ------------------------------------------------------------------------------------ reward corpora
AD_PRICES = ("cheap", "mid", "luxury")
"""Price levels of the retrieval corpus (one ad per category x brand x item x price)."""


def ad_corpus(seed: int = 0) -> dict:
    """The fixed ad corpus of the recall@K reward, deterministic in ``seed`` (which only picks each ad's city).

    Returns ``{"ads": [{"id", "title", "description", "url", "category"}], "relevant": {keyword: [ad id]}}``:
    one well-formed ad per (category, brand, item, price) of ``CATALOGUE`` (8 x 3 x 2 x 3 = 144 ads, all
    texts distinct), and for each query_gen keyword (a category name) the ids of that category's ads (18).
    """
    rng = random.Random(f"ad_corpus:{seed}")
    ads, relevant = [], {}
    for cat in sorted(CATALOGUE):
        c = CATALOGUE[cat]
        for brand in c["brands"]:
            for item in c["items"]:
                for price in AD_PRICES:
                    ad = _make_ad(rng, cat, price, rng.choice(CITIES), None, brand=brand, item=item)
                    ad_id = f"ad{len(ads)}"
                    ads.append({"id": ad_id, "title": ad["title"], "description": ad["description"],
                                "url": ad["url"], "category": cat})
                    relevant.setdefault(cat, []).append(ad_id)
    return {"ads": ads, "relevant": relevant}


CTA_PHRASES = ("shop now", "buy now", "order today", "get yours today", "book now", "try it free")
"""Calls to action that raise the true click probability (``true_ctr``)."""
_WORD = re.compile(r"[\w']+")
_FILLERS = ("Fast shipping.", "Free returns.", "Top rated by customers.", "Limited stock.", "New season styles.",
            "Compare models and reviews.", "Trusted since 1990.", "Easy setup at home.")


def keyword_coverage(keyword: str, text: str) -> float:
    """Share of the keyword's words (lower-cased) that occur in ``text``: 0 when the keyword has none."""
    kw, words = _WORD.findall(keyword.lower()), set(_WORD.findall(text.lower()))
    return sum(w in words for w in kw) / len(kw) if kw else 0.0


def true_ctr(keyword: str, text: str) -> float:
    """The synthetic world's click probability of ad ``text`` shown for ``keyword``:
    ``sigmoid(-2 + 1.5·coverage + 1.0·cta - min(((chars - 80) / 50)², 2))`` — keyword coverage
    (``keyword_coverage``), a call to action from ``CTA_PHRASES`` (case-insensitive), and a length in
    characters near 80. Ranges from about 0.02 to 0.62."""
    low = text.lower()
    cta = any(p in low for p in CTA_PHRASES)
    length = min(((len(text) - 80) / 50) ** 2, 2.0)
    logit = -2.0 + 1.5 * keyword_coverage(keyword, text) + 1.0 * cta - length
    return 1.0 / (1.0 + math.exp(-logit))


def click_logs(n: int, seed: int = 0, impressions: int = 20) -> list[dict]:
    """``n`` synthetic click-log rows ``{"id", "keyword", "text", "impressions", "clicks", "p_click"}``,
    deterministic in ``seed``: an ad text (title + description, built from the catalogue with or without
    the category words, a call to action and 0–4 filler sentences) shown ``impressions`` times for a
    keyword (its own category 80 % of the time, another one otherwise); ``clicks`` ~ Binomial(impressions,
    ``true_ctr``), ``p_click`` the true probability (for evaluation only)."""
    if n < 1 or impressions < 1:
        raise ValueError(f"click_logs: expected n >= 1 and impressions >= 1, got n={n}, impressions={impressions}")
    rng = random.Random(f"click_logs:{seed}")
    cats = sorted(CATALOGUE)
    rows = []
    for i in range(n):
        cat = rng.choice(cats)
        c = CATALOGUE[cat]
        brand, item = rng.choice(c["brands"]), rng.choice(c["items"])
        title = rng.choice([f"{brand} {item}", f"{brand} {item} - {cat}", f"{cat} by {brand}",
                            f"{PRICE.get(rng.choice(AD_PRICES), 'great').capitalize()} {item}"])
        parts = rng.sample(_FILLERS, rng.randint(0, 4))
        if rng.random() < 0.5:
            parts.insert(rng.randint(0, len(parts)), rng.choice(CTA_PHRASES).capitalize() + rng.choice([".", "!"]))
        text = " ".join([title + "."] + parts)
        keyword = cat if rng.random() < 0.8 else rng.choice([x for x in cats if x != cat])
        p = true_ctr(keyword, text)
        clicks = sum(rng.random() < p for _ in range(impressions))
        rows.append({"id": f"cl{seed}-{i}", "keyword": keyword, "text": text, "impressions": impressions,
                     "clicks": clicks, "p_click": p})
    return rows


def split(rows: list[dict], val: float = 0.1, test: float = 0.1, seed: int = 0) -> dict[str, list[dict]]:
    """Deterministic train/val/test split."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val, n_test = int(len(rows) * val), int(len(rows) * test)
    return {"val": [rows[i] for i in order[:n_val]], "test": [rows[i] for i in order[n_val:n_val + n_test]],
            "train": [rows[i] for i in order[n_val + n_test:]]}


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    """Write rows atomically (keys in row order, unlike ``runtime.io.write_jsonl``)."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
