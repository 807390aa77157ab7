"""General instruction data (AdNanny Table 8 in shape): the generator, the general-only SFT config, the held-out
split, the NLL / perplexity / exact-match metric, and the tokenizer an SFT run from a base checkpoint uses."""

import json
import math

import pytest

from megatron_ads.cli import main
from megatron_ads.config.train import JobConfig, ModelSpec
from megatron_ads.data.general import FAMILIES, evaluate_general, exact, general_metrics, generate
from megatron_ads.data.sft_data import general_data, load_sft_data, sft_tokenizer
from megatron_ads.data.tasks import GENERAL, check_sft, general_only, load_jsonl, sft_tasks
from megatron_ads.data.tokenizer import init_tokenizer_dir, run_tokenizer, train_bpe_tokenizer


# ------------------------------------------------------------------------------------ generator
def test_generator_is_deterministic_distinct_and_covers_every_family():
    rows = generate(800, seed=3)
    assert rows == generate(800, seed=3) != generate(800, seed=4)
    assert len({r["prompt"] for r in rows}) == 800 and len({r["id"] for r in rows}) == 800
    fams = {r["family"] for r in rows}
    assert fams == set(FAMILIES)
    assert set(rows[0]) == {"id", "family", "prompt", "response"}


def test_generator_answers_are_exact():
    rows = generate(2000, seed=0)
    by = {}
    for r in rows:
        by.setdefault(r["family"], []).append(r)
    for r in by["arithmetic"]:
        p = r["prompt"]
        if p.startswith("What is"):
            a, op, b = p[len("What is "):-1].split()
            assert int(r["response"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)), r
    for r in by["uppercase"]:
        assert r["response"].isupper() and r["response"].lower() in r["prompt"]
    for r in by["reverse"]:
        assert r["response"][::-1] in r["prompt"]
    for r in by["sort"]:
        nums = [int(x) for x in r["response"].split(", ")]
        assert nums == sorted(nums) and len(nums) == 3
    fixed = {p: r for p, r in FAMILIES["next_day"]()}
    assert fixed["What day comes after Sunday?"] == "Monday" and fixed["Which day precedes Monday?"] == "Sunday"
    assert dict(FAMILIES["capital"]())["What is the capital of France?"] == "Paris"
    assert dict(FAMILIES["count_letters"]())["How many letters are in the word planet?"] == "6"


def test_generator_refuses_more_rows_than_distinct_prompts():
    total = sum(len(list(f())) for f in FAMILIES.values())
    assert len(generate(total)) == total
    with pytest.raises(ValueError, match="n: the general families hold"):
        generate(total + 1)
    with pytest.raises(ValueError, match="n: expected a positive"):
        generate(0)


