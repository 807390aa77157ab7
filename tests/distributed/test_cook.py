"""``megatron-ads cook`` end to end on tiny real models (a random-init tiny DeepSeek-V3 teacher, a random-init tiny
Llama verifier, the frozen MiniLM embedder), then ``train sft`` on the cooked files.

A random teacher writes no well-formed reasoning, so at the spec's defaults its prompt is refused on the golden
set (exit 2, the prompt and the figure named). The plumbing run relaxes what a random model cannot pass (the
reasoning is closed at the token limit, no entity overlap, self-consistency and verifier thresholds 0, no
golden set): every stage still runs on the real models (the scores are recorded), the report's counts add up,
the splits are what ``train sft`` reads through ``sft.files``, and re-running resumes without generating.
Ad rewriting rows first pass AutoEval (rules, then the judge: a random tiny model scoring with thresholds that
every expected score fails or passes).
What each filter drops is tested on scripted models in ``tests/unit/test_cook_filters.py``."""

import json
from pathlib import Path

import pytest

from megatron_ads.cli import main

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("single_rank_module")]
CFG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "sft_tiny_cpu.yaml"
N = 20
TASKS = ("query_ad", "ad_user", "query_gen")
RELAXED = ["answer=gold", "close_truncated=true", "min_entity_overlap=0", "grounding=false", "self_consistency_min=0",
           "verifier_min=0", "golden_rows=0", "n_candidates=2", "max_new_tokens=12", "batch_size=10"]


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_engine_per_row_seeds_make_a_row_independent_of_its_call(tiny_ckpts):
    from megatron_ads.infer.engine import Engine, SamplingParams
    from megatron_ads.infer.weights import load_for_inference

    model, cfg, _ = load_for_inference(tiny_ckpts("tiny_deepseek_v3"))
    engine = Engine(model, cfg, batch_size=4, cache="latent")
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    kw = dict(max_new_tokens=6, temperature=1.0)
    both = engine.generate(prompts, SamplingParams(seeds=[101, 202], **kw))
    alone = engine.generate(prompts[1:], SamplingParams(seeds=[202], **kw))
    assert both[1].output_ids == alone[0].output_ids
    assert both[1].output_ids != engine.generate(prompts[1:], SamplingParams(seeds=[203], **kw))[0].output_ids
    with pytest.raises(ValueError, match="seeds: expected one per prompt"):
        engine.generate(prompts, SamplingParams(seeds=[1], **kw))


