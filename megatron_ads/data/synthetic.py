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
- ad rewriting: a flawed ad for a keyword and a rule-written rewrite (keyword in a ≤ 30-character headline, a
  call to action, the text near the length ``true_ctr`` favours); ``truth`` holds the true CTR of both.
  Optionally (``noisy_rewrite_rate``) some source ads carry an exaggerated claim that half of their rewrites
  keep, and half repeat their call to action: the noisy copy RELATE's rewards penalize.
- user-history query generation and user profiles: histories of 1–2 interest categories (2+ events each),
  one-off categories, and cart / review / price / city / hide events; ``truth`` (query generation) holds the
  interests and which words are relevant, the gold profile is the true interests / intents / constraints.
- evaluation reports: two labelers with hidden skills label 4–6 items with gold; ``truth`` holds each one's
  skill, correct count and accuracy on the set, and the better one.
- AutoEval judge (``ad_judge``): an ad copy for a keyword scored 0–5 on one criterion by rule (relevance: the
  category, group, brand and whether the category is named; generalization: 5 minus the narrowing details);
  ``truth`` holds both criteria's scores.

Every row of the generation tasks keeps its hidden ground truth, so metrics (``eval``) and rewards can be
checked against it.

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

from megatron_ads.data.tasks import (AD_JUDGE, AD_LIMITS, AD_REWRITE, AD_USER, EVAL_REPORT, JUDGE_CRITERIA, LABELERS,
                                     QUERY_AD, QUERY_GEN, USER_PROFILE, USER_QUERIES, USER_QUERY_GEN)
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
    noisy_rewrite_rate: float = 0.0
    """ad_rewrite only: probability that a row's source ad carries an exaggerated claim (``RISKY_CLAIMS``: words
    of RELATE's default blacklist); its rewrite then keeps the claim with probability 1/2 and repeats its call
    to action with probability 1/2 (independently): noisy historical rewrites, what RELATE's RL must clean
    up (``benchmarks/relate_tiny.py``). 0 leaves every row as it is without the knob."""

    def __post_init__(self):
        for name in ("match_rate", "conflict_rate", "city_rate", "city_mismatch_rate", "defect_rate", "label_noise",
                     "noisy_rewrite_rate"):
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


# ------------------------------------------------------------------------------------ AdNanny §2 tasks
def ad_text(title: str, description: str) -> str:
    """The text of an ad as ``true_ctr`` and the CTR reward read it: title and description joined with ". "."""
    return ". ".join(p.strip().rstrip(".") for p in (title, description) if p and p.strip())


