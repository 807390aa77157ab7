"""SFT tiny -> token reward model -> PPO vs TPPO -> held-out eval (issue 15, tppo.txt §5 / Table 2, Fig. 12):
does token-level credit from a token reward model raise the relevance of generated queries over sentence-level
PPO with the same reward, and does the length-weighted penalty bound the response length?

    python benchmarks/tppo_tiny.py [--seeds N] [--fast] [--workdir DIR] [--rows R] [--sft-steps S]
        [--rm-steps S] [--ppo-steps S] [--arms a,b,...] [--sft-set k=v] [--rm-set k=v] [--ppo-set k=v]
                                                                                            (make tppo-tiny)

Per seed s (``train.seed = 1 + s``; data and held-out split fixed), task ``user_query_gen`` (a user history ->
the user's next queries; the hidden truth says which words are relevant to the user's interests):

1. **SFT**: ``train sft`` (``sft_tiny_cpu.yaml``, ``sft.tasks=[user_query_gen]``, ``--sft-steps``, short on
   purpose: the SFT model must leave room, its relevance rate well below 1).
2. **Token reward model**: ``train rm`` (``token_rm_tiny_cpu.yaml``, ``rm.kind=token``) from the SFT checkpoint
   (same tokenizer): 3 classes per token, word labels from the hidden judge (``data.token_labels``).
3. **RL arms** from the SFT checkpoint, same seeds, same rollouts settings, same rewards
   ``{token_rm: 1.0, format: 0.5}`` (``grpo.resources.token_model`` = the RM run), ``grpo.algo=ppo``:
   - ``ppo``: sentence-level PPO — every channel's sentence value (token_rm: the sum of its token rewards) on
     the completion's last token (``ppo.token_credit=false``), no length penalty (the paper's PPO baseline);
   - ``tppo``: TPPO — the token RM's rewards on their tokens (``ppo.token_credit=true``) with the
     length-weighted penalty α = 1 (``ppo.lwp_alpha=1``; s_l = 0.9 quantile of SFT target lengths);
   - ``tppo_a05``: TPPO with α = 0.5 (Fig. 12: the length grows where α = 1 bounds it);
   - ``tppo_nolwp`` (not run by default; ``--arms``): token credit without the penalty (the credit alone).
4. **Held-out eval**: ``label --mode reasoning`` (greedy) on the first ``--rows`` test users, then ``eval --task
   user_query_gen``: Relevance = share of generated queries the hidden judge calls relevant (Table 2's metric),
   InterestCoverage, and the generated length.

Plots: ``benchmarks/plots/tppo_tiny.png`` (per arm: RM reward per step, response length per step) when
``--plot``. The last line printed is one JSON object: ``relevance_<arm>``, ``len_<arm>`` (mean generated
tokens in the held-out eval) and ``rm_*`` (the RM's held-out metrics) — means over seeds (``*_std``, per seed
under ``per_seed``), plus ``rows``, ``seeds``, ``wall_s``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from grpo_tiny import _eval, _run
from transformers import AutoTokenizer

from megatron_ads.config.train import JobConfig
from megatron_ads.data.sft_data import load_sft_data
from megatron_ads.data.tasks import task
from megatron_ads.runtime.io import write_jsonl
from megatron_ads.train import ckpt

REPO = Path(__file__).resolve().parents[1]
SFT_CFG = REPO / "launch" / "configs" / "sft_tiny_cpu.yaml"
RM_CFG = REPO / "launch" / "configs" / "token_rm_tiny_cpu.yaml"
PPO_CFG = REPO / "launch" / "configs" / "tppo_tiny_cpu.yaml"
TASK = "user_query_gen"
SFT_TASK = [f"sft.tasks=[{TASK}]", "sft.task_metric={}", "sft.synthetic={}"]
ARMS = {"ppo": ["ppo.token_credit=false", "ppo.lwp_alpha=null"],
        "tppo": ["ppo.token_credit=true", "ppo.lwp_alpha=1.0"],
        "tppo_a05": ["ppo.token_credit=true", "ppo.lwp_alpha=0.5"],
        "tppo_nolwp": ["ppo.token_credit=true", "ppo.lwp_alpha=null"]}
DEFAULT_ARMS = "ppo,tppo,tppo_a05"
RM_SET = ["optim.lr=0.001", "optim.min_lr=0.0001", "rm.class_weights=[1.0, 1.0, 1.0]", "rm.balance_max_ratio=3.0",
          "rm.eval_every=250"]
"""Token-RM settings of the experiment (the paper's class balance, unweighted CE): from the 200-step SFT
checkpoint they reach a held-out query AUC of 0.74 in 1 000 steps, the recipe's weighted CE 0.67 in 1 500
(from a random init the recipe's setting is the better one; benchmarks/RESULTS.md)."""
FAST_SFT = ["sft.train_size=300", "sft.val_rows=4", "train.micro_batch=4", "train.log_every=10"]
FAST_RM = ["rm.rows=60", "rm.val_examples=8", "train.micro_batch=4", "rm.eval_every=2", "train.log_every=1"]
FAST_PPO = ["sft.train_size=300", "grpo.max_new_tokens=16", "grpo.group_size=2", "train.micro_batch=4"]


def held_out(cfg: JobConfig, rows: int, work: Path) -> tuple[Path, Path]:
    """Input and gold JSONL of the first ``rows`` test users (the split no run trains on)."""
    test = load_sft_data(cfg.sft)[TASK]["test"][:rows]
    if not test:
        raise SystemExit(f"{TASK}: the held-out split is empty (raise sft.train_size)")
    inp, gold = work / f"{TASK}.in.jsonl", work / f"{TASK}.gold.jsonl"
    write_jsonl(inp, test)
    write_jsonl(gold, [task(TASK).gold(r) for r in test])
    return inp, gold


def evaluate(run: Path, tag: str, data: tuple[Path, Path], work: Path, args) -> dict:
    """Relevance, InterestCoverage and mean generated tokens of the model in run ``run`` on the held-out users."""
    done = work / f"{tag}.metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    inp, gold = data
    pred = work / f"{tag}.pred.jsonl"
    _run(["label", "--model", str(run), "--input", str(inp), "--output", str(pred), "--task", TASK,
          "--batch-size", str(args.batch_size), "--mode", "reasoning", "--max-new-tokens", str(args.gen_tokens)],
         work / f"label_{tag}.log")
    m = _eval(pred, gold, TASK, [])
    rows = [json.loads(x) for x in pred.read_text().splitlines() if x.strip()]
    tok = AutoTokenizer.from_pretrained(str(ckpt.resolve(run / "checkpoints") / "tokenizer"))
    lens = [len(tok(r["raw"], add_special_tokens=False)["input_ids"]) for r in rows if isinstance(r.get("raw"), str)]
    out = {"relevance": m["Relevance"], "interest_coverage": m["InterestCoverage"],
           "malformed": m.get("malformed", 0) / max(1, m.get("n", len(rows)) or 1),
           "len": sum(lens) / len(lens) if lens else math.nan}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(done)
    return out


def _records(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


def one_seed(seed: int, args, root: Path) -> dict:
    work = root / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    sft_out, rm_out = work / "sft", work / "token_rm"
    t0 = time.time()
    sft = [f"out_dir={sft_out}", *SFT_TASK, f"train.seed={1 + seed}", f"train.steps={args.sft_steps}",
           "sft.test_rows=0", "checkpoint.every=0", "checkpoint.save_at_end=true", "resume=none",
           f"sft.eval_every={args.sft_steps}"] + (FAST_SFT if args.fast else []) + args.sft_set
    if not (sft_out / "checkpoints").is_dir():
        _run(["train", "sft", "--config", str(SFT_CFG), *sft], work / "sft.log")
    t1 = time.time()
    rm = [f"out_dir={rm_out}", "model.init=mcore", f"model.path={sft_out / 'checkpoints'}",
          f"train.seed={1 + seed}", f"train.steps={args.rm_steps}", "resume=none",
          "checkpoint.every=0", "checkpoint.save_at_end=true", *RM_SET] + (FAST_RM if args.fast else []) + args.rm_set
    if not (rm_out / "checkpoints").is_dir():
        _run(["train", "rm", "--config", str(RM_CFG), *rm], work / "rm.log")
    t2 = time.time()
    out: dict = {"seed": seed, "sft_s": round(t1 - t0, 1), "rm_s": round(t2 - t1, 1)}
    rep = rm_out / "eval" / "report.json"
    if rep.is_file():
        r = json.loads(rep.read_text())
        out.update({f"rm_{k}": v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and k not in ("step", "wall_s")})
    base = [*SFT_TASK, "model.init=mcore", f"model.path={sft_out / 'checkpoints'}",
            f"grpo.resources.token_model={rm_out}", f"train.seed={1 + seed}", f"train.steps={args.ppo_steps}",
            "checkpoint.every=0", "checkpoint.save_at_end=true", "resume=none"]
    base += (FAST_PPO if args.fast else []) + args.ppo_set
    cfg = JobConfig.load(PPO_CFG, base)
    data = held_out(cfg, args.rows, work)
    out.update({f"{k}_sft": v for k, v in evaluate(sft_out, "sft", data, work, args).items()})
    for arm in args.arms:
        run = work / arm
        if not (run / "checkpoints").is_dir():
            t = time.time()
            _run(["train", "ppo", "--config", str(PPO_CFG), f"out_dir={run}", *base, *ARMS[arm]], work / f"{arm}.log")
            out[f"{arm}_s"] = round(time.time() - t, 1)
        out.update({f"{k}_{arm}": v for k, v in evaluate(run, arm, data, work, args).items()})
        recs = _records(run)
        if recs:
            tail = recs[-max(1, len(recs) // 5):]
            out[f"train_len_last_{arm}"] = sum(x["response_len_mean"] for x in tail) / len(tail)
            out[f"train_rm_reward_last_{arm}"] = sum(
                x.get(f"reward/{TASK}/token_rm/mean", math.nan) for x in tail) / len(tail)
    return out


def plot(root: Path, seeds: list[int], arms: list[str], path: Path) -> Path:
    """Per arm (mean over seeds): the token RM's reward and the response length per training step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        runs = [_records(root / f"seed{s}" / arm) for s in seeds]
        runs = [r for r in runs if r]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        for ax, key in zip(axes, (f"reward/{TASK}/token_rm/mean", "response_len_mean")):
            ys = [sum(r[i].get(key, math.nan) for r in runs) / len(runs) for i in range(n)]
            ax.plot(range(1, n + 1), ys, label=arm)
    axes[0].set_title("token RM reward (sum over tokens) per rollout")
    axes[1].set_title("response length (tokens)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarize(per_seed: list[dict], wall: float, args) -> dict:
    keys = sorted({k for r in per_seed for k, v in r.items() if isinstance(v, (int, float)) and k != "seed"})
    out: dict = {}
    for k in keys:
        xs = [float(r[k]) for r in per_seed if k in r]
        mean = sum(xs) / len(xs)
        out[k] = mean
        if len(xs) > 1:
            out[f"{k}_std"] = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    out.update(rows=args.rows, seeds=len(per_seed), arms=args.arms, fast=args.fast, wall_s=round(wall, 1))
    if len(per_seed) > 1:
        out["per_seed"] = per_seed
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1, help="repeat with N training seeds; report mean ± std")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+N-1")
    ap.add_argument("--fast", action="store_true", help="tiny step and row counts: a smoke run, not a measurement")
    ap.add_argument("--workdir", default=None, help="runs, predictions and logs (default: a temp dir); finished "
                                                    "runs found there are reused")
    ap.add_argument("--rows", type=int, default=None, help="held-out users (default: 200; --fast: 4)")
    ap.add_argument("--sft-steps", type=int, default=None, help="SFT steps (default: 200; --fast: 4)")
    ap.add_argument("--rm-steps", type=int, default=None, help="token RM steps (default: 1000; --fast: 2)")
    ap.add_argument("--ppo-steps", type=int, default=None, help="steps per RL arm (default: 100; --fast: 2)")
    ap.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, from {sorted(ARMS)} "
                                                         f"(default: %(default)s)")
    ap.add_argument("--gen-tokens", type=int, default=None, help="eval: most generated tokens (default: 96; "
                                                                 "--fast: 16)")
    ap.add_argument("--batch-size", type=int, default=16, help="label batch size (default: %(default)s)")
    ap.add_argument("--plot", default=None, help="write the curves here (e.g. benchmarks/plots/tppo_tiny.png)")
    ap.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="extra SFT override")
    ap.add_argument("--rm-set", action="append", default=[], metavar="KEY=VALUE", help="extra token-RM override")
    ap.add_argument("--ppo-set", action="append", default=[], metavar="KEY=VALUE", help="extra override, all arms")
    args = ap.parse_args()
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in ARMS]
    if bad or not args.arms:
        ap.error(f"--arms: unknown {bad}; expected some of {sorted(ARMS)}")
    if args.seeds < 1:
        ap.error(f"--seeds: expected >= 1, got {args.seeds}")
    args.rows = args.rows or (4 if args.fast else 200)
    args.sft_steps = args.sft_steps or (4 if args.fast else 200)
    args.rm_steps = args.rm_steps or (2 if args.fast else 1000)
    args.ppo_steps = args.ppo_steps or (2 if args.fast else 100)
    args.gen_tokens = args.gen_tokens or (16 if args.fast else 96)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tppo_tiny_"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    per_seed = []
    for seed in seeds:
        r = one_seed(seed, args, root)
        per_seed.append(r)
        print(f"seed {seed}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in r.items() if k != "seed"), flush=True)
    out = summarize(per_seed, time.time() - t0, args)
    if args.plot:
        out["plot"] = str(plot(root, seeds, args.arms, Path(args.plot)))
    for tag in ["sft", *args.arms]:
        if f"relevance_{tag}" in out:
            print(f"{tag:>11}: relevance {out[f'relevance_{tag}']:.4f}  generated tokens {out.get(f'len_{tag}', math.nan):.1f}")
    print(f"workdir: {root}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
