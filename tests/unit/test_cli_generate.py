"""``megatron-ads generate`` end to end on tiny checkpoints (one process): ids rows and prompt rows,
greedy output equal to the engine's, a checkpoint without a tokenizer, malformed input."""

import json
import shutil

import pytest

from megatron_ads.cli import main
from megatron_ads.infer.engine import Engine, SamplingParams
from megatron_ads.infer.weights import load_for_inference


pytestmark = pytest.mark.usefixtures("single_rank_module")


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_ids_and_prompt_rows(tiny_ckpts, tmp_path, capsys):
    ckpt = tiny_ckpts("tiny_deepseek_v3")
    inp = _write(tmp_path / "in.jsonl", [
        {"id": "a", "prompt": "query: running shoes | ad:"},
        {"id": 7, "input_ids": [5, 6, 7, 8]},
        {"id": "c", "input_ids": [9, 10]},
        {"id": "d", "prompt": "query: cheap flights"},
    ])
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(ckpt), "--input", str(inp), "--output", str(out), "--max-new-tokens", "5",
                 "--batch-size", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = _read(out)
    assert [r["id"] for r in rows] == ["a", 7, "c", "d"]
    assert summary["rows"] == 4 and summary["tokens_out"] == sum(len(r["output_ids"]) for r in rows)
    model, cfg, tok = load_for_inference(ckpt)
    eos = tok.eos_token_id
    prompts = [tok("query: running shoes | ad:")["input_ids"], [5, 6, 7, 8], [9, 10],
               tok("query: cheap flights")["input_ids"]]
    ref = Engine(model, cfg).generate(prompts, SamplingParams(max_new_tokens=5, stop_ids={eos}))
    for r, g in zip(rows, ref):
        assert r["output_ids"] == g.output_ids and r["finish_reason"] == g.finish_reason
        assert len(r["logprobs"]) == len(r["output_ids"]) and all(lp <= 0 for lp in r["logprobs"])
        assert r["text"] == tok.decode(g.output_ids, skip_special_tokens=True)
        assert r["finish_reason"] == ("stop" if r["output_ids"][-1] == eos else "length")


def test_latent_cache_gives_the_same_rows(tiny_ckpts, tmp_path, caplog):
    ckpt = tiny_ckpts("tiny_deepseek_v3")
    inp = _write(tmp_path / "in.jsonl", [{"id": 1, "input_ids": [5, 6, 7, 8]}, {"id": 2, "input_ids": [9, 10]},
                                         {"id": 3, "input_ids": [11, 12, 13, 14]}])
    outs = {}
    for cache in ("static", "latent"):
        outs[cache] = tmp_path / f"{cache}.jsonl"
        assert main(["generate", "--model", str(ckpt), "--input", str(inp), "--output", str(outs[cache]),
                     "--max-new-tokens", "6", "--batch-size", "2", "--cache", cache]) == 0
    static, latent = _read(outs["static"]), _read(outs["latent"])
    assert [r["output_ids"] for r in latent] == [r["output_ids"] for r in static]
    for a, b in zip(static, latent):
        assert a["finish_reason"] == b["finish_reason"]
        assert max(abs(x - y) for x, y in zip(a["logprobs"], b["logprobs"])) <= 1e-5
    llama = tiny_ckpts("tiny_llama")
    assert main(["generate", "--model", str(llama), "--input", str(inp), "--output", str(tmp_path / "l.jsonl"),
                 "--cache", "latent"]) == 2
    assert "latent" in caplog.text and not (tmp_path / "l.jsonl").exists()


def test_generate_without_tokenizer_takes_ids_only(hf_saved, tmp_path):
    ckpt = tmp_path / "notok"
    shutil.copytree(hf_saved("llama_tied"), ckpt)  # save_pretrained of a model alone: no tokenizer files
    ids_in = _write(tmp_path / "ids.jsonl", [{"id": 1, "input_ids": [3, 4, 5]}, {"id": 2, "input_ids": [6]}])
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(ckpt), "--input", str(ids_in), "--output", str(out),
                 "--max-new-tokens", "3", "--temperature", "0.8", "--top-p", "0.9", "--seed", "4"]) == 0
    rows = _read(out)
    assert [len(r["output_ids"]) for r in rows] == [3, 3] and all("text" not in r for r in rows)
    again = tmp_path / "again.jsonl"
    assert main(["generate", "--model", str(ckpt), "--input", str(ids_in), "--output", str(again),
                 "--max-new-tokens", "3", "--temperature", "0.8", "--top-p", "0.9", "--seed", "4"]) == 0
    assert _read(again) == rows  # seeded


@pytest.mark.parametrize("line, expected", [
    ("{not json", "invalid JSON"),
    ('{"prompt": "x"}', "missing field(s) id"),
    ('{"id": 1}', "exactly one of 'prompt' or 'input_ids'"),
    ('{"id": 1, "input_ids": []}', "non-empty list of integers"),
    ('{"id": 1, "input_ids": [1, 100000]}', "outside [0,"),
    ('{"id": 0, "input_ids": [1]}', "repeats line 1"),
])
def test_malformed_line_is_exit_2_with_file_line(line, expected, tiny_ckpts, tmp_path, caplog):
    inp = _write(tmp_path / "bad.jsonl", [{"id": 0, "input_ids": [1, 2]}, line])
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(tiny_ckpts("tiny_llama")), "--input", str(inp), "--output", str(out)]) == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"{inp}:2" in messages and expected in messages, messages
    assert not out.exists()


def test_prompt_row_without_tokenizer_names_the_line(hf_saved, tmp_path, caplog):
    inp = _write(tmp_path / "p.jsonl", [{"id": 1, "input_ids": [3]}, {"id": 2, "prompt": "hello"}])
    assert main(["generate", "--model", str(hf_saved("llama_tied")), "--input", str(inp),
                 "--output", str(tmp_path / "o.jsonl")]) == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"{inp}:2" in messages and "needs a tokenizer" in messages


def test_generate_is_listed_and_flags_checked(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "generate" in capsys.readouterr().out
    assert main(["generate", "--model", "x", "--input", "y", "--output", "z", "--top-p", "0"]) == 2
