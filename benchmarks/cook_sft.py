"""Cooked vs hand-built SFT corpus (issue 16): does ``megatron-ads cook`` on the synthetic raw rows give a corpus
on which ``train sft`` reaches the held-out metrics of the hand-built (rule-reasoning) corpus, within 2 BACC
points?

    python benchmarks/cook_sft.py [--workdir DIR] [--fast] [--rows N] [--test-rows N] [--teacher-rows N]
        [--teacher-steps T] [--sft-steps S] [--seeds N] [--draws D] [--parallel P] [--set key=value ...]
        [--teacher-set ...] [--cook-set ...]

All runs use ``launch/configs/sft_tiny_cpu.yaml``:

0. **raw rows**: per task (query_ad, ad_user) ``--rows`` rows with the recipe's synthetic settings
   (``sft.synthetic``, e.g. the raised city rates of query_ad; ``data.sft_data.synthetic_config``, what the
   recipe itself generates — ``data synth`` has no flag for them) at seed ``sft.data_seed``: the hand-built
   corpus (rule reasoning and gold labels) and, without its reasoning used, the cook's input; a held-out test
   file per task (seed + 1, ``--test-rows``) shared by both arms; a teacher set (seed + 2, ``--teacher-rows``).
1. **teacher**: a tiny model trained to follow the cook prompts, ``train sft sft.tasks=[general]`` on a general
   instruction file (``{id, family, prompt, response}``) built from the teacher set: per row and per prompt
   variation the cook prompt (``data.cook.prompts.render``, the cook's answer mode) with, as response, exactly
   what the cook's parser accepts — answer ``teacher`` (the default): ``Task.target`` of the row, i.e.
   ``<think>`` rule reasoning ``</think>`` then the gold tags; answer ``gold``: the reasoning then
   ``</think>`` — plus one *verifier* row per input: the task's own label-only prompt with the rule reasoning in
   ``<think>`` (``pipeline.verifier_scores``' prompt) and the gold tags as response. The same model is the
   cook's teacher **and** its verifier (the paper's verifier is a smaller model; here one tiny model serves
   both: without ``--verifier`` ``cook`` would skip that filter). Its BPE tokenizer is also trained on
   query_ad / ad_user rows (``sft.tokenizer_tasks``); ``train.seq_len`` is raised (``--teacher-seq-len``,
   default 352) so that a whole cook prompt and its answer fit.
2. **cook**: ``megatron-ads cook`` of each task's raw rows with that teacher, at the **default thresholds**
   (golden-set validation on the first 16 inputs, 4 candidates, self-consistency 0.8, verifier 0.5, entity
   overlap 1), with ``test_fraction=0`` (the test split is the shared file) and ``batch_size=32`` (speed only:
   candidate seeds are per input and candidate) — ``--cook-set`` adds more.
   The two tasks cook in parallel, each into its own directory.
3. **arms**: ``train sft`` from the same random init and recipe, ``--sft-steps`` each, ``--parallel`` at a time, per
   training seed (``--seeds N``: ``train.seed`` 1..N, the same seeds for every arm — paired): ``hand``
   (``sft.files``: the raw rows, 10% of them as validation; it needs no cook, so it trains while the teacher
   trains and the cook runs), ``cooked`` (``sft.files``: the cooked train / val splits) and the control
   ``cooked_hand_split``: the cooked rows in the hand arm's split and order (each hand train / val row replaced by
   the cooked row of the same input; inputs the cook dropped left out). ``hand`` and ``cooked`` differ in what
   the rows hold *and* in how each run splits and orders them (which rows validate and so drive the task
   weights λ, which first rows train the run's BPE tokenizer, the sampling order); the control differs from
   ``hand`` only in what the rows hold. All arms are tested on the shared test file (``sft.test_rows`` = its
   size). ``--draws D``: each arm also runs at ``sft.data_seed`` + 1 .. D-1 (in ``<arm>/draw<d>/``) — for
   ``hand`` another validation draw, sampling sequence (the mixer's seed) and tokenizer sample of the same rows,
   for the control the cooked rows in that draw's hand split, for ``cooked`` the cook's own split re-drawn at
   ``split_seed`` + d (``cook_redrawn``: the finished cook resumed in ``cook/<task>/draw<d>/``, which only
   writes the splits) and another sampling sequence: on 3 600 rows per task one draw moves Fair-view BACC by ~9
   points (``RESULTS.md``), so the 2-point verdict needs the means over several draws, and each arm's draws must
   vary which rows validate (a cooked arm fixed to one split measured that split, not the corpus).

Prints the arms' held-out metrics (query–ad Bad / Fair / quality / location BACC, ad–user AUC / BACC) per seed
and their mean over the seeds, the cook's counts per filter and the teacher's held-out exact match, then, last,
one JSON object: ``arms`` {hand, cooked, cooked_hand_split: metrics (the mean over the seeds), ``per_seed`` (the metrics of each
run: draw-major, then seed), ``std`` (over the runs, population), ``rows_trained``, ``defect_share`` (the share of bad labels among the query_ad rows
trained: relevance, location), ``steps``, ``wall_s`` (summed over the runs)}, ``diff_points`` (cooked − hand per metric, in points, of the
means), ``diff_points_per_seed`` (the same per seed: the paired differences), ``diff_points_se`` (their standard
error: sample std / sqrt(runs)), ``control_diff_points`` (cooked_hand_split − hand, of the means) and
``control_diff_points_se``, ``max_bacc_diff_points`` (largest
|cooked − hand| BACC of the five views, of the means) and ``max_bacc_diff_metric`` (which),
``lowest_bacc_diff_points`` / ``lowest_bacc_diff_metric`` (the most negative cooked − hand BACC: where cooked
falls furthest below hand) and ``not_below_target`` (that one ≥ −2: the cooked corpus is at most 2 points worse
on every view; better is not a failure of the cook), ``seeds``, ``draws``, ``runs`` ([draw, seed] per run),
``target_points`` (2), ``within_target``, ``cook``
{task: inputs read / kept / ``keep_rate`` / dropped per filter, candidates, ``prompt_passed``,
``agreement``, ``reasoning_exact`` (share of kept train rows whose cooked reasoning is the rule text)},
``teacher`` {steps, rows, exact_match, exact_match_by_family, wall_s}, the sizes, ``fast``, ``wall_s``.

The Fair view's BACC varies by 2.8 points (std) between training seeds of the recipe (``RESULTS.md``,
``make sft-seeds``), the other views by ≤ 0.6: with one seed per arm (the default) read ``diff_points`` per view
before the maximum; ``--seeds 2`` or more compares means (a finished workdir keeps its seeds and adds the new).

A finished run in ``--workdir`` is reused when its overrides are the same (``sft_seeds.run_seed``: otherwise
refused — use another workdir); ``cook`` resumes its journal and refuses other settings the same way.

``--fast``: a few rows and 2 steps, and the relaxed cook settings of the demo (``cli.demo.COOK_RELAXED``: a
teacher trained for 2 steps cannot pass the golden set): the smoke test in
``tests/distributed/test_bench_cook_sft.py``, not a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from generalization import _run
from sft_seeds import CFG, METRICS, mean_std, read_seed, run_seed

from megatron_ads.cli.demo import COOK_RELAXED
from megatron_ads.config.cook import CookConfig
from megatron_ads.config.train import JobConfig
from megatron_ads.data import synthetic
from megatron_ads.data.cook.prompts import prompt_for, render
from megatron_ads.data.sft_data import synthetic_config, user_data
from megatron_ads.data.tasks import task

TASKS = ("query_ad", "ad_user")
KEYS = dict(zip([name for name, _, _ in METRICS],
                ("bad_view_bacc", "fair_view_bacc", "quality_bacc", "location_bacc", "ad_user_auc", "ad_user_bacc")))
"""``sft_seeds.METRICS`` column -> JSON key."""
BACC = [k for k in KEYS.values() if k.endswith("bacc")]
TARGET_POINTS = 2.0
ARMS = (("hand", "hand-built (rule reasoning)"), ("cooked", "cooked (teacher reasoning)"),
        ("cooked_hand_split", "cooked, in the hand arm's split and order"))
"""The arms: the verdict is ``cooked`` vs ``hand``; ``cooked_hand_split`` is the control that separates what the
corpus holds from how each arm's run splits and orders it (module docstring, 3)."""
DEFAULTS = {"rows": 4000, "test_rows": 1000, "teacher_rows": 2000, "teacher_steps": 3000, "sft_steps": 7000}
FAST_SIZES = {"rows": 12, "test_rows": 8, "teacher_rows": 6, "teacher_steps": 2, "sft_steps": 2}
FAST = ["sft.val_rows=4", "sft.eval_every=2", "train.micro_batch=4", "train.log_every=2", "checkpoint.every=0"]
COOK_SET = ["test_fraction=0", "batch_size=32"]
"""The benchmark's cook settings (no threshold among them): no test split (the arms share the test file); 32
inputs (128 candidates) per generation call, which changes nothing but speed (candidate seeds are per input)."""
FAST_COOK = [*COOK_RELAXED, "max_new_tokens=8", "batch_size=6"]