def ad_rewrite_row(rng: random.Random, cfg: SyntheticConfig, idx: int) -> dict:
    """An ad with typical flaws (headline over the limit, keyword missing, no call to action, too short or too
    long) for a keyword, and the rule-written rewrite: headline ``brand + category`` (≤ 30 characters, covers the
    keyword), a description with the item, filler sentences and a call to action, sized so the ad text is near
    the 80 characters ``true_ctr`` favours and within the description limit. ``truth`` holds the true CTR of the
    original and of the rewrite (``true_ctr(keyword, ad_text(title, description))``) and the original's keyword
    coverage; any rewrite's truth is ``true_ctr`` of its text.

    ``cfg.noisy_rewrite_rate`` > 0: a noisy row (SyntheticConfig) draws from its own RNG (seeded by seed and
    row index), so the other rows, and the clean parts of a noisy one, are those of the rate 0; a noisy row's
    ``truth["noise"]`` holds ``{"claim", "kept", "repeated"}``."""
    lim = dict(AD_LIMITS)
    cat = rng.choice(sorted(CATALOGUE))
    c = CATALOGUE[cat]
    brand, item = rng.choice(c["brands"]), rng.choice(c["items"])
    keyword = f"{brand.lower()} {cat}" if rng.random() < 0.3 else cat
    title = rng.choice([f"{brand} {item} - {PRICE.get(rng.choice(AD_PRICES), 'great')} {cat}", f"{brand} {item}",
                        f"The best {item} from {brand} for everyone", f"{brand} {cat}", f"{item.capitalize()} sale"])
    parts = rng.sample(_FILLERS, rng.randint(0, 5))
    if rng.random() < 0.3:
        parts.insert(rng.randint(0, len(parts)), rng.choice(CTA_PHRASES).capitalize() + ".")
    noise = None
    if cfg.noisy_rewrite_rate > 0:
        nrng = random.Random(f"ad_rewrite:noise:{cfg.seed}:{idx}")
        if nrng.random() < cfg.noisy_rewrite_rate:
            claim = nrng.choice(RISKY_CLAIMS)
            parts = list(parts)
            parts.insert(nrng.randint(0, len(parts)), claim)
            noise = {"claim": claim, "kept": nrng.random() < 0.5, "repeated": nrng.random() < 0.5}
    desc = " ".join([f"{item.capitalize()} by {brand}."] + parts)
    original = ad_text(title, desc)
    low = original.lower()
    cov, cta = keyword_coverage(keyword, original), any(x in low for x in CTA_PHRASES)
    # the rewrite: keyword in the headline, a call to action, the text near 80 characters
    new_title = f"{brand} {cat}"
    call = rng.choice(CTA_PHRASES).capitalize() + "!"
    fill, budget = rng.sample(_FILLERS, len(_FILLERS)), 80 - len(new_title) - 2
    body = [f"{item.capitalize()} by {brand}."]
    if noise is not None:  # a noisy rewrite: the source's claim kept, the call to action said twice
        body += [noise["claim"]] if noise["kept"] else []
        call = f"{call} {call}" if noise["repeated"] else call
    for f in fill:
        if len(" ".join(body + [f, call])) <= min(budget, lim["description"]):
            body.append(f)
    new_desc = " ".join(body + [call])
    reasons = [f"The headline has {len(title)} characters, " +
               (f"over the {lim['title']} limit." if len(title) > lim["title"] else
                f"within the {lim['title']} limit."),
               f"The description has {len(desc)} characters, " +
               (f"over the {lim['description']} limit." if len(desc) > lim["description"] else
                f"within the {lim['description']} limit."),
               {1.0: f"The ad already names the keyword '{keyword}'.", 0.0: f"The keyword '{keyword}' is missing."}.get(
                   cov, f"The keyword '{keyword}' is only partly covered."),
               "It has a call to action." if cta else "There is no call to action.",
               f"The ad text is {len(original)} characters; about 80 reads best."]
    changes = ([] if cov == 1.0 else ["adds the keyword"]) + \
        ([] if len(title) <= lim["title"] else ["shortens the headline"]) + ([] if cta else ["adds a call to action"])
    changes.append("trims the text" if len(original) > 90 else "fills out the text" if len(original) < 70 else
                   "keeps the length")
    rationale = "Same purchase intent; " + ", ".join(changes) + "."
    rewrite = {"rationale": rationale, "title": new_title, "description": new_desc}
    truth = {"ctr_original": true_ctr(keyword, original),
             "ctr_rewrite": true_ctr(keyword, ad_text(new_title, new_desc)), "coverage_original": cov}
    if noise is not None:
        truth["noise"] = noise
    return {"id": f"ar{cfg.seed}-{idx}", "keyword": keyword, "ad": {"title": title, "description": desc},
            "limits": lim, "rewrite": rewrite, "reasoning": " ".join(reasons), "truth": truth}


def category_words(category: str) -> list[str]:
    """The words of a category's vocabulary (its name, brands, items), lower-cased and sorted; no word belongs
    to two categories of ``CATALOGUE``."""
    c = CATALOGUE[category]
    return sorted(set(_WORD.findall(" ".join([category, *c["brands"], *c["items"]]).lower())))


def _interests(rng: random.Random) -> tuple[list[str], list[str]]:
    """1–2 interest categories and 0–2 one-off categories (sorted, disjoint)."""
    cats = sorted(CATALOGUE)
    interests = sorted(rng.sample(cats, rng.randint(1, 2)))
    once = sorted(rng.sample([x for x in cats if x not in interests], rng.randint(0, 2)))
    return interests, once


def _event(rng: random.Random, cat: str) -> str:
    c = CATALOGUE[cat]
    brand, item = rng.choice(c["brands"]), rng.choice(c["items"])
    return rng.choice([f"searched {brand.lower()} {item}", f"clicked an ad for {brand} {cat}", f"viewed {item}",
                       f"searched {cat}"])


