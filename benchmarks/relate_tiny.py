"""RELATE token-level credit vs the same rewards summed into the sentence reward (issue 15; relate.txt Eq. 4–11,
``papers_spec.md`` §B.2): does token-level credit cut blacklist hits and repeated n-grams in fewer GRPO steps,
at equal CTCVR reward?

    python benchmarks/relate_tiny.py [--seeds N] [--fast] [--workdir DIR] [--reward-models DIR] [--sft-steps S]
        [--grpo-steps S] [--baseline-steps S] [--lr LR] [--token-alpha A] [--noisy-rate R] [--rl-noisy-rate R]
        [--target-frac F] [--smooth W] [--no-diversity] [--plot PNG] [--sft-set key=value ...]
        [--grpo-set key=value ...]

Stages (each a ``megatron-ads`` / tool subprocess in ``--workdir``; a finished stage, marked by its
``done.json`` with its command, is reused when the command is the same, so ``--seeds 3`` after ``--seeds 2``
runs only seed 2, and refused when it differs, e.g. another ``--lr``: use another workdir):

1. **Reward models**: ``tools/make_reward_models.py --out WORKDIR/reward_models`` (the frozen ESMM model of the
   ``ctcvr`` reward; seed 0), unless ``--reward-models DIR`` names a directory it wrote before.
2. **SFT** (once, ``train.seed=1``, ``--sft-steps`` default 600): ``launch/configs/sft_tiny_cpu.yaml`` on
   ad_rewrite alone (``sft.tasks=[ad_rewrite]``, label-only targets: an empty ``<think>``, then rationale,
   title and description; 4 000 synthetic rows) with *noisy source ads*:
   ``sft.synthetic.ad_rewrite.noisy_rewrite_rate`` = ``--noisy-rate`` (default 0.5;
   ``data.synthetic.SyntheticConfig``): that share of the source ads carries an exaggerated claim
   (``RISKY_CLAIMS``, words of RELATE's blacklist); half of their rewrites keep it and half repeat their call
   to action. The clean synthetic rewrites never hit the blacklist, so without the knob the experiment would
   be empty; with it the SFT model copies the claim in about half of its samples for such an ad.
3. **SFT reference** (once): the GRPO pipeline below at ``optim.lr=1e-12`` for ``--baseline-steps`` (10) steps:
   the SFT model's own per-step rates on the same kind of prompts, rollouts and batch structure (2 prompts x
   G = 5: the diversity reward is batch-relative). Targets: ``--target-frac`` (0.5) x the SFT blacklist rate
   and x the SFT repeat count (no target where the SFT value is 0).
4. **Two GRPO arms** per seed s (``train.seed = 1 + s``: the same prompts and sampling seeds in both arms, so
   step 1 is the same batch), both from the SFT checkpoint, recipe ``launch/configs/grpo_relate_tiny_cpu.yaml``
   (rewards ``length`` 0.5, ``blacklist`` 1, ``diversity`` 1, ``ctcvr`` 1; G = 5; KL k3 β 0.02), prompts drawn
   with ``noisy_rewrite_rate`` = ``--rl-noisy-rate`` (default 1.0: every source ad has a claim to drop, so
   the per-step rate is not dominated by how many of the step's 2 prompts carry one), ``--lr`` (default 1e-4,
   min 1/10 of it; 3e-4 drifted, KL 0.3–0.6, and lost half the CTCVR reward in 30 steps) for ``--grpo-steps``
   (30):
   **token** (``grpo.token_alpha`` = ``--token-alpha``, default 0.5: A_{i,t} = A_i + α·r_token, Eq. 9) and
   **summed** (``grpo.token_alpha=0``: the blacklist and diversity channels enter only through their sentence
   values, group-normalized like every channel, Eq. 8). ``--no-diversity``: the ablation without the diversity
   reward (token-level credit from the blacklist alone; no repeat series).

Per step, from each run's ``metrics.jsonl`` (``grpo.reward_stats``: per-task channel means over the step's
rollouts; the rewards run at their registry defaults, λ1 = 1 without hit counting, Δd = 0.1):

- ``blacklist``: share of rollouts with a blacklist hit = −``reward/ad_rewrite/blacklist/mean``;
- ``compliance``: Eq. 11 = 1 − blacklist (𝒴_safe: no blacklist hit; no format term);
- ``repeat``: occurrences of the batch's high-frequency n-grams (Eq. 4, n ∈ [2, 10], in ≥ 2 of the step's
  10 rollouts, n-grams of the prompt excluded) per rollout = −``reward/ad_rewrite/diversity/mean`` / Δd;
- ``ctcvr``: the predicted CTCVR of the rewrite (``reward/ad_rewrite/ctcvr/mean``; 0 for a malformed one).

Curves are smoothed with a trailing mean over ``--smooth`` steps (default 3). **Steps to target**: the first
step (from step ``--smooth`` on) whose smoothed value is at or below the target (None: never); per seed, and on
the seed-mean curve. **Final** values: the mean over the last ``--smooth`` steps (then over seeds). The plot
(``benchmarks/plots/relate_tiny.png``; with ``--fast`` in the workdir) shows both arms' smoothed seed-mean
curves (per-seed curves faint), the SFT reference and the targets.

``--fast``: a few steps of everything on tiny data (the smoke test ``tests/distributed/test_bench_relate_tiny.py``):
a check that the pipeline runs, not a measurement. The last line printed is one JSON object: ``arms`` ({token,
summed}: ``steps_to_target`` (blacklist), ``steps_to_target_repeat``, per-seed lists of both,
``final_blacklist``, ``final_repeat``, ``final_ctcvr``, ``final_compliance``, with ``*_per_seed`` lists when
``--seeds`` > 1), ``sft`` (the reference rates), ``targets``, the settings (``token_alpha``, ``lr``,
``noisy_rate``, ``rl_noisy_rate``, ``target_frac``, ``diversity``, ``seeds``, ``sft_steps``, ``grpo_steps``,
``baseline_steps``, ``smooth``, ``fast``), ``plot``, the stage times and ``wall_s``; NaN (no repeat series) as
null.

Measured (2 cores under other jobs' load, 2026-12-02; defaults, 3 seeds, 21–23 min in all): both arms reach the
blacklist target in the same step on every seed and end at the same blacklist rate; the token arm's CTCVR reward
ends a little lower; the repeat count rises above the SFT model's in both arms. Numbers and reasons: the
RELATE section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "megatron_ads"]
SFT_CFG = REPO / "launch" / "configs" / "sft_tiny_cpu.yaml"
GRPO_CFG = REPO / "launch" / "configs" / "grpo_relate_tiny_cpu.yaml"
MAKE_RM = REPO / "tools" / "make_reward_models.py"
TASK = "ad_rewrite"
ARMS = ("token", "summed")
DELTA_D = 0.1
"""Δd of the diversity reward at its registry default (``rewards.relate.DiversityParams``)."""
FAST_RM = ["--ctr-rows", "60", "--esmm-rows", "60", "--ctr-epochs", "5", "--esmm-epochs", "5"]
FAST_SFT = ["sft.val_rows=2", "train.micro_batch=4", "train.log_every=1"]
FAST_GRPO = ["train.seq_len=192", "grpo.max_new_tokens=16"]
METRICS = ("blacklist", "repeat", "ctcvr", "compliance")


def _run(args: list[str], log: Path) -> float:
    """A subprocess (``args``, from the repository root) whose output goes to ``log`` (shown on failure);
    returns its wall time."""
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
    if p.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"failed (exit {p.returncode}): {' '.join(args)}\n--- {log} (last lines)\n{tail}")
    return time.time() - t0


def _stage(out: Path, cmd: list[str], log: Path, root: Path) -> Path:
    """Run ``cmd`` (a stage writing ``out``) unless ``out/done.json`` says it finished with the same command (paths
    under the workdir ``root`` compared relative to it, so a stage linked in from another workdir counts); a
    finished stage of another command is refused (another --workdir, or delete ``out``)."""
    done = out / "done.json"
    key = [a.replace(str(root), "<workdir>") for a in cmd]
    if done.is_file():
        prev = json.loads(done.read_text()).get("cmd")
        if prev is not None and prev != key:
            diff = sorted(set(key) ^ set(prev))
            raise SystemExit(f"{out}: finished with other settings (differing arguments: {diff}); use another "
                             f"--workdir or delete {out}")
        return out
    out.mkdir(parents=True, exist_ok=True)
    wall = _run(cmd, log)
    done.write_text(json.dumps({"wall_s": round(wall, 1), "cmd": key}))
    return out


def _wall(run: Path) -> float:
    return json.loads((run / "done.json").read_text())["wall_s"]


def data_overrides(args, rate: float) -> list[str]:
    """The ad_rewrite data of a stage (SFT and GRPO rows from one spec; ``rate``: noisy_rewrite_rate)."""
    return [f"sft.tasks=[{TASK}]", f"sft.train_size={args.train_size}", "sft.data_seed=0", "sft.test_rows=0",
            f"sft.synthetic={{{TASK}: {{noisy_rewrite_rate: {rate}}}}}"]


def reward_models(args, root: Path) -> Path:
    """The frozen ESMM model's directory (trained here unless ``--reward-models`` names one)."""
    if args.reward_models:
        esmm = Path(args.reward_models) / "esmm"
        if not esmm.is_dir():
            raise SystemExit(f"--reward-models: no esmm/ under {args.reward_models} (tools/make_reward_models.py "
                             f"writes it)")
        return esmm.resolve()
    out = root / "reward_models"
    _stage(out, [sys.executable, str(MAKE_RM), "--out", str(out), *(FAST_RM if args.fast else [])],
           root / "reward_models.log", root)
    return out / "esmm"


