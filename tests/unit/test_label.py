"""``megatron-ads label`` end to end on a tiny DeepSeek-V3 checkpoint (one process): label-mode output read by
``megatron-ads eval``, probabilities against transformers' log-likelihoods, reasoning mode, resume after an
interruption (exactly once, equal to an uninterrupted run), malformed input lines, an existing output, the
closing-tag stop of generation, and temperature calibration from the CLI (--calibrate, --temperature-file)."""

import json

import pytest
import torch

from megatron_ads.cli import main
from megatron_ads.data.tasks import THINK_EMPTY, task
from megatron_ads.infer.calibrate import apply_temperature
from megatron_ads.infer.engine import Engine
from megatron_ads.infer.job import LabelJob, done_ids, run_job
from megatron_ads.infer.scorer import EngineScorer, closing_tag
from megatron_ads.infer.weights import eos_ids, load_for_inference
from megatron_ads.runtime.errors import BadInput

N = 12


pytestmark = pytest.mark.usefixtures("single_rank_module")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("label")
    ckpt, rows = d / "ckpt", d / "rows.jsonl"
    assert main(["init-model", "--flavor", "tiny_deepseek_v3", "--out", str(ckpt)]) == 0
    assert main(["data", "synth", "--task", "query_ad", "--n", str(N), "--out", str(rows)]) == 0
    model, cfg, tok = load_for_inference(ckpt, precision="fp32")
    scorer = EngineScorer(Engine(model, cfg, batch_size=4, tokenizer=tok), tok, eos_ids(cfg, tok))
    return ckpt, rows, scorer


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _label(ckpt, inp, out, *extra):
    return main(["label", "--model", str(ckpt), "--input", str(inp), "--output", str(out), "--task", "query_ad",
                 "--batch-size", "4", *extra])


