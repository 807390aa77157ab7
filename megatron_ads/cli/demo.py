"""``megatron-ads demo [--out DIR] [--fast]``: the whole product on the CPU default, verb by verb.

Every stage is a real ``megatron-ads`` command (``cli.main``), run in order; each one's console output is
kept in ``OUT/logs/`` and its files under ``OUT`` (``OUT/README.md``, written by the demo, says what each is):

1. ``init-model``: a tiny DeepSeek-V3 in DeepSeek's FP8 block-scaled format (random weights, real architecture);
2. ``plan``: the paper's 248-GPU layout for the full DeepSeek-V3;
3. ``convert hf-to-mcore`` to Megatron shards, pp=2 x ep=2 with a dense-only first stage; back to HF FP8;
   ``verify checkpoints`` (the round trip is exact) and ``verify parity`` (4 gloo ranks, and 1 process);
4. ``data synth`` raw labeled rows (query_ad, ad_user, query_gen) and ``cook`` them into the reasoning corpus
   (demo settings: a random teacher — the converted tiny model, teacher and verifier at once, with the relaxed
   thresholds of ``COOK_RELAXED``, since a random model cannot pass the spec's golden-set validation);
5. ``train sft`` on the cooked corpus (``sft.files``, all three tasks) from the converted shards, 4 gloo ranks
   (pp=2 x ep=2, dp=2: the layout of the shards), AdNanny reweighting, held-out report;
6. ``train grpo`` from the SFT checkpoint (1 process): recall@K + format for query_gen, label + format for the
   labeling tasks, prompts from the synthetic training rows;
7. ``convert mcore-to-hf`` of the GRPO checkpoint, BF16 and FP8;
8. ``label`` fresh rows with the FP8 export (label-only on query_ad / ad_user, reasoning on a few query_ad rows and
   on query_gen) and ``eval`` them (markdown tables, a bar chart);
9. the summary table: stage, exit code, seconds, key figure (also ``OUT/summary.md``).

``--fast``: the same chain at smoke sizes (the test's version, a few minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from megatron_ads import cli
from megatron_ads.runtime.log import get_logger

log = get_logger("demo")

CONFIGS = Path(__file__).resolve().parents[2] / "launch" / "configs"
SFT_CONFIG, GRPO_CONFIG = CONFIGS / "sft_tiny_cpu.yaml", CONFIGS / "grpo_tiny_cpu.yaml"
TASKS = ("query_ad", "ad_user", "query_gen")
COOK_RELAXED = ["answer=gold", "close_truncated=true", "min_entity_overlap=0", "grounding=false",
                "self_consistency_min=0", "verifier_min=0", "golden_rows=0", "n_candidates=2"]
"""Cook thresholds for a random teacher (the demo's): the gold answer is appended to the teacher's reasoning,
no golden-set validation, no self-consistency / verifier / entity-overlap floor, no grounding check, 2
candidates per input."""
GRPO_REWARDS = ("grpo.rewards={query_ad: {label: 1.0, format: 0.5}, ad_user: {label: 1.0, format: 0.5}, "
                "query_gen: {recall_at_k: 1.0, format: 0.5}}")


@dataclass(frozen=True)
class Sizes:
    """Row counts and step counts of one demo size."""

    raw_rows: int  # rows per task cooked
    cook_tokens: int  # teacher reasoning tokens per candidate
    sft_steps: int
    grpo_steps: int
    grpo_tokens: int  # rollout length
    label_rows: int  # fresh rows per task labeled with the FP8 export
    reasoning_rows: int  # of those, rows labeled in reasoning mode
    gen_tokens: int  # reasoning-mode / query_gen generation length


FAST = Sizes(raw_rows=10, cook_tokens=8, sft_steps=4, grpo_steps=2, grpo_tokens=12, label_rows=8,
             reasoning_rows=2, gen_tokens=12)
FULL = Sizes(raw_rows=120, cook_tokens=32, sft_steps=800, grpo_steps=40, grpo_tokens=32, label_rows=128,
             reasoning_rows=8, gen_tokens=48)


def register(p) -> None:
    p.add_argument("--out", default=None, help="run directory (default: a temporary one); must not hold a demo")
    p.add_argument("--flavor", default="tiny_deepseek_v3", help="named model flavor to build the demo on (default: %(default)s)")
    p.add_argument("--fast", action="store_true", help="smoke sizes (a few minutes on 2 cores; the tests' version)")
    p.set_defaults(func=run)


def summary(rows: list[tuple[str, int, float, str]]) -> str:
    """The stages run so far as a markdown table: stage, exit code, seconds, key figure."""
    lines = ["| stage | exit | seconds | key figure |", "|---|---:|---:|---|"]
    lines += [f"| {title} | {rc} | {secs:.1f} | {fig} |" for title, rc, secs, fig in rows]
    lines.append(f"| total | {max(rc for _, rc, _, _ in rows)} | {sum(s for _, _, s, _ in rows):.1f} | |")
    return "\n".join(lines)


class _Tee(io.TextIOBase):
    """Writes to the console and to a log file (a stage's stdout)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def _json_of(text: str) -> dict:
    """The JSON object a ``--json`` command printed (the last top-level object in ``text``)."""
    start = text.find("{")
    return json.loads(text[start:]) if start >= 0 else {}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(x, nd: int = 3) -> str:
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) else "n/a"


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _sft_figure(out: Path) -> str:
    rep = _read_json(out / "sft" / "eval" / "report.json")
    qa, au = rep.get("query_ad", {}), rep.get("ad_user", {})
    return (f"held-out query_ad Bad BACC {_fmt(qa.get('bad_view', {}).get('BACC'))}, "
            f"ad_user AUC {_fmt(au.get('AUC'))}")


def _grpo_figure(out: Path) -> str:
    """Mean over the GRPO steps of the query_gen recall@K reward and the query_ad label reward."""
    path = out / "grpo" / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    parts = []
    for key, name in (("reward/query_gen/recall_at_k/mean", "rollout recall@K"),
                      ("reward/query_ad/label/mean", "query_ad label reward"),
                      ("reward/ad_user/label/mean", "ad_user label reward")):
        xs = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if xs:
            parts.append(f"{name} {sum(xs) / len(xs):.3f}")
    return ", ".join(parts) or "n/a"


README_ENTRIES = [
    ("summary.md", "the closing summary table: stage, exit code, seconds, key figure"),
    ("logs/", "each stage's console output (NN_stage.txt; JSON for the --json stages)"),
    ("hf_{flavor}/", "init-model: the tiny DeepSeek-V3 HF checkpoint, FP8 block-scaled (random weights), "
                     "config.json, tokenizer"),
    ("mcore_pp2_ep2/", "convert hf-to-mcore: Megatron shards for pp=2 x ep=2 (dense-only first stage), layout.json"),
    ("hf_{flavor}_roundtrip_fp8/", "convert mcore-to-hf: the shards back to HF FP8 (verify checkpoints: equal)"),
    ("raw/", "data synth: rule-labeled raw rows per task (query_ad, ad_user, query_gen) that cook reads"),
    ("cooked/", "cook: TASK.{train,val,test}.jsonl (rows with teacher reasoning), TASK.journal.jsonl (every "
                "candidate and the filter that dropped it), cook_report.json, plots/. Demo settings: a random "
                "teacher (the converted tiny model as teacher and verifier, relaxed thresholds, see below)"),
    ("sft/", "train sft: config.yaml, metrics.jsonl, val_metrics.jsonl, plots/, eval/report.{md,json} (the "
             "cooked corpus's held-out test split), checkpoints/ (torch_dist), logs/"),
    ("grpo/", "train grpo: config.yaml, metrics.jsonl (rewards per task and channel, KL, clip fractions), plots/, "
              "checkpoints/"),
    ("export_bf16/", "convert mcore-to-hf of the GRPO checkpoint: HF BF16"),
    ("export_fp8/", "convert mcore-to-hf of the GRPO checkpoint: HF FP8 (128x128 block-scaled, DeepSeek format)"),
    ("label/", "fresh synthetic rows (TASK.rows.jsonl, also the gold files) and the FP8 export's predictions: "
               "TASK.pred.jsonl (label-only), TASK.reasoning.pred.jsonl (reasoning mode)"),
    ("eval/", "eval: TASK.md (metric tables), metrics.json (all tasks), plots/headline.png"),
]


def write_readme(out: Path, flavor: str, sizes: Sizes, fast: bool, rows: list) -> Path:
    """``OUT/README.md``: what each file/folder of the run directory is, the settings, and the summary."""
    lines = [f"# megatron-ads demo run ({'--fast' if fast else 'full'})", "",
             "Every stage is a `megatron-ads` verb; its console output is in `logs/`.", "", "## Files", ""]
    for name, what in README_ENTRIES:
        name = name.format(flavor=flavor)
        if (out / name.rstrip("/")).exists():
            lines.append(f"- `{name}`: {what}")
    lines += ["", "## Settings", "",
              f"- sizes: {sizes}",
              "- demo settings: a random teacher. `cook` uses the converted tiny random model as teacher and "
              "verifier, so the spec-default golden-set prompt validation cannot pass; the demo cooks with "
              f"`{' '.join(COOK_RELAXED)}` (the gold answer follows the teacher's text; no validation, no "
              "self-consistency / verifier floors). The cooked reasoning is therefore noise; the corpus "
              "exercises the pipeline, not the teacher.",
              "- `train sft` reads only the cooked corpus (`sft.files` for query_ad, ad_user, query_gen), from the "
              "converted pp=2 x ep=2 shards on 4 gloo ranks.",
              "- `train grpo` starts from the SFT checkpoint (1 process); prompts come from the synthetic training "
              "rows of the three tasks; rewards: query_gen recall@K + format, query_ad / ad_user label + format.",
              "- `label` / `eval` run on fresh synthetic rows (seed 7) the models never saw.",
              "", "## Summary", "", summary(rows) if rows else "(no stage ran)", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def run(args) -> int:
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="megatron_ads_demo_"))
    out.mkdir(parents=True, exist_ok=True)
    sz = FAST if args.fast else FULL
    hf = out / f"hf_{args.flavor}"
    mcore, back = out / "mcore_pp2_ep2", out / f"hf_{args.flavor}_roundtrip_fp8"
    raw, cooked, sft, grpo = out / "raw", out / "cooked", out / "sft", out / "grpo"
    bf16, fp8, lab, ev = out / "export_bf16", out / "export_fp8", out / "label", out / "eval"
    if any(p.exists() for p in (hf, mcore, back, cooked, sft, grpo)):
        raise FileExistsError(f"{out}: holds an earlier demo's outputs; pass a new --out")
    logs = out / "logs"
    for d in (logs, raw, lab, ev):
        d.mkdir(parents=True, exist_ok=True)
    lvl = ["--log-level", args.log_level]
    rows: list[tuple[str, int, float, str]] = []
    state: dict = {}

    def stage(label: str, argv: list[str], figure: Callable[[str], str] = lambda _: "", quiet: bool = False) -> int:
        """Run one verb; ``quiet``: its stdout (JSON) goes only to the log file. Appends the summary row."""
        logfile = logs / f"{len(rows) + 1:02d}_{re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')}.txt"
        log.info("%s: megatron-ads %s", label, " ".join(argv))
        buf = io.StringIO()
        sink = buf if quiet else _Tee(sys.stdout, buf)
        t0 = time.time()
        with contextlib.redirect_stdout(sink):
            rc = cli.main([*lvl, *argv])
        secs = time.time() - t0
        text = buf.getvalue()
        logfile.write_text(text)
        try:
            fig = figure(text) if rc == 0 else ""
        except (KeyError, ValueError, TypeError, IndexError, OSError) as exc:  # a figure is a report, not a check
            fig = f"n/a ({type(exc).__name__})"
        rows.append((label, rc, secs, fig))
        log.info("%s: exit %d in %.1fs%s", label, rc, secs, f" ({fig})" if fig else "")
        return rc

    def parity(text: str) -> str:
        r = _json_of(text)
        return f"max abs logit diff {r['max_abs_diff']:.2e}, argmax agreement {r['argmax_agreement']:.3f}"

    def label_fig(text: str) -> str:
        r = _json_of(text)
        state.setdefault("label", []).append(r)
        return f"{r['labeled']} rows, {r['cost']['samples_per_s']} samples/s, {r['parse_failed']} unparsed"

    def eval_fig(name: str) -> Callable[[str], str]:
        def f(text: str) -> str:
            r = _json_of(text)
            state.setdefault("eval", {})[name] = r
            from megatron_ads.eval.metrics import markdown
            from megatron_ads.data.tasks import task

            (ev / f"{name}.md").write_text(markdown(task(name).metric, r) + "\n")
            if name == "query_ad":
                return f"FP8 query_ad Bad BACC {r['bad_view']['BACC']:.3f} (n={r.get('n')})"
            if name == "ad_user":
                return f"FP8 ad_user AUC {_fmt(r.get('AUC'))}, BACC {_fmt(r.get('BACC'))}"
            return f"FP8 query_gen recall@K {_fmt(r.get('recall_at_k'))}, relevance {_fmt(r.get('Relevance'))}"
        return f

    cook_cfg = [*COOK_RELAXED, f"max_new_tokens={sz.cook_tokens}", "batch_size=10"]
    files = [f"sft.files.{t}.{k}={cooked / f'{t}.{k}.jsonl'}" for t in TASKS for k in ("train", "val", "test")]
    tasks = f"sft.tasks=[{','.join(TASKS)}]"
    steps: list[tuple[str, list[str], Callable[[str], str], bool]] = [
        ("init-model (FP8)", ["init-model", "--flavor", args.flavor, "--out", str(hf), "--seed", "0", "--fp8"],
         lambda _: f"{_dir_mb(hf):.1f} MB", False),
        ("plan (DeepSeek-V3, 248 GPUs)",
         ["plan", "--flavor", "deepseek_v3", "--nodes", "31", "--gpus-per-node", "8", "--gpu-mem-gb", "80"],
         lambda t: (re.search(r"pp=\d+ ep=\d+ dp=\d+", t) or re.search(r"$", "")).group(0), False),
        ("convert hf-to-mcore (pp2 x ep2)",
         ["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(mcore), "--pp", "2", "--ep", "2",
          "--stage-layers", "1,3", "--quiet"], lambda _: f"{_dir_mb(mcore):.1f} MB", False),
        ("convert mcore-to-hf (FP8)", ["convert", "mcore-to-hf", "--mcore", str(mcore), "--out", str(back),
                                       "--dtype", "fp8", "--quiet"], lambda _: "", False),
        ("verify checkpoints", ["verify", "checkpoints", str(hf), str(back), "--json"],
         lambda t: (lambda r: f"{'EQUAL' if r['equal'] else 'DIFFERENT'}: {r['tensors_a']} tensors, max diff "
                              f"{r['max_abs_diff']}")(_json_of(t)), True),
        ("verify parity (4 ranks)", ["verify", "parity", "--hf", str(hf), "--mcore", str(mcore), "--pp", "2",
                                     "--ep", "2", "--stage-layers", "1,3", "--json"], parity, True),
        ("verify parity (1 process)", ["verify", "parity", "--hf", str(hf), "--json"], parity, True),
        *[(f"data synth {t}", ["data", "synth", "--task", t, "--n", str(sz.raw_rows), "--out", str(raw / f"{t}.jsonl"),
                               "--seed", "0"], lambda _: "", False) for t in TASKS],
        *[(f"cook {t}", ["cook", "--task", t, "--input", str(raw / f"{t}.jsonl"), "--teacher", str(hf),
                         "--verifier", str(hf), "--out", str(cooked), *cook_cfg, "--json"],
           (lambda t: lambda _: (lambda r: f"{r['rows']['train']}/{r['rows']['val']}/{r['rows']['test']} "
                                 "train/val/test rows")(_read_json(cooked / "cook_report.json")["tasks"][t]))(t),
           True) for t in TASKS],
        ("train sft (4 ranks, cooked corpus)",
         ["train", "sft", "--config", str(SFT_CONFIG), "--nproc", "4", f"out_dir={sft}", "model.init=mcore",
          f"model.path={mcore}", "parallel.pp=2", "parallel.ep=2", "parallel.stage_layers=[1,3]",
          f"train.steps={sz.sft_steps}", "train.seq_len=256", "train.micro_batch=2", "train.num_microbatches=2",
          f"train.log_every={max(1, sz.sft_steps // 4)}", f"optim.warmup_steps={max(2, sz.sft_steps // 20)}", "sft.val_rows=4",
          f"sft.eval_every={max(2, sz.sft_steps // 3)}", "checkpoint.every=0", "checkpoint.save_at_end=true",
          tasks, *files], lambda _: _sft_figure(out), False),
        ("train grpo (1 process)",
         ["train", "grpo", "--config", str(GRPO_CONFIG), f"out_dir={grpo}", "model.init=mcore",
          f"model.path={sft / 'checkpoints'}", tasks, GRPO_REWARDS, f"train.steps={sz.grpo_steps}",
          "sft.train_size=300", "train.seq_len=192", f"grpo.max_new_tokens={sz.grpo_tokens}", "grpo.group_size=4",
          "train.micro_batch=8", "checkpoint.every=0", "checkpoint.save_at_end=true"],
         lambda _: _grpo_figure(out), False),
        ("export HF BF16", ["convert", "mcore-to-hf", "--mcore", str(grpo / "checkpoints"), "--out", str(bf16),
                            "--dtype", "bf16", "--quiet"], lambda _: f"{_dir_mb(bf16):.1f} MB", False),
        ("export HF FP8", ["convert", "mcore-to-hf", "--mcore", str(grpo / "checkpoints"), "--out", str(fp8),
                           "--dtype", "fp8", "--quiet"], lambda _: f"{_dir_mb(fp8):.1f} MB", False),
        *[(f"data synth {t} (fresh rows)", ["data", "synth", "--task", t, "--n", str(sz.label_rows),
                                            "--out", str(lab / f"{t}.rows.jsonl"), "--seed", "7"],
           lambda _: "", False) for t in TASKS],
    ]
    for t in ("query_ad", "ad_user"):
        steps.append((f"label {t} (FP8, label-only)",
                      ["label", "--model", str(fp8), "--input", str(lab / f"{t}.rows.jsonl"), "--output",
                       str(lab / f"{t}.pred.jsonl"), "--task", t, "--precision", "fp8", "--batch-size", "8",
                       "--gpu-cost-per-s", "0.001", "--json"], label_fig, True))
    reasoning_in = lab / "query_ad.reasoning.rows.jsonl"
    steps.append(("label query_ad (FP8, reasoning)",
                  ["label", "--model", str(fp8), "--input", str(reasoning_in), "--output",
                   str(lab / "query_ad.reasoning.pred.jsonl"), "--task", "query_ad", "--precision", "fp8",
                   "--mode", "reasoning", "--max-new-tokens", str(sz.gen_tokens), "--json"], label_fig, True))
    steps.append(("label query_gen (FP8, reasoning)",
                  ["label", "--model", str(fp8), "--input", str(lab / "query_gen.rows.jsonl"), "--output",
                   str(lab / "query_gen.pred.jsonl"), "--task", "query_gen", "--precision", "fp8",
                   "--mode", "reasoning", "--max-new-tokens", str(sz.gen_tokens), "--batch-size", "8", "--json"],
                  label_fig, True))
    for t in TASKS:
        steps.append((f"eval {t}", ["eval", "--task", t, "--pred", str(lab / f"{t}.pred.jsonl"),
                                    "--gold", str(lab / f"{t}.rows.jsonl"), "--json"], eval_fig(t), True))

    for label, argv, figure, quiet in steps:
        if argv[0] == "label" and str(reasoning_in) in argv and not reasoning_in.exists():
            src = [json.loads(x) for x in (lab / "query_ad.rows.jsonl").read_text().splitlines()]
            _write_jsonl(reasoning_in, src[:sz.reasoning_rows])
        rc = stage(label, argv, figure, quiet)
        if rc:
            write_readme(out, args.flavor, sz, args.fast, rows)
            print(summary(rows))
            log.error("demo stopped: stage '%s' exited %d; artifacts so far in %s", label, rc, out)
            return rc
    t0 = time.time()
    _eval_outputs(ev, state.get("eval", {}))
    rows.append(("eval tables + plots", 0, time.time() - t0, f"{len(list(ev.glob('*.md')))} tables, eval/plots/"))
    (out / "summary.md").write_text(summary(rows) + "\n")
    write_readme(out, args.flavor, sz, args.fast, rows)
    print(summary(rows))
    print(f"all stages passed; artifacts in {out} (README.md says what each file is)")
    return 0


def _eval_outputs(ev: Path, metrics: dict) -> None:
    """``eval/metrics.json`` and a bar chart of each task's headline figure (``eval.plots.bar_chart``)."""
    from megatron_ads.eval.plots import bar_chart

    (ev / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    (ev / "plots").mkdir(parents=True, exist_ok=True)
    head = {}
    if "query_ad" in metrics:
        head["query_ad Bad BACC"] = metrics["query_ad"]["bad_view"]["BACC"]
    for name, key, title in (("ad_user", "AUC", "ad_user AUC"), ("query_gen", "recall_at_k", "query_gen recall@K")):
        v = metrics.get(name, {}).get(key)
        if isinstance(v, (int, float)):
            head[title] = v
    if head:
        bar_chart(ev / "plots" / "headline.png", head, "FP8 export on fresh rows: headline metrics", ylabel="value")
