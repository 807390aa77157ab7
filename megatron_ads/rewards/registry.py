"""The reward registry: rewards by name, their parameters, and the per-task combination the GRPO config names.

A *reward function* scores one task's rollouts::

    fn(prompts: list[str], completions: list[str], task: str, meta: list[dict]) -> RewardOutput

``meta[i]`` is sample i's data row (gold labels, keyword, the ad to rewrite, ...) plus what the trainer
adds (``group``: the prompt's index, ``rollout``: the rollout index g within its group).
``RewardOutput.values[i]`` is a float, or None when the reward does not apply to sample i (no gold
label, no relevant ads, ...): the trainer leaves such samples out of that channel's group baseline.
``token_values[i]`` (optional) are per-token rewards aligned with the completion's tokens (the hook
token-level methods fill; None when a reward has none).

Token alignment. ``token_values[i]`` has one value per completion token *as the trainer's loss mask
covers them* (``train.grpo.pack_token_rewards``): every generated id, the stop token included. The
trainer hands the ids in ``meta[i][COMPLETION_IDS]`` and the function that made ``completions[i]`` from
them in ``RewardResources.decode`` (its tokenizer's decode without the EOS id), so
``completions[i] == decode(meta[i][COMPLETION_IDS])``. ``token_spans(ids, decode)`` turns that into one
character span of the completion per token (incremental decoding: no assumption on the tokenizer,
byte-level pieces of a character included); a reward marks the tokens whose span overlaps what it
penalizes. Without the ids or ``decode`` (offline use) a token-level reward returns None for that sample.

A *registered reward* (``REWARDS[name]``, data: a dict) is a ``RewardDef``: its parameter dataclass
(validated, errors name the field) and a builder ``build(params, resources) -> fn`` that binds the
frozen resources the reward needs (the task parser, the embedder, the ad corpus, the CTR model: see
``RewardResources``). Every module of this package registers its rewards at import;
``megatron_ads.rewards`` imports them all.

The per-task combination (``RewardCombination``: ``{task: {reward: weight}}`` plus per-reward
parameters) is what the GRPO config holds (as plain data) and checks with ``check_combination``.
The trainer normalizes each channel within its groups, then takes the weighted sum (normalize, then sum).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence


@dataclass(slots=True)
class RewardOutput:
    """One reward channel's result for a list of samples."""

    values: list[float | None]
    """Per sample: the reward, or None (not applicable: excluded from the group's baseline)."""
    token_values: list[list[float] | None] | None = None
    """Per sample: per-token rewards aligned with the completion's tokens (None: none for this sample)."""

    def __post_init__(self):
        for i, v in enumerate(self.values):
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"values[{i}]: expected a finite float or None, got {v!r}")
        if self.token_values is not None and len(self.token_values) != len(self.values):
            raise ValueError(f"token_values: expected one entry per sample ({len(self.values)}), "
                             f"got {len(self.token_values)}")


RewardFn = Callable[[Sequence[str], Sequence[str], str, Sequence[dict]], "RewardOutput | list[float | None]"]
"""``fn(prompts, completions, task, meta)``: a list of values, or a ``RewardOutput``."""


class Parsed(Protocol):
    """What a task parser returns (``data.tasks.ParsedOutput`` has this shape)."""

    fields: dict[str, Any]
    errors: list[str]


Parser = Callable[[str, str], Parsed]
"""``parse(task, text)``: a completion's fields (keyed by field name) and its format errors."""
GoldFn = Callable[[str, dict], dict[str, Any]]
"""``gold(task, row)``: the gold value of each output field of ``task`` in data row ``row`` ({} if none)."""