class _HFScorer:
    """The reference: transformers' log-likelihoods of the same prompt + target tokens."""

    def __init__(self, path, tok):
        import transformers

        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        self.tok = tok

    def score(self, prompts, targets):
        out = []
        for p, t in zip(prompts, targets):
            pid = self.tok(p, add_special_tokens=False)["input_ids"]
            tid = self.tok(t, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(self.model(torch.tensor([pid + tid])).logits[0].double(), -1)
            out.append(sum(lp[len(pid) - 1 + k, x].item() for k, x in enumerate(tid)))
        return out


def test_label_mode_eval_probs_and_transformers_reference(setup, tmp_path, capsys):
    ckpt, rows, scorer = setup
    out = tmp_path / "out.jsonl"
    assert _label(ckpt, rows, out, "--json", "--gpu-cost-per-s", "0.001") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labeled"] == N and summary["failed"] == 0
    cost = summary["cost"]
    assert cost["avg_input_tokens"] > 0 and cost["avg_output_tokens"] > 0 and cost["samples_per_s"] > 0
    assert cost["usd_per_1m_samples"] == pytest.approx(0.001 * 1e6 / cost["samples_per_s"], rel=1e-2)
    preds = _read(out)
    gold = _read(rows)
    assert [p["id"] for p in preds] == [g["id"] for g in gold]
    for p in preds:
        assert p["parse"] == "ok" and p["model"] == str(ckpt) and p["precision"] == "fp32"
        assert p["tokens_in"] > 0 and p["tokens_out"] > 0
        for name, probs in p["probs"].items():
            assert abs(sum(probs.values()) - 1.0) < 1e-6  # Task.predict softmaxes in float32
            assert p["labels"][name] == max(probs, key=probs.get)
    assert main(["eval", "--pred", str(out), "--gold", str(rows), "--task", "query_ad", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == N and r["malformed"] == 0 and not r["pred_line_errors"]

    # EngineScorer.score vs transformers on the same prompt + target tokens; Task.predict through both
    t = task("query_ad")
    two = gold[:2]
    ref = _HFScorer(ckpt, scorer.tokenizer)
    prompts = [t.prompt(g) + THINK_EMPTY for g in two for _ in range(2)]
    targets = ["<Label>good</Label>", "<Label>bad</Label>"] * 2
    ours = scorer.score(prompts, targets)
    assert max(abs(a - b) for a, b in zip(ours, ref.score(prompts, targets))) <= 1e-5
    ref_preds = t.predict(two, ref)
    for p, q in zip(preds[:2], ref_preds):
        assert p["labels"] == q["labels"]
        for name in q["probs"]:
            assert max(abs(p["probs"][name][c] - q["probs"][name][c]) for c in q["probs"][name]) <= 1e-5


def test_reasoning_mode_rows_written_and_read_by_eval(setup, tmp_path, capsys):
    ckpt, rows, _ = setup
    few = tmp_path / "few.jsonl"
    few.write_text("".join(rows.read_text().splitlines(keepends=True)[:3]))
    out = tmp_path / "out.jsonl"
    assert _label(ckpt, few, out, "--mode", "reasoning", "--max-new-tokens", "6", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    preds = _read(out)
    assert len(preds) == 3 and summary["labeled"] == 3
    for p in preds:
        assert p["parse"] in ("ok", "failed") and isinstance(p["raw"], str) and "labels" in p
        assert 1 <= p["tokens_out"] <= 6 and p["mode"] == "reasoning"
        assert (p["parse"] == "ok") == (not p["parse_errors"])
    assert summary["parse_failed"] == sum(p["parse"] == "failed" for p in preds)
    assert main(["eval", "--pred", str(out), "--gold", str(few), "--task", "query_ad", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_is_exactly_once_and_equal(setup, tmp_path):
    _, rows, scorer = setup
    t = task("query_ad")
    full = tmp_path / "full.jsonl"
    run_job(LabelJob(input=rows, output=full, task=t, batch_size=4), scorer)

    out = tmp_path / "out.jsonl"
    batches = []

    def kill_after_first(n):
        batches.append(n)
        raise _Interrupt  # the first batch is written and synced, then the run dies

    with pytest.raises(_Interrupt):
        run_job(LabelJob(input=rows, output=out, task=t, batch_size=4), scorer, on_batch=kill_after_first)
    assert len(_read(out)) == 4
    with out.open("a") as f:
        f.write('{"id": "qa0-4", "labels": {"rel')  # a torn line, as a kill mid-write leaves it
    with pytest.raises(FileExistsError, match="out.jsonl"):
        run_job(LabelJob(input=rows, output=out, task=t, batch_size=4), scorer)
    res = run_job(LabelJob(input=rows, output=out, task=t, batch_size=4, resume=True), scorer)
    assert res.skipped == 4 and res.labeled == N - 4
    resumed = _read(out)
    assert sorted(str(r["id"]) for r in resumed) == sorted(str(r["id"]) for r in _read(rows))  # exactly once
    assert resumed == _read(full)
    assert len(done_ids(out)) == N
    # a second resume has nothing left to do; one with other settings is refused
    assert run_job(LabelJob(input=rows, output=out, task=t, batch_size=4, resume=True), scorer).labeled == 0
    with pytest.raises(BadInput, match="out.jsonl:1: field 'mode'"):
        run_job(LabelJob(input=rows, output=out, task=t, mode="reasoning", resume=True), scorer)


def test_malformed_lines_reported_others_labeled_exit_1(setup, tmp_path, capsys):
    ckpt, rows, _ = setup
    lines = rows.read_text().splitlines()[:3]
    bad = json.loads(lines[1])
    del bad["query"]
    inp = tmp_path / "in.jsonl"
    long = {**json.loads(lines[0]), "id": "long", "query": "tents " * 3000}
    inp.write_text("\n".join([lines[0], "{not json", json.dumps(bad), lines[2], json.dumps(long)]) + "\n")
    out = tmp_path / "out.jsonl"
    assert _label(ckpt, inp, out, "--json") == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == 3 and summary["labeled"] == 2
    assert [p["id"] for p in _read(out)] == [json.loads(lines[0])["id"], json.loads(lines[2])["id"]]
    errors = _read(tmp_path / "out.jsonl.errors.jsonl")
    assert [e["line"] for e in errors] == [2, 3, 5]
    assert errors[2]["id"] == "long" and "exceed max_position_embeddings 2048" in errors[2]["error"]
    assert "invalid JSON" in errors[0]["error"] and f"{inp}:2" in errors[0]["error"]
    assert errors[1]["id"] == bad["id"] and "field 'query': missing" in errors[1]["error"]


def test_existing_output_without_resume_exit_2(setup, tmp_path):
    ckpt, rows, _ = setup
    out = tmp_path / "out.jsonl"
    out.write_text("")
    assert _label(ckpt, rows, out) == 2
    assert out.read_text() == ""


def test_generation_stops_at_the_closing_tag_however_tokenized(setup):
    _, rows, scorer = setup
    prompt = task("query_ad").prompt(_read(rows)[0]) + THINK_EMPTY
    free = scorer.generate_full([prompt], 12)[0]
    ids, dec = free.output_ids, scorer.tokenizer.decode
    # a stop text the free run completes at token `cut` (a tail of the text, wherever token boundaries fall)
    cut, stop = next((k, dec(ids[:k])[-4:]) for k in range(3, len(ids))
                     if len(dec(ids[:k]).strip()) >= 4 and dec(ids[:k])[-4:] not in dec(ids[:k - 1]))
    got = scorer.generate_full([prompt], 12, stop_text=stop)[0]
    assert got.finish_reason == "stop" and got.output_ids == ids[:cut]
    assert got.logprobs == free.logprobs[:cut]
    # the task's closing tag, never generated by this random model: the output is unchanged
    same = scorer.generate_full([prompt], 12, stop_text=closing_tag(task("query_ad")))[0]
    assert (same.output_ids, same.finish_reason) == (ids, free.finish_reason)


def test_calibrate_cli_then_temperature_file(setup, tmp_path, capsys):
    ckpt, rows, _ = setup
    lines = rows.read_text().splitlines(keepends=True)
    val, inp = tmp_path / "val.jsonl", tmp_path / "in.jsonl"
    val.write_text("".join(lines[:8]))  # synthetic rows carry their gold labels
    inp.write_text("".join(lines[8:]))
    plain, out, again = tmp_path / "plain.jsonl", tmp_path / "out.jsonl", tmp_path / "again.jsonl"
    assert _label(ckpt, inp, out, "--mode", "reasoning", "--calibrate", str(val)) == 2  # label mode only
    assert _label(ckpt, inp, plain) == 0
    capsys.readouterr()
    assert _label(ckpt, inp, out, "--calibrate", str(val), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    cal_file = tmp_path / "out.jsonl.calibration.json"
    cal = json.loads(cal_file.read_text())
    assert summary["calibration"] == cal and summary["calibration_file"] == str(cal_file)
    assert set(cal["fields"]) == {"relevance", "location", "quality"} and cal["n_bins"] == 15
    temps = {name: f["temperature"] for name, f in cal["fields"].items()}
    for f in cal["fields"].values():
        assert f["temperature"] > 0 and f["n"] == 8 and f["nll_after"] <= f["nll_before"] + 1e-12
        assert 0 <= f["ece_after"] <= 1 and 0 <= f["ece_before"] <= 1
    for p, q in zip(_read(plain), _read(out)):
        assert p["labels"] == q["labels"] and q["temperature"] == temps and "temperature" not in p
        for name, probs in p["probs"].items():
            want = apply_temperature(probs, temps[name])
            assert max(abs(q["probs"][name][c] - want[c]) for c in want) <= 1e-9
    assert _label(ckpt, inp, again, "--temperature-file", str(cal_file)) == 0
    assert _read(again) == _read(out)