def sft(args, root: Path) -> Path:
    """The SFT run (stage 2); returns its directory."""
    out = root / "sft"
    cmd = [f"out_dir={out}", *data_overrides(args, args.noisy_rate), "sft.label_only_fraction=1.0",
           "sft.task_metric={}", "train.seed=1", f"train.steps={args.sft_steps}", "checkpoint.every=0",
           "checkpoint.save_at_end=true", "resume=none",
           f"sft.eval_every={args.sft_steps if args.fast else max(1, args.sft_steps // 4)}"]
    cmd += (FAST_SFT if args.fast else []) + args.sft_set
    return _stage(out, [*CLI, "train", "sft", "--config", str(SFT_CFG), *cmd], root / "sft.log", root)


def rewards_override(args) -> str:
    """``grpo.rewards`` of every GRPO run: length 0.5, blacklist 1, diversity 1 (unless --no-diversity), ctcvr 1."""
    chans = {"length": 0.5, "blacklist": 1.0, **({} if args.no_diversity else {"diversity": 1.0}), "ctcvr": 1.0}
    return f"grpo.rewards={{{TASK}: {{" + ", ".join(f"{k}: {v}" for k, v in chans.items()) + "}}"


def grpo(args, root: Path, sft_run: Path, esmm: Path, out: Path, seed: int, alpha: float, steps: int,
         lr: float) -> Path:
    """One GRPO run from the SFT checkpoint; returns its directory."""
    cmd = [f"out_dir={out}", "model.init=mcore", f"model.path={sft_run / 'checkpoints'}",
           *data_overrides(args, args.rl_noisy_rate), rewards_override(args),
           f"grpo.resources={{esmm_model: {esmm}}}", f"grpo.token_alpha={alpha}", f"train.seed={1 + seed}",
           f"train.steps={steps}", "checkpoint.every=0", "checkpoint.save_at_end=false", "resume=none",
           "train.log_every=1"]
    cmd += (FAST_GRPO if args.fast else []) + args.grpo_set
    cmd += [f"optim.lr={lr:g}", f"optim.min_lr={lr / 10:g}"]  # last: --lr (the reference's 1e-12) wins
    return _stage(out, [*CLI, "train", "grpo", "--config", str(GRPO_CFG), *cmd], out.parent / f"{out.name}.log",
                  root)


