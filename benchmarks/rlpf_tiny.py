"""RLPF / AdLlama tiny (issue 15; rlpf_adllama.txt, ``papers_spec.md`` §B.3): GRPO against a Bradley–Terry
performance reward model with the length penalty vs without it — does the penalty keep the ad text short while the
policy still raises the RM's score, and what happens to the true CTR?

    python benchmarks/rlpf_tiny.py [--seeds N] [--fast] [--workdir DIR] [--sft-steps S] [--rm-steps S]
        [--grpo-steps S] [--baseline-steps S] [--train-size N] [--lr LR] [--L0 L] [--lam LAM] [--smooth W]
        [--plot PNG] [--sft-set key=value ...] [--rm-set key=value ...] [--grpo-set key=value ...]
                                                                                            (make rlpf-tiny)

Stages (each a ``megatron-ads`` subprocess in ``--workdir``, reused when finished with the same command and
refused when finished with another: ``benchmarks/relate_tiny.py``'s ``_stage``):

1. **SFT** (once, ``train.seed=1``, ``--sft-steps`` default 600): the policy, ``launch/configs/sft_tiny_cpu.yaml``
   on ad_rewrite alone (label-only targets; ``--train-size`` synthetic rows, default 4 000) — the SFT stage of
   ``relate_tiny.py`` with clean source ads (``noisy_rewrite_rate`` 0).
2. **Performance RM** (once): ``train rm`` (``launch/configs/rm_tiny_cpu.yaml``: Bradley–Terry on pairs mined from
   synthetic multitext logs of 4 000 ads, ``rm.ad_effect`` 1) for ``--rm-steps`` (default 1 000) from the SFT
   checkpoint (the paper's RM is the policy's backbone with a scalar head; the SFT tokenizer comes along). Its
   held-out pairwise accuracy is reported.
3. **SFT reference** (once): the GRPO pipeline below at ``optim.lr=1e-12`` for ``--baseline-steps`` (10) steps:
   the SFT model's own RM score, length and true CTR on the same kind of prompts and rollouts.
4. **Two GRPO arms** per seed s (``train.seed = 1 + s``: the same prompts and sampling seeds, so step 1 is the same
   batch in both), from the SFT checkpoint, recipe ``launch/configs/grpo_rlpf_tiny_cpu.yaml`` (reward ``perf_rm``
   alone, G = 5, 2 prompts per step, KL k3 β 0.02, ``--lr`` default 1e-4, min 1/10 of it) for ``--grpo-steps``
   (default 40), ``grpo.resources.perf_model`` = the RM run:
   **penalty**: r = RM − ``--lam`` · max(0, len − ``--L0``) (defaults 0.02 per character beyond 90: the
   ``perf_rm`` defaults), **no_penalty**: ``lam`` = 0 (r = RM).

Per step, from each run's ``metrics.jsonl`` and ``rollouts.jsonl`` (``grpo.save_rollouts``):

- ``rm_score``: the RM's mean score of the step's well-formed rollouts (``reward/ad_rewrite/perf_rm/score/mean``;
  the reward without the penalty);
- ``length``: mean characters of their scored text (title + ". " + description: what the penalty counts);
- ``tokens``: mean generated tokens of all rollouts (``response_len_mean``; rationale and tags included);
- ``true_ctr``: the synthetic world's hidden click probability of each rollout's ad text for its keyword
  (``data.synthetic.true_ctr``, the function the multitext logs were drawn from), 0 for a malformed one (as
  ``megatron-ads eval --task ad_rewrite`` counts it);
- ``parse_rate``: share of rollouts with a title and a description; ``reward``, ``penalty``: perf_rm's means.

**Final** values: the mean over the last ``--smooth`` steps (default 5), then over seeds. The plot
(``benchmarks/plots/rlpf_tiny.png``; with ``--fast`` in the workdir) shows both arms' curves of RM score, length,
true CTR and generated tokens (trailing mean over ``--smooth`` steps; per-seed curves faint), the SFT reference and
L0. The final table is printed, and the last line printed is one JSON object: ``arms`` ({penalty, no_penalty}:
``final_<metric>`` and, with ``--seeds`` > 1, ``final_<metric>_per_seed``), ``sft`` (the reference's means),
``rm`` (the RM's held-out metrics), the settings (``L0``, ``lam``, ``lr``, ``seeds``, ``sft_steps``, ``rm_steps``,
``grpo_steps``, ``baseline_steps``, ``smooth``, ``fast``), ``plot``, the stage times and ``wall_s``; NaN as null.

``--fast``: a few steps of everything on tiny data (the smoke test ``tests/distributed/test_bench_rlpf_tiny.py``):
a check that the pipeline runs, not a measurement. Its 4-step SFT model's 16-token rollouts never parse, so the
fast GRPO runs score the raw completion (``grpo.reward_params.perf_rm.fields=[]``) to exercise the RM path.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from relate_tiny import CLI, _json_safe, _stage, _wall, data_overrides, mean_curve, plot_arms, sft, smooth

from megatron_ads.data.synthetic import ad_text, true_ctr
from megatron_ads.data.tasks import parse_output, task

REPO = Path(__file__).resolve().parents[1]
RM_CFG = REPO / "launch" / "configs" / "rm_tiny_cpu.yaml"
GRPO_CFG = REPO / "launch" / "configs" / "grpo_rlpf_tiny_cpu.yaml"
TASK = "ad_rewrite"
ARMS = ("penalty", "no_penalty")
METRICS = ("rm_score", "length", "tokens", "true_ctr", "parse_rate", "reward", "penalty")
FAST_RM = ["rm.n_ads=200", "rm.val_pairs=8", "rm.test_pairs=8", "train.micro_batch=8", "train.log_every=1",
           "optim.warmup_steps=1"]
FAST_GRPO = ["train.seq_len=192", "grpo.max_new_tokens=16", "grpo.reward_params.perf_rm.fields=[]"]


def rm_stage(args, root: Path, sft_run: Path) -> Path:
    """The Bradley–Terry performance reward model from the SFT checkpoint (stage 2); returns its run directory."""
    out = root / "rm"
    cmd = [f"out_dir={out}", "model.init=mcore", f"model.path={sft_run / 'checkpoints'}", "rm.objective=bt",
           "train.seed=1", f"train.steps={args.rm_steps}", "checkpoint.every=0", "checkpoint.save_at_end=true",
           "resume=none", f"rm.eval_every={args.rm_steps if args.fast else max(1, args.rm_steps // 5)}"]
    cmd += (FAST_RM if args.fast else []) + args.rm_set
    return _stage(out, [*CLI, "train", "rm", "--config", str(RM_CFG), *cmd], root / "rm.log", root)


def grpo(args, root: Path, sft_run: Path, rm: Path, out: Path, seed: int, lam: float, steps: int, lr: float) -> Path:
    """One GRPO run against the RM from the SFT checkpoint (penalty λ = ``lam``); returns its directory."""
    cmd = [f"out_dir={out}", "model.init=mcore", f"model.path={sft_run / 'checkpoints'}",
           *data_overrides(args, args.noisy_rate), f"grpo.rewards={{{TASK}: {{perf_rm: 1.0}}}}",
           f"grpo.resources.perf_model={rm}",
           f"grpo.reward_params.perf_rm.L0={args.L0:g}", f"grpo.reward_params.perf_rm.lam={lam:g}",
           "grpo.save_rollouts=true", f"train.seed={1 + seed}", f"train.steps={steps}", "checkpoint.every=0",
           "checkpoint.save_at_end=false", "resume=none", "train.log_every=1"]
    cmd += (FAST_GRPO if args.fast else []) + args.grpo_set
    cmd += [f"optim.lr={lr:g}", f"optim.min_lr={lr / 10:g}"]  # last: --lr (the reference's 1e-12) wins
    return _stage(out, [*CLI, "train", "grpo", "--config", str(GRPO_CFG), *cmd], out.parent / f"{out.name}.log",
                  root)


# ------------------------------------------------------------------------------------ metrics
def rollout_ctr(completion: str, keyword: str) -> tuple[float, bool]:
    """(true CTR of a rollout's ad text for ``keyword``, whether it parsed); 0 for a malformed rollout."""
    p = parse_output(task(TASK), completion)
    title, desc = p.fields.get("title"), p.fields.get("description")
    if p.errors or not (isinstance(title, str) and title.strip()) or not isinstance(desc, str):
        return 0.0, False
    return true_ctr(keyword, ad_text(title, desc)), True


def curves(run: Path) -> dict[str, list[float]]:
    """Per-step series of a GRPO run (module docstring): step and ``METRICS``; NaN where a step has no value
    (no well-formed rollout: no RM score)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if isinstance(r.get("step"), (int, float))]
    if not rows:
        raise SystemExit(f"{run / 'metrics.jsonl'}: no step records")
    key = f"reward/{TASK}/perf_rm"
    if f"{key}/mean" not in rows[0]:
        raise SystemExit(f"{run / 'metrics.jsonl'}: no {key}/mean (keys: {sorted(rows[0])})")
    by_step: dict[int, list[tuple[float, bool]]] = {}
    for line in (run / "rollouts.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by_step.setdefault(int(r["step"]), []).append(rollout_ctr(r["completion"], r.get("keyword", "")))
    nan = math.nan
    out: dict[str, list[float]] = {"step": [int(r["step"]) for r in rows]}
    out["rm_score"] = [float(r.get(f"{key}/score/mean", nan)) for r in rows]
    out["length"] = [float(r.get(f"{key}/length/mean", nan)) for r in rows]
    out["penalty"] = [float(r.get(f"{key}/penalty/mean", nan)) for r in rows]
    out["reward"] = [float(r[f"{key}/mean"]) for r in rows]
    out["tokens"] = [float(r["response_len_mean"]) for r in rows]
    ctr = [by_step.get(s, []) for s in out["step"]]
    out["true_ctr"] = [sum(c for c, _ in xs) / len(xs) if xs else nan for xs in ctr]
    out["parse_rate"] = [sum(ok for _, ok in xs) / len(xs) if xs else nan for xs in ctr]
    return out


def _nanmean(xs: list[float]) -> float:
    ok = [x for x in xs if not math.isnan(x)]
    return sum(ok) / len(ok) if ok else math.nan


def _final(xs: list[float], w: int) -> float:
    """Mean of the last ``w`` steps' values (NaN steps left out)."""
    return _nanmean(xs[-w:])


def summarize_arm(runs: list[dict[str, list[float]]], w: int) -> dict:
    out: dict = {}
    for m in METRICS:
        vals = [_final(r[m], w) for r in runs]
        out[f"final_{m}"] = _nanmean(vals)
        if len(vals) > 1:
            out[f"final_{m}_per_seed"] = vals
    return out


def plot(path: Path, arms: dict[str, list[dict]], ref: dict[str, float], L0: float, w: int, title: str) -> Path:
    """Both arms' curves (``relate_tiny.plot_arms``), the SFT reference and L0."""
    panels = (("rm_score", "RM score (mean, well-formed rollouts)"),
              ("length", "ad text length (characters)"),
              ("true_ctr", "true CTR (hidden synthetic truth)"), ("tokens", "generated tokens / rollout"))
    styles = {"penalty": ("tab:blue", "RM − length penalty"), "no_penalty": ("tab:orange", "RM alone (no penalty)")}
    return plot_arms(path, arms, panels, styles, ref, {"length": (L0, "L0 (penalty starts)")}, w, title,
                     legend_panels=(0, 1))


def table(rows: dict[str, dict[str, float]]) -> str:
    """The final table (markdown): one row per arm (and the SFT reference)."""
    cols = (("rm_score", "RM score", "{:.3f}"), ("true_ctr", "true CTR", "{:.4f}"), ("length", "length (chars)",
            "{:.1f}"), ("tokens", "tokens", "{:.1f}"), ("parse_rate", "parse rate", "{:.2f}"),
            ("reward", "reward", "{:.3f}"))
    lines = ["| run | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt.format(r[k]) if math.isfinite(r.get(k, math.nan)) else "—"
                                                  for k, _, fmt in cols) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1, help="GRPO seeds per arm (default: %(default)s)")
    ap.add_argument("--fast", action="store_true", help="a few steps on tiny data: a smoke run, not a measurement")
    ap.add_argument("--workdir", default=None, help="runs and logs (default: a temp dir); finished stages found there "
                                                    "are reused")
    ap.add_argument("--sft-steps", type=int, default=None, help="SFT steps (default: 600; --fast: 4)")
    ap.add_argument("--rm-steps", type=int, default=None, help="reward-model steps (default: 1000; --fast: 4)")
    ap.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps per arm and seed (default: 40; --fast: 2)")
    ap.add_argument("--baseline-steps", type=int, default=None,
                    help="steps of the SFT reference (lr 1e-12; default: 10; --fast: 1)")
    ap.add_argument("--train-size", type=int, default=None,
                    help="synthetic ad_rewrite rows (default: 4000; --fast: 200)")
    ap.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate (default: %(default)s; min lr 1/10)")
    ap.add_argument("--L0", type=float, default=90.0, help="free length in characters (default: %(default)s)")
    ap.add_argument("--lam", type=float, default=0.02,
                    help="penalty per character beyond L0 in the penalty arm (default: %(default)s)")
    ap.add_argument("--smooth", type=int, default=None, help="trailing-mean window in steps (default: 5; --fast: 1)")
    ap.add_argument("--plot", default=None,
                    help="PNG (default: benchmarks/plots/rlpf_tiny.png; --fast: in the workdir)")
    ap.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="extra SFT override")
    ap.add_argument("--rm-set", action="append", default=[], metavar="KEY=VALUE", help="extra reward-model override")
    ap.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra GRPO override (every GRPO run, the reference included; the lr is --lr's)")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error(f"--seeds: expected >= 1, got {args.seeds}")
    if not (math.isfinite(args.lam) and args.lam > 0):
        ap.error(f"--lam: expected a number > 0 (the no_penalty arm is lam = 0), got {args.lam}")
    if not (math.isfinite(args.L0) and args.L0 >= 0):
        ap.error(f"--L0: expected a number >= 0, got {args.L0}")
    args.sft_steps = args.sft_steps or (4 if args.fast else 600)
    args.rm_steps = args.rm_steps or (4 if args.fast else 1000)
    args.grpo_steps = args.grpo_steps or (2 if args.fast else 40)
    args.baseline_steps = args.baseline_steps or (1 if args.fast else 10)
    args.train_size = args.train_size or (200 if args.fast else 4000)
    args.smooth = args.smooth or (1 if args.fast else 5)
    for name in ("sft_steps", "rm_steps", "grpo_steps", "baseline_steps", "train_size", "smooth"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    args.noisy_rate = 0.0  # relate_tiny.sft's data: clean source ads
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="rlpf_tiny_"))
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    t0 = time.time()
    sft_run = sft(args, root)
    print(f"SFT: {sft_run} ({_wall(sft_run):.0f} s)", flush=True)
    rm = rm_stage(args, root, sft_run)
    rep = json.loads((rm / "eval" / "report.json").read_text()) if (rm / "eval" / "report.json").is_file() else {}
    rm_info = {k: rep.get(k) for k in ("pairwise_acc", "true_pairwise_acc", "true_order_rate", "n_pairs")}
    print(f"RM: {rm} held-out pairwise accuracy {rm_info['pairwise_acc']} (true order "
          f"{rm_info['true_pairwise_acc']}) on {rm_info['n_pairs']} pairs ({_wall(rm):.0f} s)", flush=True)
    ref_run = grpo(args, root, sft_run, rm, root / "sft_reference" / "run", 0, args.lam, args.baseline_steps, 1e-12)
    ref_c = curves(ref_run)
    ref = {m: _nanmean(ref_c[m]) for m in METRICS}
    print("SFT reference: " + " ".join(f"{m}={v:.4f}" for m, v in ref.items()) + f" ({_wall(ref_run):.0f} s)",
          flush=True)
    arms: dict[str, list[dict]] = {a: [] for a in ARMS}
    walls: dict[str, list[float]] = {a: [] for a in ARMS}
    for seed in range(args.seeds):
        for arm in ARMS:
            lam = args.lam if arm == "penalty" else 0.0
            run = grpo(args, root, sft_run, rm, root / f"seed{seed}" / arm, seed, lam, args.grpo_steps, args.lr)
            c = curves(run)
            arms[arm].append(c)
            walls[arm].append(_wall(run))
            print(f"seed {seed} {arm}: " + " ".join(f"final_{m}={_final(c[m], args.smooth):.4f}" for m in METRICS)
                  + f" ({_wall(run):.0f} s)", flush=True)
    out = {"arms": {a: summarize_arm(arms[a], args.smooth) for a in ARMS}, "sft": ref, "rm": rm_info}
    print(f"\nfinal (mean of the last {args.smooth} step(s), {args.seeds} seed(s)):")
    print(table({"SFT reference": ref, **{a: {m: out["arms"][a][f"final_{m}"] for m in METRICS} for a in ARMS}}))
    png = Path(args.plot) if args.plot else (root / "rlpf_tiny.png" if args.fast else
                                             REPO / "benchmarks" / "plots" / "rlpf_tiny.png")
    title = (f"RLPF tiny (ad_rewrite, G=5, 2 prompts/step, {args.seeds} seed(s), SFT {args.sft_steps} steps, BT RM "
             f"{args.rm_steps} steps, lr {args.lr:g}): RM − {args.lam:g}·max(0, len − {args.L0:g}) vs RM alone; "
             f"trailing mean of {args.smooth} step(s)")
    plot(png, arms, ref, args.L0, args.smooth, title)
    out.update(L0=args.L0, lam=args.lam, lr=args.lr, seeds=args.seeds, sft_steps=args.sft_steps,
               rm_steps=args.rm_steps, grpo_steps=args.grpo_steps, baseline_steps=args.baseline_steps,
               smooth=args.smooth, fast=args.fast, plot=str(png), sft_s=_wall(sft_run), rm_s=_wall(rm),
               reference_s=_wall(ref_run), grpo_s={a: walls[a] for a in ARMS}, wall_s=round(time.time() - t0, 1))
    print(f"workdir: {root}")
    print(json.dumps(_json_safe(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