def user_query(rng: random.Random, cat: str) -> str:
    """One search query in category ``cat`` (a brand + item, price, "near me", "best" or "reviews" refinement):
    the templates of ``user_query_gen_row``'s queries."""
    c = CATALOGUE[cat]
    return rng.choice([f"{rng.choice(c['brands']).lower()} {rng.choice(c['items'])}", f"cheap {cat}",
                       f"{cat} near me", f"best {rng.choice(c['items'])}", f"{rng.choice(c['items'])} reviews"])


def user_query_gen_row(rng: random.Random, cfg: SyntheticConfig, idx: int) -> dict:
    """A user history (2–3 events per interest category, one event per one-off category) and the user's next
    ``USER_QUERIES`` queries, spread over the interests (brand, price, location or item refinements). ``truth``:
    the true ``interests``, ``interest_words`` (each interest's vocabulary), ``relevant_words`` (their union: a
    word of a query is relevant iff it is one of them — TPPO's word labels) and ``off_topic_words`` (every other
    category's vocabulary). A query is relevant iff it has a relevant word and no off-topic word; it addresses
    an interest when it has a word of that interest."""
    interests, once = _interests(rng)
    counts = {cat: rng.randint(2, 3) for cat in interests}
    events = [_event(rng, cat) for cat in interests for _ in range(counts[cat])] + [_event(rng, cat) for cat in once]
    rng.shuffle(events)
    queries: list[str] = []
    while len(queries) < USER_QUERIES:
        q = user_query(rng, interests[len(queries) % len(interests)])
        if q not in queries:
            queries.append(q)
    by_interest = {cat: category_words(cat) for cat in interests}
    relevant = sorted({w for ws in by_interest.values() for w in ws})
    off = sorted({w for cat in sorted(CATALOGUE) if cat not in interests for w in category_words(cat)})
    seen = "; ".join(f"{cat} {counts[cat]} times" for cat in interests)
    reasoning = (f"The user acted on {seen}." +
                 (f" {' and '.join(once)} appear{'s' if len(once) == 1 else ''} once, a one-off." if once else "") +
                 f" The next queries stay in {' and '.join(interests)}.")
    return {"id": f"uq{cfg.seed}-{idx}", "history": events, "n_queries": USER_QUERIES, "queries": queries,
            "reasoning": reasoning,
            "truth": {"interests": interests, "interest_words": by_interest, "relevant_words": relevant,
                      "off_topic_words": off}}


def user_profile_row(rng: random.Random, cfg: SyntheticConfig, idx: int) -> dict:
    """A user history and the user's true profile, by rule: ``interests`` = the categories with 2 or more events
    (one-off categories are not interests); ``intents`` ⊆ {purchase (an add-to-cart or a purchase), research
    (reviews read or brands compared)}, else [browse]; ``constraints`` ⊆ {budget | premium (a cheap / luxury
    search), near <city> (a search in a city), avoid <category> (hid that category's ads)}. Lists are sorted."""
    interests, once = _interests(rng)
    events = [_event(rng, cat) for cat in interests for _ in range(2)] + [_event(rng, cat) for cat in once]
    intents, constraints, why = [], [], []
    cat = rng.choice(interests)
    c = CATALOGUE[cat]
    if rng.random() < 0.5:
        events.append(rng.choice([f"added {rng.choice(c['brands'])} {rng.choice(c['items'])} to cart",
                                  f"purchased {rng.choice(c['brands'])} {rng.choice(c['items'])}"]))
        intents.append("purchase")
        why.append("A cart or purchase event shows purchase intent.")
    if rng.random() < 0.5:
        b1, b2 = rng.sample(c["brands"], 2)
        events.append(rng.choice([f"read {rng.choice(c['items'])} reviews", f"compared {b1} and {b2} {cat}"]))
        intents.append("research")
        why.append("Reading reviews or comparing brands shows research intent.")
    if not intents:
        intents.append("browse")
        why.append("No cart, purchase or review events: the user is browsing.")
    price = rng.choice([None, None, "cheap", "luxury"])
    if price:
        events.append(f"searched {price} {cat}")
        constraints.append(PRICE[price])
        why.append(f"A {price} search sets a {PRICE[price]} price constraint.")
    if rng.random() < 0.3:
        city = rng.choice(CITIES)
        events.append(f"searched {cat} in {city}")
        constraints.append(f"near {city}")
        why.append(f"A search in {city} sets a location constraint.")
    if rng.random() < 0.3:
        avoid = rng.choice([x for x in sorted(CATALOGUE) if x not in interests and x not in once])
        events.append(f"hid {avoid} ads")
        constraints.append(f"avoid {avoid}")
        why.append(f"Hiding {avoid} ads means {avoid} should be avoided.")
    rng.shuffle(events)
    profile = {"interests": interests, "intents": sorted(intents), "constraints": sorted(constraints)}
    head = f"Repeated activity on {' and '.join(interests)}: the interests."
    if once:
        head += f" {' and '.join(once)} appear{'s' if len(once) == 1 else ''} once, not an interest."
    return {"id": f"up{cfg.seed}-{idx}", "history": events, "profile": profile, "reasoning": " ".join([head, *why])}