# ------------------------------------------------------------------------------------ 0. rows
def raw_rows(cfg: JobConfig, name: str, n: int, seed: int) -> list[dict]:
    """``n`` rows of task ``name`` with the recipe's synthetic settings, at ``seed``."""
    return synthetic.generate(name, dataclasses.replace(synthetic_config(cfg.sft, name), size=n, seed=seed))


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` to ``path`` (JSONL), rewritten only when the content changes (a resumed run keeps its inputs)."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if not path.is_file() or path.read_text() != text:
        synthetic.write_jsonl(rows, path)
    return path


# ------------------------------------------------------------------------------------ 1. teacher
def teacher_rows(name: str, rows: list[dict], answer: str, verifier: bool) -> list[dict]:
    """General instruction rows that teach the cook prompts of task ``name`` (module docstring, 1): per row
    and prompt variation the rendered prompt and the answer the cook parses; with ``verifier`` one more row
    per input, the task's label-only prompt after the rule reasoning -> the gold tags."""
    t, prompt = task(name), prompt_for(name)
    out = []
    for r in rows:
        reasoning = str(r["reasoning"]).strip()
        target = t.target(r)  # <think>reasoning</think>\n<Tag>gold</Tag>...
        for v in prompt.variations:
            response = target if answer == "teacher" else f"{reasoning}</think>"
            out.append({"id": f"{r['id']}:{v.name}", "family": f"cook/{name}",
                        "prompt": render(prompt, v, t, r, answer), "response": response})
        if verifier:
            think, _, tags = target.partition("</think>\n")
            out.append({"id": f"{r['id']}:verify", "family": f"verify/{name}",
                        "prompt": t.prompt(r) + think + "</think>\n", "response": tags})
    return out


def teacher_report(run: Path) -> dict:
    g = json.loads((run / "eval" / "report.json").read_text())["general"]
    return {"exact_match": g["exact_match"], "exact_match_by_family": g["exact_match_by_family"],
            "test_rows": g["n"], "nll": g["nll"]}


# ------------------------------------------------------------------------------------ 2. cook
def cook(name: str, raw: Path, teacher: Path, out: Path, overrides: list[str]) -> dict:
    """``megatron-ads cook`` of one task into ``out`` (resumed when it holds this task's journal); its report."""
    out.mkdir(parents=True, exist_ok=True)
    _run(["cook", "--task", name, "--input", str(raw), "--teacher", str(teacher), "--verifier", str(teacher),
          "--out", str(out), *overrides, "--json"], out / f"cook_{name}.log")
    return json.loads((out / "cook_report.json").read_text())


def cook_redrawn(name: str, raw: Path, teacher: Path, cooked: Path, d: int, overrides: list[str]) -> dict:
    """The cook's corpus of task ``name`` at split draw ``d``: the finished cook in ``cooked`` re-split at
    ``split_seed`` + ``d`` — its journal and settings copied into ``cooked/draw<d>/``, where ``cook`` resumes
    with every input done and only writes the splits (another validation / train draw of the same cooked rows,
    as ``sft.data_seed`` draws the hand arm's). Draw 0 is the cook itself."""
    if d == 0:
        return json.loads((cooked / "cook_report.json").read_text())
    out = cooked / f"draw{d}"
    out.mkdir(parents=True, exist_ok=True)
    for f in (f"{name}.journal.jsonl", f"{name}.settings.json"):
        if not (out / f).is_file():
            shutil.copyfile(cooked / f, out / f)
    seed = CookConfig.load(None, overrides).split_seed + d
    return cook(name, raw, teacher, out, [*overrides, f"split_seed={seed}"])


def cook_summary(name: str, report: dict, raw: list[dict]) -> dict:
    """One task's cook figures (module docstring)."""
    s = report["tasks"][name]
    i, c = s["inputs"], s["candidates"]
    rule = {str(r["id"]): str(r["reasoning"]).strip() for r in raw}
    train = [json.loads(x) for x in Path(report["sft_files"][name]["train"]).read_text().splitlines() if x.strip()]
    exact = [row["reasoning"].strip() == rule.get(str(row["id"]).split("#")[0]) for row in train]
    pv = s.get("prompt_validation") or {}
    return {"read": i["read"], "kept": i["kept"], "keep_rate": i["kept"] / i["read"] if i["read"] else math.nan,
            "dropped": i["dropped"], "candidates": c["generated"], "candidates_survived": c["survived"],
            "candidates_dropped": c["dropped"], "rows": s["rows"],
            "prompt_passed": pv.get("passed"), "agreement": pv.get("agreement"),
            "reasoning_exact": sum(exact) / len(exact) if exact else math.nan}


# ------------------------------------------------------------------------------------ 3. arms
def cooked_by_input(cooked: dict) -> dict[str, list[dict]]:
    """The cooked rows of one task (every split of the cook, ``cooked`` = its ``sft_files`` entry) by input id."""
    by_input: dict[str, list[dict]] = {}
    for split in ("train", "val", "test"):
        path = cooked.get(split)
        for line in (Path(path).read_text().splitlines() if path and Path(path).is_file() else []):
            if line.strip():
                row = json.loads(line)
                by_input.setdefault(str(row["id"]).split("#")[0], []).append(row)
    return by_input


def in_hand_split(name: str, hand_files: dict, data_seed: int, by_input: dict[str, list[dict]], out: Path,
                  tag: str = "") -> tuple[Path, Path]:
    """The control arm's train / val files of task ``name``: the cooked rows (``by_input``, from
    ``cooked_by_input``) put in the hand arm's split and order — the hand arm's train rows (``user_data`` of
    ``hand_files`` at ``data_seed``: the same 10% validation draw, the same order, so the same first rows train the
    tokenizer) replaced by the cooked rows of the same input, inputs the cook dropped left out; likewise its
    validation rows. ``tag`` ends the file names (one pair per draw)."""
    hand = user_data(name, hand_files, data_seed)
    paths = []
    for split in ("train", "val"):
        rows = [r for h in hand[split] for r in by_input.get(str(h["id"]), [])]
        paths.append(write_rows(out / f"{name}.cooked_hand_split{tag}.{split}.jsonl", rows))
    return paths[0], paths[1]


def files(name: str, train: Path, test: Path, val: Path | None = None) -> list[str]:
    """``sft.files`` overrides of one task (no val file: 10% of train is held out as validation)."""
    out = [f"sft.files.{name}.train={train}", f"sft.files.{name}.test={test}"]
    if val is not None and val.is_file() and val.read_text().strip():
        out.append(f"sft.files.{name}.val={val}")
    return out


def trained(overrides: list[str]) -> dict:
    """Rows each task trains on under ``overrides`` (after the validation split), and the query_ad rows'
    defect shares (relevance bad, location bad)."""
    s = JobConfig.load(CFG, overrides).sft
    data = {name: user_data(name, s.files[name], s.data_seed)["train"] for name in TASKS}
    qa = data["query_ad"]
    share = {k: sum(r["labels"][k] == "bad" for r in qa) / len(qa) if qa else math.nan
             for k in ("relevance", "location")}
    return {"rows_trained": {n: len(v) for n, v in data.items()}, "defect_share": share}


def aggregate(rows: list[dict]) -> dict:
    """The metrics of one arm over its seeds (``read_seed`` rows, in seed order): the mean per metric (JSON keys),
    ``min_lambda`` (the smallest over the seeds), ``per_seed`` and ``std`` (population; 0 for one seed)."""
    per_seed = [{**{KEYS[c]: r[c] for c in KEYS}, "min_lambda": r["min λ"]} for r in rows]
    stats = {key: mean_std([r[key] for r in per_seed]) for key in KEYS.values()}
    return {**{key: m for key, (m, _) in stats.items()}, "min_lambda": min(r["min_lambda"] for r in per_seed),
            "per_seed": per_seed, "std": {key: s for key, (_, s) in stats.items()}}


# ------------------------------------------------------------------------------------ output
def _f(x, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{fmt}}"


def paired_se(paired: list[dict]) -> dict:
    """The standard error of the mean of paired differences, per metric: sample std / sqrt(n) (0 for one run)."""
    n = len(paired)
    return {key: statistics.stdev(d[key] for d in paired) / math.sqrt(n) if n > 1 else 0.0 for key in paired[0]}


def table(res: dict, cooks: dict, teacher: dict, labels: list[str]) -> str:
    """The arms' table (``labels``: one per run, in ``per_seed`` order), the cook's and the teacher's lines."""
    cols = [name for name, _, _ in METRICS]
    lines = ["| arm | rows trained (query_ad / ad_user) | " + " | ".join(cols) + " | min λ | steps | wall s |",
             "|---" * (len(cols) + 6) + "|"]
    for key, label in ARMS:
        r = res[key]
        n = f"{r['rows_trained']['query_ad']} / {r['rows_trained']['ad_user']}"
        seeds = r["per_seed"]
        for s, m in enumerate(seeds if len(seeds) > 1 else []):
            lines.append(f"| {label}, {labels[s]} | {n} | " + " | ".join(_f(m[KEYS[c]]) for c in cols)
                         + f" | {_f(m['min_lambda'])} | {r['steps']} | |")
        mean = "" if len(seeds) == 1 else f", mean of {len(seeds)}"
        lines.append(f"| {label}{mean} | {n} | "
                     + " | ".join(_f(r[KEYS[c]]) + ("" if len(seeds) == 1 else f" ± {r['std'][KEYS[c]]:.3f}")
                                  for c in cols)
                     + f" | {_f(r['min_lambda'])} | {r['steps']} | {r['wall_s']:.0f} |")
    means = '' if len(res['hand']['per_seed']) == 1 else ', of the means'
    for key, label in (("diff_points", "cooked − hand"), ("control_diff_points", "cooked in hand's split − hand")):
        se = res.get(f"{key}_se") if means else None
        lines.append(f"| {label} (points{means}{', ± paired s.e.' if se else ''}) | | "
                     + " | ".join(_f(res[key][KEYS[c]], "+.1f") + (f" ± {se[KEYS[c]]:.1f}" if se else "")
                                  for c in cols) + " | | | |")
    lines += ["", "| cook | inputs kept / read | keep rate | inputs dropped by | candidates survived / generated | "
                  "candidates dropped by | golden set | reasoning = rule text |", "|---" * 8 + "|"]
    for name, c in cooks.items():
        drop = ", ".join(f"{k} {v}" for k, v in c["dropped"].items() if v) or "none"
        cdrop = ", ".join(f"{k} {v}" for k, v in c["candidates_dropped"].items() if v) or "none"
        gold = ("off" if c["prompt_passed"] is None else ("passed" if c["prompt_passed"] else "refused")) + \
            (f", agreement {c['agreement']:.2f}" if c["agreement"] is not None else "")
        lines.append(f"| {name} | {c['kept']} / {c['read']} | {_f(c['keep_rate'])} | {drop} | "
                     f"{c['candidates_survived']} / {c['candidates']} | {cdrop} | {gold} | "
                     f"{_f(c['reasoning_exact'])} |")
    fams = ", ".join(f"{k} {v:.3f}" for k, v in sorted(teacher["exact_match_by_family"].items()))
    lines += ["", f"teacher ({teacher['steps']} steps on {teacher['rows']} instruction rows, "
                  f"{teacher['wall_s']:.0f} s): held-out exact match {teacher['exact_match']:.3f} ({fams})"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None, help="rows, runs, cooked corpus and logs; finished runs are reused "
                                                    "(default: runs/cook_sft, --fast: runs/cook_sft_fast)")
    ap.add_argument("--fast", action="store_true", help="tiny counts, relaxed cook: a smoke run, not a measurement")
    ap.add_argument("--rows", type=int, default=None,
                    help=f"raw rows per task, hand-built = cook input (default: {DEFAULTS['rows']})")
    ap.add_argument("--test-rows", type=int, default=None,
                    help=f"shared held-out test rows per task (default: {DEFAULTS['test_rows']})")
    ap.add_argument("--teacher-rows", type=int, default=None,
                    help=f"teacher-set rows per task (x 3 prompt variations + 1 verifier row; default: "
                         f"{DEFAULTS['teacher_rows']})")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help=f"teacher training steps (default: {DEFAULTS['teacher_steps']})")
    ap.add_argument("--teacher-seq-len", type=int, default=352, help="teacher train.seq_len (default: %(default)s)")
    ap.add_argument("--sft-steps", type=int, default=None, help=f"steps of each arm (default: {DEFAULTS['sft_steps']})")
    ap.add_argument("--seeds", type=int, default=1,
                    help="training seeds per arm (train.seed 1..N, the same for both arms; the verdict is on the "
                         "means; default: %(default)s)")
    ap.add_argument("--draws", type=int, default=1,
                    help="split / order draws per arm (sft.data_seed + 0..N-1, module docstring; default: %(default)s)")
    ap.add_argument("--parallel", type=int, default=2, help="cooks / arm runs at a time (default: %(default)s)")
    ap.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override of both SFT arms (and of the raw rows' synthetic settings)")
    ap.add_argument("--teacher-set", action="append", default=[], metavar="KEY=VALUE", help="extra teacher override")
    ap.add_argument("--cook-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra cook setting (CookConfig key=value)")
    args = ap.parse_args()
    sizes = {k: (FAST_SIZES if args.fast else DEFAULTS)[k] if getattr(args, k) is None else getattr(args, k)
             for k in DEFAULTS}
    if min(sizes.values()) < 1 or args.parallel < 1 or args.seeds < 1 or args.draws < 1:
        ap.error("--rows, --test-rows, --teacher-rows, --teacher-steps, --sft-steps, --seeds, --draws, --parallel: "
                 "expected >= 1")
    work = Path(args.workdir or ("runs/cook_sft_fast" if args.fast else "runs/cook_sft")).resolve()
    cook_set = [*COOK_SET, *(FAST_COOK if args.fast else []), *args.cook_set]
    try:
        cook_cfg = CookConfig.load(None, cook_set)  # checked before anything runs
    except (ValueError, TypeError) as exc:
        ap.error(f"--cook-set: {exc}")
    fast = FAST if args.fast else []
    for sub in ("data", "cook"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # 0. raw rows, shared test rows, teacher set
    cfg = JobConfig.load(CFG, args.common)
    seed = cfg.sft.data_seed
    data, raw, tests = work / "data", {}, {}
    teach: list[dict] = []
    for name in TASKS:
        raw[name] = raw_rows(cfg, name, sizes["rows"], seed)
        write_rows(data / f"{name}.raw_{sizes['rows']}.jsonl", raw[name])
        tests[name] = write_rows(data / f"{name}.test_{sizes['test_rows']}.jsonl",
                                 raw_rows(cfg, name, sizes["test_rows"], seed + 1))
        teach += teacher_rows(name, raw_rows(cfg, name, sizes["teacher_rows"], seed + 2), cook_cfg.answer, True)
    general = write_rows(data / f"teacher_{sizes['teacher_rows']}_{cook_cfg.answer}.jsonl", teach)

    # the hand arm needs no cook: it trains while the teacher trains and the cook runs (one pool for all runs)
    steps_s = sizes["sft_steps"]
    common = [*fast, f"train.steps={steps_s}", f"sft.test_rows={sizes['test_rows']}",
              *([] if args.fast else [f"sft.eval_every={min(500, steps_s)}"]), *args.common]
    raw_files = {n: data / f"{n}.raw_{sizes['rows']}.jsonl" for n in TASKS}
    jobs = [(d, s) for d in range(args.draws) for s in range(args.seeds)]

    def drawn(extra: list[str], d: int) -> list[str]:
        return extra if d == 0 else [*extra, f"sft.data_seed={seed + d}"]

    def run_dir(arm: str, d: int) -> Path:
        return work / arm if d == 0 else work / arm / f"draw{d}"

    def submit(arm: str) -> None:
        runs.update({(arm, d, s): pool.submit(run_seed, s, run_dir(arm, d), arms[arm][d]) for d, s in jobs})

    hand = [*common, *[x for n in TASKS for x in files(n, raw_files[n], tests[n])]]
    arms = {"hand": [drawn(hand, d) for d in range(args.draws)]}
    pool, runs = ThreadPoolExecutor(max_workers=args.parallel), {}
    try:  # a failed stage stops the script at once: queued runs are cancelled (running ones still finish)
        submit("hand")

        # 1. teacher
        steps_t = sizes["teacher_steps"]
        t_over = [*fast, "sft.tasks=[general]", f"sft.general_path={general}",
                  "sft.tokenizer_tasks=[query_ad, ad_user]",
                  f"train.steps={steps_t}", f"train.seq_len={args.teacher_seq_len}", f"sft.eval_every={steps_t}",
                  f"sft.test_rows={8 if args.fast else 64}", "checkpoint.save_at_end=true", *args.teacher_set]
        t_wall = run_seed(0, work / "teacher", t_over)
        teacher_dir = work / "teacher" / "seed0"
        teacher = {**teacher_report(teacher_dir), "steps": steps_t, "rows": len(teach), "wall_s": round(t_wall, 1)}

        # 2. cook, the tasks in parallel
        futures = {n: pool.submit(cook, n, raw_files[n], teacher_dir, work / "cook" / n, cook_set) for n in TASKS}
        reports = {n: f.result() for n, f in futures.items()}
        cooks = {n: cook_summary(n, reports[n], raw[n]) for n in TASKS}

        # 3. the cooked arms (same init and recipe as the hand arm): the cook's splits (one per draw), and the control
        arms["cooked"] = []
        for d in range(args.draws):
            split = {n: cook_redrawn(n, raw_files[n], teacher_dir, work / "cook" / n, d, cook_set)["sft_files"][n]
                     for n in TASKS}
            arms["cooked"].append(drawn([*common, *[x for n in TASKS for x in files(
                n, Path(split[n]["train"]), tests[n], Path(split[n]["val"]))]], d))
        arms["cooked_hand_split"] = []
        by_input = {n: cooked_by_input(reports[n]["sft_files"][n]) for n in TASKS}
        for d in range(args.draws):
            hand_cfg = JobConfig.load(CFG, arms["hand"][d]).sft
            ctrl = {n: in_hand_split(n, hand_cfg.files[n], hand_cfg.data_seed, by_input[n], data,
                                     f".draw{d}" if d else "") for n in TASKS}
            arms["cooked_hand_split"].append(
                drawn([*common, *[x for n in TASKS for x in files(n, ctrl[n][0], tests[n], ctrl[n][1])]], d))
        submit("cooked")
        submit("cooked_hand_split")
        walls = {key: f.result() for key, f in runs.items()}
    finally:
        pool.shutdown(cancel_futures=True)
    per_seed = {k: [read_seed(run_dir(k, d) / f"seed{s}") for d, s in jobs] for k, _ in ARMS}
    res = {k: {**aggregate(per_seed[k]), **trained(arms[k][0]), "steps": steps_s,
               "wall_s": round(sum(walls[k, d, s] for d, s in jobs), 1)} for k, _ in ARMS}
    diff = {key: (res["cooked"][key] - res["hand"][key]) * 100 for key in KEYS.values()}
    res["diff_points"] = diff
    control = {key: (res["cooked_hand_split"][key] - res["hand"][key]) * 100 for key in KEYS.values()}
    res["control_diff_points"] = control
    paired = {arm: [{key: (c[key] - h[key]) * 100 for key in KEYS.values()}
                    for h, c in zip(res["hand"]["per_seed"], res[arm]["per_seed"], strict=True)]
              for arm in ("cooked", "cooked_hand_split")}
    res["diff_points_se"], res["control_diff_points_se"] = (paired_se(paired[a])
                                                            for a in ("cooked", "cooked_hand_split"))
    max_key = max(BACC, key=lambda k: abs(diff[k]))
    max_diff = abs(diff[max_key])
    labels = [(f"draw {d}, " if args.draws > 1 else "") + f"train.seed {s + 1}" for d, s in jobs]
    print(table(res, cooks, teacher, labels))
    worst_key = min(BACC, key=lambda k: diff[k])
    print(f"max |cooked − hand| BACC: {max_diff:.2f} points ({max_key}; target ≤ {TARGET_POINTS:.0f}: "
          f"{'met' if max_diff <= TARGET_POINTS else 'NOT met'}){'  [--fast: smoke run]' if args.fast else ''}")
    print(f"cooked − hand BACC, the lowest view: {diff[worst_key]:+.2f} points ({worst_key}; cooked at most "
          f"{TARGET_POINTS:.0f} below hand: {'met' if diff[worst_key] >= -TARGET_POINTS else 'NOT met'})")
    print(f"workdir: {work}")
    out = {"arms": {k: res[k] for k, _ in ARMS}, "diff_points": diff, "diff_points_per_seed": paired["cooked"],
           "diff_points_se": res["diff_points_se"], "control_diff_points": control,
           "control_diff_points_se": res["control_diff_points_se"],
           "max_bacc_diff_points": max_diff, "max_bacc_diff_metric": max_key,
           "lowest_bacc_diff_points": diff[worst_key], "lowest_bacc_diff_metric": worst_key,
           "not_below_target": diff[worst_key] >= -TARGET_POINTS, "seeds": args.seeds,
           "draws": args.draws, "runs": [list(j) for j in jobs],
           "target_points": TARGET_POINTS, "within_target": max_diff <= TARGET_POINTS, "cook": cooks,
           "teacher": teacher, **sizes, "cook_settings": cook_set, "fast": args.fast,
           "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