def test_cook_end_to_end_then_train_sft(tmp_path, capsys):
    teacher, verifier, out = tmp_path / "teacher", tmp_path / "verifier", tmp_path / "cooked"
    assert main(["init-model", "--flavor", "tiny_deepseek_v3", "--out", str(teacher)]) == 0
    assert main(["init-model", "--flavor", "tiny_llama", "--out", str(verifier)]) == 0
    raw = {t: tmp_path / f"{t}.raw.jsonl" for t in TASKS}
    for t in TASKS:
        assert main(["data", "synth", "--task", t, "--n", str(N), "--out", str(raw[t])]) == 0
    capsys.readouterr()

    def cook(t, *extra):
        return main(["cook", "--task", t, "--input", str(raw.get(t, raw["query_ad"])), "--teacher", str(teacher),
                     "--verifier", str(verifier), "--out", str(out), *extra])

    # bad input: a missing teacher, an unknown task
    assert cook("query_ad", "--teacher", str(tmp_path / "nope")) == 2
    assert "--teacher" in capsys.readouterr().err
    assert cook("user_profile") == 2
    assert "cooking has prompts for" in capsys.readouterr().err

    # 1. at the defaults the random teacher's prompt is refused on the golden set, with the report; with
    # workers the parent validates and no worker starts
    for workers in ("1", "2"):
        assert cook("query_ad", "golden_rows=3", "max_new_tokens=12", "--workers", workers) == 2
        err = capsys.readouterr().err
        assert "prompt query_ad/v1 refused on the golden set (3 rows" in err and "format validity 0.00 < 0.90" in err
        refused = json.loads((out / "cook_report.json").read_text())["tasks"]["query_ad"]
        assert refused["status"] == "refused" and not refused["prompt_validation"]["passed"]
        assert not (out / "query_ad.journal.jsonl").exists()

    # 2. the plumbing run: every task cooked into one directory (the refused task's corrected settings start
    # over without --restart: it cooked nothing); query_ad with 2 workers, merged into one journal
    for t in TASKS:
        assert cook(t, *RELAXED, "--json", *(["--workers", "2"] if t == "query_ad" else [])) == 0
        capsys.readouterr()
    assert not list(out.glob("query_ad.journal.jsonl.*"))  # the workers' parts were merged and removed
    report = json.loads((out / "cook_report.json").read_text())
    assert set(report["tasks"]) == set(TASKS) and set(report["sft_files"]) == set(TASKS)
    for t in TASKS:
        s = report["tasks"][t]
        i, c = s["inputs"], s["candidates"]
        assert s["status"] == "cooked" and i["read"] == N
        assert i["read"] == i["kept"] + sum(i["dropped"].values())
        assert c["generated"] == c["survived"] + sum(c["dropped"].values())
        cooked_inputs = i["read"] - sum(i["dropped"].get(f, 0) for f in ("broader", "off_topic", "near_duplicate"))
        assert c["generated"] == 2 * (cooked_inputs - i["dropped"]["too_long"])
        assert s["scores"]["verifier"]["n"] > 0  # the verifier scored the survivors
        journal = _lines(out / f"{t}.journal.jsonl")
        assert len(journal) == cooked_inputs
        splits = {k: _lines(report["sft_files"][t][k]) for k in ("train", "val", "test")}
        assert {k: len(v) for k, v in splits.items()} == s["rows"] and sum(s["rows"].values()) == i["kept"]
        assert s["rows"]["val"] >= 1 and s["rows"]["test"] >= 1
        ids = [r["id"] for v in splits.values() for r in v]
        assert len(set(ids)) == len(ids)
        for r in splits["train"]:
            assert r["reasoning"] == r["reasoning"].strip() and r["cook"]["prompt"] == f"{t}/v1"
        if t == "query_gen":
            q = s["queries"]
            assert q["raw"] == 3 * N and q["raw"] == q["kept"] + sum(q["dropped"].values())
    assert {p.name for p in (out / "plots").iterdir()} >= {f"{t}_candidates.png" for t in TASKS}

    # 3. re-running resumes: nothing generated again, the same corpus
    before = {t: (out / f"{t}.train.jsonl").read_bytes() for t in TASKS}
    journal = (out / "query_ad.journal.jsonl").read_bytes()
    assert cook("query_ad", *RELAXED) == 0
    assert (out / "query_ad.journal.jsonl").read_bytes() == journal
    assert (out / "query_ad.train.jsonl").read_bytes() == before["query_ad"]
    assert cook("query_ad", *RELAXED, "n_candidates=3") == 2  # a cooked journal: other settings need --restart
    assert "config.n_candidates differ" in capsys.readouterr().err
    assert (out / "query_ad.journal.jsonl").read_bytes() == journal

    # 4. train sft reads the cooked files through sft.files
    from megatron_ads.cli.workers import sft_worker
    from megatron_ads.config.train import JobConfig
    from megatron_ads.runtime.launch import spawn

    files = [f"sft.files.{t}.{k}={v}" for t, f in report["sft_files"].items() for k, v in f.items()]
    job = JobConfig.load(CFG, [f"out_dir={tmp_path / 'sft'}", "train.steps=2", "train.seq_len=192",
                               "train.micro_batch=4", "sft.val_rows=2", "sft.eval_every=2", "optim.warmup_steps=1",
                               "checkpoint.save_at_end=false", f"sft.tasks=[{','.join(TASKS)}]", *files])
    r = spawn(sft_worker, 1, job.to_dict())[0]
    assert r["steps"] == 2
    ev = json.loads((tmp_path / "sft" / "eval" / "report.json").read_text())
    for t in TASKS:
        assert ev[t]["n"] == report["tasks"][t]["rows"]["test"]