def _pct1(correct: int, total: int) -> float:
    return round(100.0 * correct / total, 1)


def eval_report_row(rng: random.Random, cfg: SyntheticConfig, idx: int) -> dict:
    """Two labelers' labels (bad / fair / good) on 4–6 items with gold, and the report: a summary, the
    per-labeler table (correct, total, accuracy in percent to one decimal) and the better labeler (tie when
    equally many are correct). ``truth``: each labeler's hidden ``skill`` (the probability it labels an item
    correctly, drawn from [0.4, 0.95]), and on this set its ``correct`` count, ``accuracy`` (a fraction),
    ``total`` and ``better``."""
    labels = ("bad", "fair", "good")
    skill = {name: round(rng.uniform(0.4, 0.95), 3) for name in LABELERS}
    items = []
    for _ in range(rng.randint(4, 6)):
        gold = rng.choice(labels)
        it = {"gold": gold}
        for name in LABELERS:
            it[name] = gold if rng.random() < skill[name] else rng.choice([x for x in labels if x != gold])
        items.append(it)
    n = len(items)
    correct = {name: sum(it[name] == it["gold"] for it in items) for name in LABELERS}
    b, c = correct["baseline"], correct["candidate"]
    better = "tie" if b == c else "candidate" if c > b else "baseline"
    table = {name: {"correct": correct[name], "total": n, "accuracy": _pct1(correct[name], n)} for name in LABELERS}
    verdict = "a tie." if better == "tie" else f"the {better} is better."
    summary = (f"The baseline is right on {b} of {n} items, the candidate on {c}: {verdict}")
    wrong = {name: [str(i) for i, it in enumerate(items, start=1) if it[name] != it["gold"]] for name in LABELERS}
    reasoning = " ".join(f"The {name} misses item{'s' if len(w) != 1 else ''} {', '.join(w)}." if w else
                         f"The {name} misses no item." for name, w in wrong.items())
    return {"id": f"er{cfg.seed}-{idx}", "items": items,
            "report": {"summary": summary, "table": table, "better": better}, "reasoning": reasoning,
            "truth": {"skill": skill, "correct": correct, "total": n,
                      "accuracy": {name: correct[name] / n for name in LABELERS}, "better": better}}


JUDGE_SPECIFICS = ("product", "model", "size", "audience", "price", "date")
"""The narrowing details an ad_judge ad may carry; each costs one generalization point."""
_SPECIFIC_NAMES = {"product": "a single product", "model": "a model number", "size": "a size or color",
                   "audience": "a narrowed audience", "price": "a price", "date": "a date"}


def _specific(rng: random.Random, kind: str, item: str) -> str:
    return {"product": lambda: f"only the {item}",
            "model": lambda: f"model {rng.choice('XZRT')}{rng.randint(100, 999)}",
            "size": lambda: rng.choice(["in size 9", "in size 42", "in matte red", "in navy blue"]),
            "audience": lambda: rng.choice(["for kids", "for men", "for women", "for seniors"]),
            "price": lambda: f"at ${rng.randint(19, 199)}.99",
            "date": lambda: f"until {rng.choice(['May', 'June', 'July'])} {rng.randint(1, 28)}"}[kind]()


