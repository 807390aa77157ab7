"""``CookConfig``: every setting and threshold of data cooking (``megatron-ads cook``, ``data.cook``), AdNanny §3.

The spec's [DEFAULT]s (``papers_spec.md`` §A.3; the paper itself gives no number): ``n_candidates=4``; keep a
candidate whose mean pairwise cosine to the other candidates is ≥ 0.8; a query is a near-duplicate at a
normalised edit or cosine similarity ≥ 0.9; the verifier passes at ≥ 0.5; boilerplate = no token overlap
with the input's entities. The other thresholds (golden-set validation, off-topic, synonyms, sampling) are
this project's defaults, marked as such below.

YAML in (``CookConfig.load``: a file and/or ``key=value`` overrides) and out (``to_dict``, saved beside the
corpus in ``cook_report.json``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_ads.config.yaml_io import read_mapping, split_override

ANSWER_MODES = ("teacher", "gold")


def _unit(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name}: expected a value in [0, 1], got {value!r}")


@dataclass(kw_only=True, slots=True)
class CookConfig:
    """How a task's labeled raw rows become reasoning-augmented SFT rows (AdNanny §3.2–3.4)."""

    # ---- reasoning generation (§3.2) and rejection sampling (§3.4 a)
    n_candidates: int = 4
    """Candidates generated per input [spec DEFAULT 4]; candidate k uses prompt variation k mod V."""
    answer: str = "teacher"
    """``teacher``: the teacher writes ``<think>`` reasoning and then repeats the given labels in the task's
    tags (the paper; schema and contradiction are checked on its tags); ``gold``: the prompt is prefilled
    with ``<think>``, the teacher writes the reasoning only (generation stops at ``</think>``) and the gold
    tags are appended (for teachers that do not follow tag formats; contradiction is then checked on the
    labels the reasoning states)."""
    close_truncated: bool = False
    """Answer mode ``gold``: a reasoning cut at ``max_new_tokens`` is closed there and kept (a hard reasoning
    budget) instead of failing the schema."""
    temperature: float = 0.7
    """Sampling temperature of the candidates (0: greedy; the candidates then differ by prompt variation
    only) [project default]."""
    top_p: float = 0.95
    """Nucleus sampling of the candidates [project default]."""
    max_new_tokens: int = 256
    """Most tokens the teacher generates per candidate; a candidate cut at this limit fails the schema."""
    seed: int = 0
    """Candidate k of input ``id`` samples with seed ``crc32(f"{seed}:{id}:{k}")``: independent of batching,
    workers and resuming."""
    batch_size: int = 8
    """Inputs per generation batch (x ``n_candidates`` rows per engine call) and per journal flush."""

    # ---- golden-set prompt validation (§3.3)
    golden_rows: int = 16
    """Golden rows: the first N input rows when no golden file is given; 0 skips validation."""
    min_format_validity: float = 0.9
    """Per prompt variation: share of golden outputs that pass the schema check [project default]."""
    min_label_consistency: float = 0.9
    """Per prompt variation: share of well-formed golden outputs that do not contradict the gold labels
    [project default]."""
    min_grounding: float = 0.8
    """Per prompt variation: share of well-formed golden outputs that cite the input (not boilerplate) and, with
    ``grounding``, name no entity the row does not hold [project default]."""
    min_agreement: float = 0.8
    """Per prompt: mean pairwise cosine between the variations' reasoning on a golden row, averaged over the
    rows [project default: the self-consistency threshold]."""

    # ---- filters (§3.4 b–e)
    self_consistency_min: float = 0.8
    """Keep a candidate whose mean cosine to the input's other (rule-passing) candidates is ≥ this [spec
    DEFAULT 0.8]; an input with one such candidate is kept without the check."""
    verifier_min: float = 0.5
    """Keep a candidate whose verifier faithfulness score is ≥ this [spec DEFAULT 0.5]."""
    min_entity_overlap: int = 1
    """Boilerplate: fewer than this many of the input's entity tokens in the reasoning [spec DEFAULT: no
    overlap, i.e. 1]; 0 turns the filter off."""
    grounding: bool = True
    """Drop a candidate whose reasoning names an entity of the grounding lexicon (a city, brand, category,
    product or price word of the synthetic world; ``data.cook.filters.LEXICON``) that neither the row's input
    fields nor its reference ``reasoning`` (when the raw row has one) contain (``filters.grounding``); it also
    counts in the golden set's ``grounding`` figure. false: no check [project default]."""
    grounding_lexicon: str | None = None
    """A JSON file ``{kind: [word | [synonym, ...]]}``: its kinds replace the built-in lexicon's kinds of the same
    name (list the built-in words again to extend one), new kinds are added, an empty list removes a kind; a
    list inside the list is a synonym group (any member in the input grounds all). None: the built-in lexicon."""
    near_duplicate: float = 0.9
    """Keyword data: a query is a near-duplicate of an earlier query of the same keyword at a normalised
    edit similarity or cosine ≥ this [spec DEFAULT 0.9]."""
    off_topic_min: float = 0.3
    """Keyword data: a query whose cosine to the ad's text is below this is off-topic [project default]."""
    synonym_min: float = 0.7
    """Keyword data: a query that does not contain every keyword word still refines it when its cosine to the
    keyword is ≥ this (a natural synonym, e.g. notebook for laptop) [project default]."""

    # ---- ad data (ad_rewrite): MarketingFM's AutoEval as an input filter
    autoeval: bool = True
    """Ad rewriting rows: drop a raw row whose gold rewrite fails AutoEval (``rewards.autoeval``, as ``megatron-ads
    autoeval`` checks an ad: headline = the rewrite's title) before any generation: one of ``autoeval_rules``
    fails, or — with ``cook --autoeval-judge DIR`` — an expected judge score is below its
    ``autoeval_thresholds``. false: no check (other tasks: never checked)."""
    autoeval_rules: list[str] = field(default_factory=lambda: ["mention_sale", "headline_length", "cta_missing",
                                                                "blacklist", "diversity"])
    """The AutoEval rules the gold rewrite must pass (all of ``rewards.autoeval.RULES`` by default; diversity
    compares the rewrites of one keyword, the first of a near-duplicate pair kept)."""
    autoeval_thresholds: dict[str, float] = field(default_factory=lambda: {"relevance": 2.0,
                                                                           "generalization": 3.0})
    """Judge thresholds per criterion (0–5 expected scores; AutoEval's defaults, Table 8's best mode); used only
    with ``--autoeval-judge``."""

    # ---- corpus (§3.4, construction)
    keep_per_input: int = 1
    """Surviving candidates kept per input (best verifier score first); >1 adds ``ID#2``... rows to train only."""
    val_fraction: float = 0.1
    """Share of the kept inputs in the validation split (at least one when 3 or more are kept)."""
    test_fraction: float = 0.1
    """Share of the kept inputs in the test split (at least one when 3 or more are kept)."""
    split_seed: int = 0
    """Seed of the shuffle before the split."""

    def __post_init__(self):
        for name in ("n_candidates", "max_new_tokens", "batch_size", "keep_per_input"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        for name in ("golden_rows", "min_entity_overlap", "seed", "split_seed"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"{name}: expected an integer >= 0, got {v!r}")
        if not isinstance(self.close_truncated, bool):
            raise ValueError(f"close_truncated: expected true or false, got {self.close_truncated!r}")
        if self.answer not in ANSWER_MODES:
            raise ValueError(f"answer: expected one of {list(ANSWER_MODES)}, got {self.answer!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"temperature: expected >= 0 (0 = greedy), got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p: expected 0 < top_p <= 1, got {self.top_p!r}")
        for name in ("min_format_validity", "min_label_consistency", "min_grounding", "min_agreement",
                     "self_consistency_min", "verifier_min", "near_duplicate", "off_topic_min", "synonym_min",
                     "val_fraction", "test_fraction"):
            _unit(name, getattr(self, name))
        if not isinstance(self.grounding, bool):
            raise ValueError(f"grounding: expected true or false, got {self.grounding!r}")
        if self.grounding_lexicon is not None and not (isinstance(self.grounding_lexicon, str)
                                                       and self.grounding_lexicon.strip()):
            raise ValueError(f"grounding_lexicon: expected the path of a JSON file {{kind: [words]}} or null, got "
                             f"{self.grounding_lexicon!r}")
        if not isinstance(self.autoeval, bool):
            raise ValueError(f"autoeval: expected true or false, got {self.autoeval!r}")
        if (not isinstance(self.autoeval_rules, (list, tuple))
                or not all(isinstance(r, str) for r in self.autoeval_rules)):
            raise ValueError(f"autoeval_rules: expected a list of rule names, got {self.autoeval_rules!r}")
        th = self.autoeval_thresholds
        if not isinstance(th, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 5 for v in th.values()):
            raise ValueError(f"autoeval_thresholds: expected {{criterion: score in [0, 5]}}, got {th!r}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction: expected < 1, got "
                             f"{self.val_fraction} + {self.test_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "cook config") -> "CookConfig":
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"{source}: unknown field(s) {bad}; expected some of {sorted(known)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> "CookConfig":
        """A YAML file of fields (optional) with ``key=value`` overrides applied (YAML-typed values)."""
        d: dict[str, Any] = {}
        source = "cook config"
        if path is not None:
            d, source = read_mapping(path, "cook config"), str(path)
        for item in overrides or []:
            key, value = split_override(item, "n_candidates=2")
            d[key] = value
        return cls.from_dict(d, source)