def test_cook_ad_rewrite_autoeval_rules_and_judge(tmp_path, capsys):
    """ad_rewrite: the gold rewrites that fail an AutoEval rule are dropped before any generation (the synthetic
    rewrites have no call-to-action verb in the headline: at the default rules nothing is kept, with a warning);
    with the judge, thresholds no expected score reaches drop every row, thresholds of 0 keep the rule-passing
    ones; the kept rows are cooked (reasoning, the gold rewrite unchanged)."""
    teacher, raw = tmp_path / "teacher", tmp_path / "ad_rewrite.raw.jsonl"
    assert main(["init-model", "--flavor", "tiny_deepseek_v3", "--out", str(teacher)]) == 0
    assert main(["data", "synth", "--task", "ad_rewrite", "--n", str(N), "--out", str(raw)]) == 0
    gold = {r["id"]: r for r in _lines(raw)}
    capsys.readouterr()
    no_cta = "autoeval_rules=[mention_sale, headline_length, blacklist, diversity]"

    def cook(out, *extra):
        code = main(["cook", "--task", "ad_rewrite", "--input", str(raw), "--teacher", str(teacher),
                     "--out", str(tmp_path / out), *RELAXED, *extra])
        rep = json.loads((tmp_path / out / "cook_report.json").read_text()) if code == 0 else None
        return code, rep["tasks"]["ad_rewrite"] if rep else None

    code, s = cook("rules")
    assert code == 0 and s["inputs"]["kept"] == 0 and s["inputs"]["dropped"]["autoeval"] == N
    assert s["autoeval"]["failed"]["cta_missing"] == N and s["candidates"]["generated"] == 0
    assert "no input of" in capsys.readouterr().err  # the empty corpus is said, not silent
    code, s = cook("rules_golden", "golden_rows=4")  # no input left: nothing to validate the prompt on, no refusal
    assert code == 0 and s["inputs"]["kept"] == 0 and s["prompt_validation"] is None
    capsys.readouterr()

    code, s = cook("no_cta", no_cta)
    kept = s["inputs"]["kept"]
    ae = s["autoeval"]
    assert code == 0 and ae["passed"] == N - ae["failed"]["diversity"] and 0 < ae["passed"] < N
    assert s["inputs"]["dropped"]["autoeval"] == N - ae["passed"] and kept + s["inputs"]["dropped"]["schema"] \
        + s["inputs"]["dropped"]["too_long"] == ae["passed"]
    journal = _lines(tmp_path / "no_cta" / "ad_rewrite.journal.jsonl")
    assert len(journal) == ae["passed"]  # the dropped rows were never generated for
    rows = [x for split in ("train", "val", "test") for x in _lines(tmp_path / "no_cta" / f"ad_rewrite.{split}.jsonl")]
    assert len(rows) == kept > 0
    for r in rows:
        assert r["rewrite"] == gold[r["id"]]["rewrite"] and r["reasoning"] and r["cook"]["prompt"] == "ad_rewrite/v1"

    judge = ["--autoeval-judge", str(teacher)]
    code, s = cook("judge_all", no_cta, *judge, "autoeval_thresholds={relevance: 5, generalization: 5}")
    assert code == 0 and s["autoeval"]["passed"] == 0 and s["autoeval"]["failed"]["judge_relevance"] == N
    assert s["autoeval"]["judge"] == str(teacher) and s["autoeval"]["thresholds"] == {"relevance": 5,
                                                                                      "generalization": 5}
    code, s = cook("judge_none", no_cta, *judge, "autoeval_thresholds={relevance: 0, generalization: 0}")
    assert code == 0 and s["autoeval"]["passed"] == ae["passed"] and s["inputs"]["kept"] == kept
    capsys.readouterr()
    assert cook("bad", no_cta, *judge, "autoeval_thresholds={tone: 1}")[0] == 2
    assert "autoeval_thresholds: expected criteria among" in capsys.readouterr().err
    assert main(["cook", "--task", "query_ad", "--input", str(raw), "--teacher", str(teacher), "--out",
                 str(tmp_path / "qa"), *judge]) == 2
    assert "--autoeval-judge: judges ad rewrites only" in capsys.readouterr().err