# ------------------------------------------------------------------------------------ metrics
def curves(run: Path) -> dict[str, list[float]]:
    """Per-step series of a GRPO run (module docstring): step, blacklist, compliance, repeat, ctcvr."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if isinstance(r.get("step"), (int, float))]
    if not rows:
        raise SystemExit(f"{run / 'metrics.jsonl'}: no step records")
    key = f"reward/{TASK}/{{}}/mean"
    for ch in ("blacklist", "ctcvr"):
        if key.format(ch) not in rows[0]:
            raise SystemExit(f"{run / 'metrics.jsonl'}: no {key.format(ch)} (keys: {sorted(rows[0])})")
    out: dict[str, list[float]] = {"step": [int(r["step"]) for r in rows]}
    out["blacklist"] = [-float(r[key.format("blacklist")]) for r in rows]
    out["compliance"] = [1.0 - b for b in out["blacklist"]]
    div = key.format("diversity")  # absent with --no-diversity: no repeat series (NaN)
    out["repeat"] = [-float(r[div]) / DELTA_D if div in r else math.nan for r in rows]
    out["ctcvr"] = [float(r[key.format("ctcvr")]) for r in rows]
    return out


def smooth(xs: list[float], w: int) -> list[float]:
    """Trailing mean over the last ``w`` values (fewer at the start)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out