@dataclass(kw_only=True, slots=True)
class RewardResources:
    """The frozen things rewards are built on, handed in by the trainer or CLI (``rewards`` never imports
    ``data``: the caller wires ``data.tasks``' parser and ``data.synthetic``'s corpora in)."""

    parse: Parser | None = None
    """Task parser: ``lambda t, text: data.tasks.parse_output(data.tasks.task(t), text)``."""
    gold: GoldFn | None = None
    """Gold labels of a row: ``{f.name: row[f.key]}`` over ``data.tasks.task(t).outputs``."""
    embedder: Any = None
    """The frozen sentence embedder (``retrieval.MiniLMEmbedder``); built on first need when None."""
    ad_corpus: Mapping[str, Any] | None = None
    """``{"ads": [{"id", "title", "description"}], "relevant": {keyword: [ad id]}}`` (``data.synthetic.ad_corpus``)."""
    ctr_model: Any = None
    """The frozen CTR model (``ctr.CTRModel``, e.g. ``ctr.CTRModel.load(dir)``)."""
    esmm_model: Any = None
    """The frozen shared-bottom CTR/CVR model of the ``ctcvr`` reward (``esmm.ESMMModel``, e.g.
    ``esmm.ESMMModel.load(dir)``)."""
    perf_model: Any = None
    """The frozen performance reward model (RLPF): ``score(keywords, texts) -> list[float]``."""
    token_model: Any = None
    """The frozen token-level reward model (TPPO) of the ``token_rm`` reward:
    ``token_rewards(prompt_ids, completion_ids) -> list[list[float]]``, one reward per completion token (the
    trainer builds it from ``grpo.resources.token_model`` on its own layout)."""
    judge_model: Any = None
    """MarketingFM AutoEval's frozen judge of the ``autoeval_accept`` reward: ``judge(ads) -> [{"scores":
    {criterion: expected 0–5 score}, ...}]`` for ads ``{keyword, headline, description}`` (``data.judge.judge``;
    the trainer builds it from ``grpo.resources.judge_model`` on its own layout)."""
    decode: Callable[[Sequence[int]], str] | None = None
    """``decode(ids) -> text``: what made each completion's text from ``meta[i][COMPLETION_IDS]`` (the
    trainer's tokenizer decode without EOS); token-level rewards align with it (``token_spans``)."""
    loaders: dict[str, Callable[[], Any]] = field(default_factory=dict)
    """Resource name -> zero-argument function building it on its first ``need`` when the field is None
    (e.g. a frozen model loaded from the directory ``grpo.resources`` names): nothing a built reward does not
    need is loaded."""

    def need(self, name: str, reward: str) -> Any:
        """Resource ``name`` (built by ``loaders[name]`` on first need) or a ValueError saying which reward
        needs it."""
        value = getattr(self, name)
        if value is None and name in self.loaders:
            value = self.loaders[name]()
            setattr(self, name, value)
        if value is None:
            raise ValueError(f"resources.{name}: reward {reward!r} needs it, got None")
        return value


@dataclass(frozen=True, slots=True)
class RewardDef:
    """A registered reward: its parameter dataclass and its builder."""

    name: str
    params: type
    """Dataclass of the reward's parameters (kw-only, validated in ``__post_init__``)."""
    build: Callable[[Any, RewardResources], RewardFn]
    """``build(params, resources) -> fn``."""
    doc: str = ""


COMPLETION_IDS = "completion_ids"
"""Meta key of a completion's token ids: exactly the tokens its loss mask covers (stop token included)."""
PROMPT_IDS = "prompt_ids"
"""Meta key of the prompt's token ids as the policy saw them (what a backbone reward model reads first)."""


def token_spans(ids: Sequence[int], decode: Callable[[Sequence[int]], str],
                text: str | None = None) -> list[tuple[int, int]]:
    """Character span ``(start, end)`` in ``text`` (default ``decode(ids)``) of each token of ``ids``.

    Incremental decoding: token k covers what ``decode(ids[:k + 1])`` adds to ``decode(ids[:k])``. A token
    whose prefix decodes to an incomplete character (a byte-level piece of a multi-byte character: the
    decoded prefix is no prefix of ``text``) also covers that character, so every token of a word overlaps
    it. A token that decodes to nothing (EOS, stripped specials) gets an empty span at its position.
    ValueError when ``decode(ids) != text`` (the ids are not this completion's).
    """
    ids = list(ids)
    full = decode(ids)
    if text is not None and full != text:
        raise ValueError(f"completion ids: decode(ids) gives {full[:60]!r}..., expected the completion text "
                         f"{text[:60]!r}... (meta['{COMPLETION_IDS}'] and the text must match)")
    spans: list[tuple[int, int]] = []
    done = 0
    for k in range(1, len(ids) + 1):
        s = decode(ids[:k])
        partial = not full.startswith(s)
        end = max(done, len(os.path.commonprefix([s, full])) if partial else len(s))
        spans.append((done, min(end + 1, len(full)) if partial else end))
        done = end
    return spans


REWARDS: dict[str, RewardDef] = {}
"""Name -> registered reward (filled by the modules of this package at import)."""


def register(name: str, params: type, doc: str = "") -> Callable[[Callable], Callable]:
    """Decorator registering ``build(params, resources) -> fn`` as reward ``name``."""

    def deco(build: Callable) -> Callable:
        if name in REWARDS:
            raise ValueError(f"reward {name!r}: registered twice")
        if not dataclasses.is_dataclass(params):
            raise TypeError(f"reward {name!r}: params must be a dataclass, got {params!r}")
        REWARDS[name] = RewardDef(name=name, params=params, build=build, doc=doc or (build.__doc__ or "").strip())
        return build

    return deco


def get(name: str) -> RewardDef:
    """The registered reward ``name`` (ValueError listing the known ones otherwise)."""
    if name not in REWARDS:
        raise ValueError(f"reward: expected one of {sorted(REWARDS)}, got {name!r}")
    return REWARDS[name]


