"""GRPO rollout and train tokens/s: a short ``megatron-ads train grpo`` run, read from its ``metrics.jsonl``.

    python benchmarks/grpo_speed.py [--steps 8] [--config launch/configs/grpo_tiny_cpu.yaml] [--set key=value ...]

Runs ``train grpo`` with ``--config`` (default: the tiny DeepSeek-V3 GRPO recipe from a random model, one
process; on a GPU machine it runs on CUDA) for ``--steps`` steps into a temporary directory, without
checkpoints, and reads the trainer's per-step records (``train.grpo_loop``):

- ``rollout_tokens_per_s``: generated tokens of the step's rollouts / the rollout phase's wall time (the
  inference engine in-process: prompts x group_size sequences of at most ``grpo.max_new_tokens``);
- ``train_tokens_per_s``: global batch x ``train.seq_len`` x ``grpo.ppo_epochs`` / the train phase's wall time
  (old-policy log-probs, the reference model's, the loss's forward/backward and the optimizer step);
- ``tokens_per_s``: global batch x seq_len / the whole step's time.

Medians over the steps after the first (``--skip``, default 1: the first step pays one-off set-up costs).
Nothing is asserted. The last line printed is one JSON object: ``rollout_tokens_per_s``,
``train_tokens_per_s``, ``step_tokens_per_s``, ``rollout_time_share`` (median fraction of a step spent in
rollouts), ``response_len_mean``, ``rollouts_per_step``, ``steps``, ``measured_steps``, ``device``, ``wall_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def summarize(records: list[dict], skip: int = 1) -> dict:
    """Medians of the speed figures over ``records[skip:]`` (all records when there are no more)."""
    recs = records[skip:] or records
    if not recs:
        raise ValueError("no GRPO step records")
    med = lambda k: statistics.median(float(r[k]) for r in recs)  # noqa: E731
    share = statistics.median(float(r["rollout_time_s"]) / max(float(r["step_time_s"]), 1e-9) for r in recs)
    return {"rollout_tokens_per_s": med("rollout_tokens_per_s"), "train_tokens_per_s": med("train_tokens_per_s"),
            "step_tokens_per_s": med("tokens_per_s"), "rollout_time_share": share,
            "response_len_mean": med("response_len_mean"), "measured_steps": len(recs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip", type=int, default=1, help="first steps left out of the medians")
    ap.add_argument("--config", default=str(REPO / "launch" / "configs" / "grpo_tiny_cpu.yaml"))
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for train grpo")
    args = ap.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="megatron_ads_grpo_speed_") as tmp:
        run = Path(tmp) / "run"
        log = Path(tmp) / "train.log"
        cmd = [sys.executable, "-m", "megatron_ads", "train", "grpo", "--config", args.config, f"out_dir={run}",
               "resume=none", f"train.steps={args.steps}", "train.log_every=1", "checkpoint.save_at_end=false",
               "checkpoint.every=0", *args.overrides]
        with open(log, "w") as f:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
        if p.returncode != 0:
            print("\n".join(log.read_text().splitlines()[-30:]), file=sys.stderr)
            print(f"train grpo failed (exit {p.returncode}): {' '.join(cmd)}", file=sys.stderr)
            return p.returncode
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        cfg = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    out = summarize(records, args.skip)
    import torch

    out.update({"steps": len(records), "rollouts_per_step": _rollouts_per_step(cfg),
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "config": str(Path(args.config).relative_to(REPO)) if Path(args.config).is_relative_to(REPO)
                else args.config, "overrides": args.overrides, "wall_s": time.time() - t0})
    print(f"GRPO ({out['config']}, {out['steps']} steps on {out['device']}, medians of the last "
          f"{out['measured_steps']}):")
    print("| measure | value |\n|---|---|")
    print(f"| rollout tokens/s (generated tokens / rollout time) | {out['rollout_tokens_per_s']:.1f} |")
    print(f"| train tokens/s (batch x seq_len x ppo_epochs / train time) | {out['train_tokens_per_s']:.1f} |")
    print(f"| step tokens/s (batch x seq_len / step time) | {out['step_tokens_per_s']:.1f} |")
    print(f"| share of the step in rollouts | {out['rollout_time_share']:.2f} |")
    print(f"| mean response length (tokens) | {out['response_len_mean']:.1f} |")
    print(json.dumps(out), flush=True)  # the last line: machine-readable figures (benchmarks/run_all.py)
    return 0


def _rollouts_per_step(config_yaml: str) -> int | None:
    """micro_batch x num_microbatches of the run's saved config (dp = 1 here), or None."""
    try:
        import yaml

        t = yaml.safe_load(config_yaml)["train"]
        return int(t["micro_batch"]) * int(t["num_microbatches"])
    except Exception:  # noqa: BLE001 - a figure for the record only
        return None


if __name__ == "__main__":
    sys.exit(main())