def steps_to_target(steps: list[int], xs: list[float], target: float | None, w: int) -> int | None:
    """First step (once ``w`` steps exist) whose trailing ``w``-step mean is at or below ``target``; None: never
    (or no target)."""
    if target is None:
        return None
    for i, (s, v) in enumerate(zip(steps, smooth(xs, w))):
        if i + 1 >= min(w, len(xs)) and v <= target + 1e-12:
            return s
    return None


def final(xs: list[float], w: int) -> float:
    tail = xs[-w:]
    return sum(tail) / len(tail)


def mean_curve(runs: list[dict[str, list[float]]], key: str) -> list[float]:
    """Seed mean of ``key`` per step (over the steps every run has)."""
    n = min(len(r[key]) for r in runs)
    return [sum(r[key][i] for r in runs) / len(runs) for i in range(n)]


def summarize_arm(runs: list[dict[str, list[float]]], targets: dict[str, float | None], w: int) -> dict:
    steps = runs[0]["step"][:min(len(r["step"]) for r in runs)]
    out: dict = {}
    for m, name in (("blacklist", "steps_to_target"), ("repeat", "steps_to_target_repeat")):
        out[name] = steps_to_target(steps, mean_curve(runs, m), targets[m], w)
        out[f"{name}_per_seed"] = [steps_to_target(r["step"], r[m], targets[m], w) for r in runs]
    for m in METRICS:
        vals = [final(r[m], w) for r in runs]
        out[f"final_{m}"] = sum(vals) / len(vals)
        if len(vals) > 1:
            out[f"final_{m}_per_seed"] = vals
    return out