def make_params(name: str, values: Mapping[str, Any] | None = None, where: str = "reward_params") -> Any:
    """Reward ``name``'s parameter dataclass from a mapping; errors name ``where.name.field``."""
    cls = get(name).params
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}.{name}.{unknown[0]}: unknown parameter; expected some of {sorted(known)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}.{name}.{exc}") from exc


def build(name: str, resources: RewardResources, params: Any = None) -> RewardFn:
    """Reward ``name`` bound to ``resources`` (``params``: its dataclass, a mapping, or None for defaults)."""
    d = get(name)
    if params is None or isinstance(params, Mapping):
        params = make_params(name, params)
    elif not isinstance(params, d.params):
        raise TypeError(f"reward {name!r}: params must be {d.params.__name__}, got {type(params).__name__}")
    return d.build(params, resources)


def call(fn: RewardFn, prompts: Sequence[str], completions: Sequence[str], task: str,
         meta: Sequence[dict] | None = None) -> RewardOutput:
    """Run a reward function and check its result: always a ``RewardOutput`` with one value per sample."""
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"prompts: expected one per completion ({n}), got {len(prompts)}")
    meta = list(meta) if meta is not None else [{} for _ in range(n)]
    if len(meta) != n:
        raise ValueError(f"meta: expected one row per completion ({n}), got {len(meta)}")
    out = fn(prompts, completions, task, meta)
    if not isinstance(out, RewardOutput):
        out = RewardOutput(values=list(out))
    if len(out.values) != n:
        raise ValueError(f"reward returned {len(out.values)} values for {n} completions")
    return out


# ------------------------------------------------------------------------------------ combination
@dataclass(kw_only=True, slots=True)
class RewardCombination:
    """Which rewards score which task, with what weight, and the rewards' parameters."""

    tasks: dict[str, dict[str, float]]
    """Task name -> {reward name: weight}; each task's channels are normalized per group, then summed
    with these weights. Weights are finite and non-zero."""
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Reward name -> parameters (fields of its parameter dataclass); defaults when absent."""
    where: str = "rewards"
    """Name of this section in the enclosing config (error messages start with it)."""

    def __post_init__(self):
        check_combination(self.tasks, self.params, where=self.where)

    def channels(self, task: str) -> dict[str, float]:
        """Reward name -> weight for ``task`` ({} when the task has no rewards)."""
        return dict(self.tasks.get(task, {}))

    def used(self) -> list[str]:
        """Names of the rewards any task uses (sorted)."""
        return sorted({n for ch in self.tasks.values() for n in ch})

    def build_all(self, resources: RewardResources) -> dict[str, RewardFn]:
        """Every used reward, built once with its parameters (shared by the tasks that use it)."""
        return {n: build(n, resources, make_params(n, self.params.get(n), f"{self.where}.params"))
                for n in self.used()}

    def evaluate(self, fns: Mapping[str, RewardFn], task: str, prompts: Sequence[str],
                 completions: Sequence[str], meta: Sequence[dict] | None = None) -> dict[str, RewardOutput]:
        """Each of ``task``'s channels on these samples: reward name -> ``RewardOutput``."""
        return {n: call(fns[n], prompts, completions, task, meta) for n in self.channels(task)}


def check_combination(tasks: Any, params: Any = None, where: str = "rewards",
                      known_tasks: Sequence[str] | None = None) -> None:
    """Validate a ``{task: {reward: weight}}`` mapping and ``{reward: {param: value}}``; ValueError naming the
    field (``where.tasks.<task>.<reward>``, ``where.params.<reward>.<param>``). ``known_tasks``: the allowed
    task names (the caller passes ``data.tasks.TASKS``; rewards does not know them)."""
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"{where}.tasks: expected a non-empty mapping task -> {{reward: weight}}, got {tasks!r}")
    for t, channels in tasks.items():
        if known_tasks is not None and t not in known_tasks:
            raise ValueError(f"{where}.tasks.{t}: unknown task; expected one of {sorted(known_tasks)}")
        if not isinstance(channels, Mapping) or not channels:
            raise ValueError(f"{where}.tasks.{t}: expected a non-empty mapping reward -> weight, got {channels!r}")
        for name, w in channels.items():
            if name not in REWARDS:
                raise ValueError(f"{where}.tasks.{t}.{name}: unknown reward; expected one of {sorted(REWARDS)}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w == 0:
                raise ValueError(f"{where}.tasks.{t}.{name}: expected a finite non-zero weight, got {w!r}")
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}.params: expected a mapping reward -> {{param: value}}, got {params!r}")
    used = {n for ch in tasks.values() for n in ch}
    for name, values in params.items():
        if name not in used:
            raise ValueError(f"{where}.params.{name}: parameters for a reward no task uses (used: {sorted(used)})")
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}.params.{name}: expected a mapping param -> value, got {values!r}")
        make_params(name, values, f"{where}.params")