def test_data_synth_general_writes_the_generators_rows(tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    assert main(["data", "synth", "--task", "general", "--n", "50", "--out", str(out), "--seed", "2"]) == 0
    rows = load_jsonl(out, GENERAL)
    assert rows == generate(50, seed=2)
    assert main(["data", "synth", "--task", "general", "--n", "5", "--out", str(out), "--match-rate", "0.5"]) == 2
    assert "--match-rate" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ config
def _cfg(tmp_path, *overrides):
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: x\n")
    return JobConfig.load(path, list(overrides)).sft


def test_general_only_config_is_explicit_and_validated(tmp_path):
    s = _cfg(tmp_path, "sft.tasks=[general]", "sft.general_path=g.jsonl", "sft.tokenizer_tasks=[query_ad, ad_user]",
             "sft.synthetic.query_ad.city_rate=0.8")
    check_sft(s)
    assert general_only(s) and sft_tasks(s) == []
    with pytest.raises(ValueError, match=r"sft.general_path: required by sft.tasks=\[general\]"):
        check_sft(_cfg(tmp_path, "sft.tasks=[general]"))
    with pytest.raises(ValueError, match="sft.tasks: 'general' stands alone"):
        check_sft(_cfg(tmp_path, "sft.tasks=[general, query_ad]", "sft.general_path=g.jsonl"))
    with pytest.raises(ValueError, match="sft.tokenizer_tasks"):
        check_sft(_cfg(tmp_path, "sft.tokenizer_tasks=[nope]"))
    with pytest.raises(ValueError, match="sft.synthetic"):  # neither trained nor in the tokenizer's tasks
        check_sft(_cfg(tmp_path, "sft.tasks=[general]", "sft.general_path=g.jsonl", "sft.synthetic.query_ad.city_rate=0.8"))
    with pytest.raises(ValueError, match="sft.general_test_path"):
        _cfg(tmp_path, "sft.general_test_path=t.jsonl")
    assert not general_only(_cfg(tmp_path)) and sft_tasks(_cfg(tmp_path)) == ["query_ad", "ad_user"]


def test_general_test_split_is_held_out(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = generate(200, seed=1)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = _cfg(tmp_path, "sft.tasks=[general]", f"sft.general_path={path}")
    parts = general_data(s)
    assert len(parts["test"]) == 20 and len(parts["train"]) == 180 and parts["val"] == []
    assert not {r["id"] for r in parts["test"]} & {r["id"] for r in parts["train"]}
    assert general_data(s) == parts  # deterministic in data_seed
    assert list(load_sft_data(s)) == ["general"]
    test = tmp_path / "t.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in generate(7, seed=9)))
    parts = general_data(_cfg(tmp_path, f"sft.general_path={path}", f"sft.general_test_path={test}"))
    assert len(parts["train"]) == 200 and len(parts["test"]) == 7


# ------------------------------------------------------------------------------------ metrics
ROWS = [{"id": "a", "family": "arithmetic", "prompt": "What is 1 + 2?", "response": "3"},
        {"id": "b", "family": "capital", "prompt": "What is the capital of Peru?", "response": "Lima"},
        {"id": "c", "family": "capital", "prompt": "Name the capital city of Cuba.", "response": "Havana"}]


def test_general_metrics_hand_computed():
    m = general_metrics([-2.0, -4.0, -0.5], [2, 3, 1], [" 3\n", "lima", "Havana"], ROWS)
    assert m["n"] == 3 and m["tokens"] == 6
    assert m["nll"] == pytest.approx(6.5 / 6) and m["ppl"] == pytest.approx(math.exp(6.5 / 6))
    assert m["exact_match"] == pytest.approx(2 / 3)  # "lima" != "Lima": case counts
    assert m["exact_match_by_family"] == {"arithmetic": 1.0, "capital": 0.5}
    assert exact(" 3\n", "3") and not exact("3.", "3")
    with pytest.raises(ValueError, match="general_metrics"):
        general_metrics([-1.0], [1, 2], ["x"], ROWS[:1])


class FakeScorer:
    """Character tokens: every target character has log-prob -0.5; answers from a fixed table."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def score(self, prompts, targets):
        self.calls.append(("score", prompts, targets))
        return [-0.5 * len(t) for t in targets]

    def generate(self, prompts, max_new_tokens):
        self.calls.append(("generate", prompts, max_new_tokens))
        return [self.answers[p] for p in prompts]


def test_evaluate_general_through_a_scorer():
    answers = {"What is 1 + 2?\n": "3", "What is the capital of Peru?\n": "Quito",
               "Name the capital city of Cuba.\n": "Havana"}
    scorer = FakeScorer(answers)
    m, preds = evaluate_general(ROWS, scorer, encode=list, eos="$")
    # targets "3$", "Lima$", "Havana$": 2 + 5 + 7 = 14 characters, each at -0.5 -> NLL 0.5 per token
    assert scorer.calls[0][2] == ["3$", "Lima$", "Havana$"]
    assert m["tokens"] == 14 and m["nll"] == pytest.approx(0.5) and m["ppl"] == pytest.approx(math.exp(0.5))
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert scorer.calls[1][2] == len("Havana") + 4  # longest response's tokens + 4
    assert [p["exact"] for p in preds] == [True, False, True] and preds[1]["output"] == "Quito"


# ------------------------------------------------------------------------------------ tokenizer
def _fake_training_run(tmp_path, tok):
    """A run directory laid out as the trainer saves it: checkpoints/latest -> step_N/ with tokenizer/."""
    step = tmp_path / "base" / "checkpoints" / "step_0000010"
    (step / "tokenizer").mkdir(parents=True)
    (step / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    (step.parent / "latest").write_text(step.name)
    tok.save_pretrained(str(step / "tokenizer"))
    return tmp_path / "base", step


def test_mcore_init_from_a_training_run_uses_its_tokenizer(tmp_path):
    tok = train_bpe_tokenizer(1024, ["What is the capital of Peru?\nLima"] * 20)
    run, step = _fake_training_run(tmp_path, tok)
    for path in (run, run / "checkpoints", step, run / "checkpoints" / "latest"):
        assert init_tokenizer_dir(ModelSpec(init="mcore", path=str(path))) == step / "tokenizer", path
    assert init_tokenizer_dir(ModelSpec(init="random")) is None
    loaded = run_tokenizer(ModelSpec(init="mcore", path=str(run / "checkpoints")), 1024,
                           lambda: pytest.fail("must not train a new tokenizer"), None)
    text = "query: cheap flights | What is the capital of Peru?"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]


def test_tokenizer_tasks_give_a_general_base_run_ads_merges(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate(300, seed=0)))
    s = _cfg(tmp_path, "sft.tasks=[general]", f"sft.general_path={path}")
    data = load_sft_data(s)
    plain = sft_tokenizer(ModelSpec(init="random"), 1024, data, None, s)
    s_ads = _cfg(tmp_path, "sft.tasks=[general]", f"sft.general_path={path}", "sft.tokenizer_tasks=[query_ad, ad_user]")
    ads = sft_tokenizer(ModelSpec(init="random"), 1024, data, tmp_path / "tok", s_ads)
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    from megatron_ads.data.synthetic import SyntheticConfig
    from megatron_ads.data.synthetic import generate as synth
    from megatron_ads.data.tasks import task
    qa = task("query_ad")
    texts = [qa.prompt(r) + qa.target(r) for r in synth("query_ad", SyntheticConfig(size=20, seed=5))]
    n_plain = sum(len(plain(t)["input_ids"]) for t in texts)
    n_ads = sum(len(ads(t)["input_ids"]) for t in texts)
    assert n_ads < 0.8 * n_plain, (n_ads, n_plain)