def save_figure(fig, path: Path) -> Path:
    """``fig`` to ``path`` (PNG) through a temporary file renamed last."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def plot_arms(path: Path, arms: dict[str, list[dict]], panels: tuple[tuple[str, str], ...],
              styles: dict[str, tuple[str, str]], ref: dict[str, float], lines: dict[str, tuple[float, str]],
              w: int, title: str, legend_panels: tuple[int, ...] = (0,)) -> Path:
    """A 2x2 grid of GRPO curves: per panel (metric, y label) every arm's seeds faint and their smoothed mean bold
    (``styles``: arm -> (color, label)), the SFT reference (``ref``) dotted and ``lines`` (metric -> (value,
    label)) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8))
    for k, (m, ylabel) in enumerate(panels):
        ax = fig.add_subplot(2, 2, k + 1)
        for arm, runs in arms.items():
            color, label = styles[arm]
            for r in runs:
                ax.plot(r["step"], smooth(r[m], w), color=color, alpha=0.25, lw=0.8)
            n = min(len(r["step"]) for r in runs)
            ax.plot(runs[0]["step"][:n], smooth(mean_curve(runs, m), w), color=color, lw=2,
                    label=f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
        if math.isfinite(ref.get(m, math.nan)):
            ax.axhline(ref[m], color="gray", ls=":", lw=1.2, label="SFT model")
        if lines.get(m) is not None and lines[m][0] is not None:
            ax.axhline(lines[m][0], color="black", ls="--", lw=1, label=lines[m][1])
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if k in legend_panels:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot(path: Path, arms: dict[str, list[dict]], ref: dict[str, float], targets: dict[str, float], w: int,
         title: str) -> Path:
    """Both arms' curves, the SFT reference and the targets."""
    panels = (("blacklist", "blacklist hit rate (share of rollouts)"),
              ("repeat", "high-frequency n-gram occurrences / rollout"),
              ("ctcvr", "CTCVR reward (predicted)"), ("compliance", "compliance rate (Eq. 11)"))
    styles = {"token": ("tab:blue", "token-level credit"), "summed": ("tab:orange", "summed into the sentence reward")}
    return plot_arms(path, arms, panels, styles, ref, {m: (v, "target") for m, v in targets.items()}, w, title)


def _json_safe(x):
    """NaN (no repeat series without the diversity reward) as null."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=None, help="GRPO seeds per arm (default: 3; --fast: 1)")
    ap.add_argument("--fast", action="store_true", help="a few steps on tiny data: a smoke run, not a measurement")
    ap.add_argument("--workdir", default=None, help="runs and logs (default: a temp dir); finished stages found there "
                                                    "are reused")
    ap.add_argument("--reward-models", default=None, help="a tools/make_reward_models.py --out directory to reuse")
    ap.add_argument("--sft-steps", type=int, default=None, help="SFT steps (default: 600; --fast: 4)")
    ap.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps per arm and seed (default: 30; --fast: 2)")
    ap.add_argument("--baseline-steps", type=int, default=None,
                    help="steps of the SFT reference (lr 1e-12; default: 10; --fast: 1)")
    ap.add_argument("--train-size", type=int, default=None,
                    help="synthetic ad_rewrite rows (default: 4000; --fast: 200)")
    ap.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate (default: %(default)s; min lr 1/10)")
    ap.add_argument("--token-alpha", type=float, default=0.5, help="α of the token arm (default: %(default)s)")
    ap.add_argument("--noisy-rate", type=float, default=0.5,
                    help="noisy_rewrite_rate of the SFT data (default: %(default)s)")
    ap.add_argument("--rl-noisy-rate", type=float, default=1.0,
                    help="noisy_rewrite_rate of the GRPO prompts (default: %(default)s: every source ad has a claim)")
    ap.add_argument("--target-frac", type=float, default=0.5,
                    help="target = this fraction of the SFT value (default: %(default)s)")
    ap.add_argument("--smooth", type=int, default=None, help="trailing-mean window in steps (default: 3; --fast: 1)")
    ap.add_argument("--plot", default=None,
                    help="PNG (default: benchmarks/plots/relate_tiny.png; --fast: in the workdir)")
    ap.add_argument("--no-diversity", action="store_true",
                    help="ablation: no diversity reward (token credit from the blacklist alone; no repeat series)")
    ap.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="extra SFT override")
    ap.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra GRPO override (every GRPO run, the reference included; the lr is --lr's)")
    args = ap.parse_args()
    args.seeds = args.seeds or (1 if args.fast else 3)
    if args.seeds < 1:
        ap.error(f"--seeds: expected >= 1, got {args.seeds}")
    for name in ("noisy_rate", "rl_noisy_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            ap.error(f"--{name.replace('_', '-')}: expected a probability in [0, 1], got {getattr(args, name)}")
    if not 0.0 < args.target_frac < 1.0:
        ap.error(f"--target-frac: expected a number in (0, 1), got {args.target_frac}")
    if not (math.isfinite(args.token_alpha) and args.token_alpha > 0):
        ap.error(f"--token-alpha: expected a number > 0 (the summed arm is α = 0), got {args.token_alpha}")
    args.sft_steps = args.sft_steps or (4 if args.fast else 600)
    args.grpo_steps = args.grpo_steps or (2 if args.fast else 30)
    args.baseline_steps = args.baseline_steps or (1 if args.fast else 10)
    args.train_size = args.train_size or (200 if args.fast else 4000)
    args.smooth = args.smooth or (1 if args.fast else 3)
    for name in ("sft_steps", "grpo_steps", "baseline_steps", "train_size", "smooth"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="relate_tiny_"))
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    t0 = time.time()
    esmm = reward_models(args, root)
    t_rm = time.time() - t0
    sft_run = sft(args, root)
    print(f"SFT: {sft_run} ({_wall(sft_run):.0f} s)", flush=True)
    ref_run = grpo(args, root, sft_run, esmm, root / "sft_reference" / "run", 0, 0.0, args.baseline_steps, 1e-12)
    ref_c = curves(ref_run)
    ref = {m: sum(ref_c[m]) / len(ref_c[m]) for m in METRICS}
    # no target where the SFT model has nothing to clean up (a fraction of 0 is reached at step 1 by anyone)
    targets = {m: args.target_frac * ref[m] if ref[m] > 0 else None for m in ("blacklist", "repeat")}
    print("SFT reference: " + " ".join(f"{m}={v:.4f}" for m, v in ref.items()) + f" ({_wall(ref_run):.0f} s)",
          flush=True)
    if ref["blacklist"] == 0.0:
        print("warning: the SFT model never hits the blacklist: raise --noisy-rate or --sft-steps", flush=True)
    arms: dict[str, list[dict]] = {a: [] for a in ARMS}
    walls: dict[str, list[float]] = {a: [] for a in ARMS}
    for seed in range(args.seeds):
        for arm in ARMS:
            alpha = args.token_alpha if arm == "token" else 0.0
            run = grpo(args, root, sft_run, esmm, root / f"seed{seed}" / arm, seed, alpha, args.grpo_steps, args.lr)
            c = curves(run)
            arms[arm].append(c)
            walls[arm].append(_wall(run))
            print(f"seed {seed} {arm}: " + " ".join(f"final_{m}={final(c[m], args.smooth):.4f}" for m in METRICS)
                  + f" ({_wall(run):.0f} s)", flush=True)
    out = {"arms": {a: summarize_arm(arms[a], targets, args.smooth) for a in ARMS}, "sft": ref, "targets": targets}
    for a in ARMS:
        r = out["arms"][a]
        print(f"{a:>6}: steps to target blacklist {r['steps_to_target']} (per seed {r['steps_to_target_per_seed']}), "
              f"repeat {r['steps_to_target_repeat']}; final blacklist {r['final_blacklist']:.4f} "
              f"repeat {r['final_repeat']:.3f} ctcvr {r['final_ctcvr']:.4f}", flush=True)
    png = Path(args.plot) if args.plot else (root / "relate_tiny.png" if args.fast else
                                             REPO / "benchmarks" / "plots" / "relate_tiny.png")
    title = (f"RELATE tiny (ad_rewrite, G=5, 2 prompts/step, {args.seeds} seed(s), SFT {args.sft_steps} steps, lr "
             f"{args.lr:g}{', no diversity reward' if args.no_diversity else ''}): token-level credit "
             f"α={args.token_alpha:g} vs summed (α=0); trailing mean of {args.smooth} step(s)")
    plot(png, arms, ref, targets, args.smooth, title)
    out.update(token_alpha=args.token_alpha, lr=args.lr, noisy_rate=args.noisy_rate, rl_noisy_rate=args.rl_noisy_rate,
               target_frac=args.target_frac, diversity=not args.no_diversity, seeds=args.seeds,
               sft_steps=args.sft_steps, grpo_steps=args.grpo_steps,
               baseline_steps=args.baseline_steps, smooth=args.smooth, fast=args.fast, plot=str(png),
               reward_models_s=round(t_rm, 1), sft_s=_wall(sft_run), reference_s=_wall(ref_run),
               grpo_s={a: walls[a] for a in ARMS}, wall_s=round(time.time() - t0, 1))
    print(f"workdir: {root}")
    print(json.dumps(_json_safe(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