def ad_judge_row(rng: random.Random, cfg: SyntheticConfig, idx: int) -> dict:
    """An ad copy (headline, description) for a keyword and one judge criterion (alternating by row), scored
    0–5 by rule; ``truth`` holds both criteria's scores. The keyword is a category, or a brand + category (30 %).
    The ad's category is the keyword's (``match_rate``), else one of the same group or of another group.

    - relevance: 0 another group's category; 1 another category of the same group; same category: 5, minus 1
      when the ad names only the brand (not the category), minus 2 when the keyword names a brand and the ad
      another one (``conflict_rate``) — so 5, 4, 3 or 2.
    - generalization: 5 minus the number of narrowing details (``JUDGE_SPECIFICS``: a single product, a model
      number, a size or color, a narrowed audience, a price, a date; 0–5 of them)."""
    criterion = tuple(JUDGE_CRITERIA)[idx % len(JUDGE_CRITERIA)]
    cats = sorted(CATALOGUE)
    kcat = rng.choice(cats)
    kc = CATALOGUE[kcat]
    kbrand = rng.choice(kc["brands"]) if rng.random() < 0.3 else None
    keyword = f"{kbrand.lower()} {kcat}" if kbrand else kcat
    if rng.random() < cfg.match_rate:
        acat = kcat
    else:
        group = [c for c in cats if c != kcat and CATALOGUE[c]["group"] == kc["group"]]
        others = [c for c in cats if CATALOGUE[c]["group"] != kc["group"]]
        acat = rng.choice(group) if group and rng.random() < 0.5 else rng.choice(others)
    ac = CATALOGUE[acat]
    conflict = acat == kcat and kbrand is not None and rng.random() < cfg.conflict_rate
    if conflict:
        brand = rng.choice([b for b in ac["brands"] if b != kbrand])
    else:
        brand = kbrand if acat == kcat and kbrand else rng.choice(ac["brands"])
    item = rng.choice(ac["items"])
    named = rng.random() < 0.7
    kinds = sorted(rng.sample(JUDGE_SPECIFICS, rng.choice((0, 0, 1, 1, 2, 2, 3, 4, 5))), key=JUDGE_SPECIFICS.index)
    phrases = [_specific(rng, kind, item) for kind in kinds]
    what = acat if named else rng.choice(["favorites", "best sellers", "new arrivals"])
    headline = f"{rng.choice(['Shop', 'Buy', 'Get', 'Discover'])} {brand} {what}"
    description = " ".join([f"{brand} {what}", *phrases]) + ". " + rng.choice(_FILLERS)
    if acat != kcat:
        same_group = ac["group"] == kc["group"]
        relevance = 1 if same_group else 0
        why_rel = (f"The keyword asks for {kcat}; the ad sells {acat}, " +
                   (f"another category of the same group ({kc['group']})." if same_group else
                    f"unrelated ({ac['group']}, not {kc['group']})."))
    else:
        relevance = 5 - (0 if named else 1) - (2 if conflict else 0)
        why_rel = (f"The keyword asks for {kcat}{f' by {kbrand}' if kbrand else ''}; the ad is for {brand} {kcat}." +
                   (f" The keyword names {kbrand} but the ad is for {brand}." if conflict else "") +
                   (" The ad names the category." if named else " The ad names only the brand, not the category."))
    generalization = 5 - len(kinds)
    why_gen = (f"The ad adds {len(kinds)} narrowing detail{'s' if len(kinds) > 1 else ''} "
               f"({', '.join(_SPECIFIC_NAMES[k] for k in kinds)}): too specific." if kinds else
               "The ad stays general: no narrowing details.")
    truth = {"relevance": relevance, "generalization": generalization}
    return {"id": f"aj{cfg.seed}-{idx}", "keyword": keyword, "headline": headline, "description": description,
            "criterion": criterion, "score": truth[criterion],
            "reasoning": why_rel if criterion == "relevance" else why_gen,
            "truth": {**truth, "category": acat, "keyword_category": kcat, "specifics": kinds}}


def _noisy_ad_judge(rng: random.Random, row: dict) -> None:
    row["score"] = rng.randint(0, 5)


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
    AD_REWRITE.name: (ad_rewrite_row, None),
    USER_QUERY_GEN.name: (user_query_gen_row, None),
    USER_PROFILE.name: (user_profile_row, None),
    EVAL_REPORT.name: (eval_report_row, None),
    AD_JUDGE.name: (ad_judge_row, _noisy_ad_judge),
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
RISKY_CLAIMS = ("Guaranteed results.", "Risk-free purchase.", "Miracle quality.", "The #1 choice.",
                "Best ever prices.", "Instant results.")
"""Exaggerated claims of the noisy ad_rewrite rows (``SyntheticConfig.noisy_rewrite_rate``): each holds a term of
``rewards.relate.DEFAULT_BLACKLIST`` (data never imports rewards; a unit test checks they match)."""
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
