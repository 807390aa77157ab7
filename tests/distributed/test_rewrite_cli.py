"""``megatron-ads rewrite`` on a random-init tiny Llama (one process, the real inference engine).

A random model writes no valid headlines, so at the defaults every keyword falls short: that path is checked as
a clear failure (exit 1, the keyword and the shortfall named, records in OUT.errors.jsonl, no output row). The
plumbing run relaxes what random text cannot pass (2 headlines + 1 description, limits of 1000 characters, no
CTA): output rows, seeded reruns giving the same rows, ``--resume`` skipping done ids (a torn last line redone),
the judge applied, bad input exit 2. What each rule drops and the 2x / rewrite-call chain are tested on scripted
generators in ``tests/unit/test_rewrite_chain.py``."""

import json
from pathlib import Path

import pytest

from megatron_ads.cli import main

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("single_rank_module")]
RELAXED = ["n_headlines=2", "n_descriptions=1", "headline_max=1000", "description_max=1000", "require_cta=false",
           "max_rounds=6"]
KEYS = ["id", "keyword", "headlines", "descriptions", "calls", "dropped"]


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_rewrite_cli_plumbing(tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["init-model", "--flavor", "tiny_llama", "--out", str(model)]) == 0
    kw = tmp_path / "kw.jsonl"
    kw.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": 1, "keyword": "running shoes"}, {"id": "b", "keyword": "tents", "context": "6-person dome tent"},
        {"id": "c", "keyword": "coffee grinder"}]))
    capsys.readouterr()

    def rewrite(out, *extra):
        return main(["rewrite", "--input", str(kw), "--model", str(model), "--output", str(out), "--max-new-tokens",
                     "16", "--batch-size", "2", *extra])

    # bad input: every malformed line named (file:line: field), nothing written
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "keyword": "ok"}\n{"id": 1, "keyword": "dup"}\n{"keyword": "no id"}\n'
                   '{"id": 4, "keyword": ""}\n{"id": 5, "keyword": "x", "context": 3}\nnot json\n')
    assert main(["rewrite", "--input", str(bad), "--model", str(model), "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    for line, what in ((2, "field 'id': duplicate 1 (first on line 1)"), (3, "field 'id': missing"),
                       (4, "field 'keyword': expected a non-empty string"), (5, "field 'context': expected a string"),
                       (6, "invalid JSON")):
        assert f"{bad}:{line}: {what}" in err
    assert not (tmp_path / "o.jsonl").exists()
    assert rewrite(tmp_path / "o.jsonl", "n_headline=3") == 2
    assert "unknown field(s) ['n_headline']" in capsys.readouterr().err
    assert rewrite(tmp_path / "o.jsonl", "--top-p", "0") == 2
    assert "--top-p: expected 0 < top_p <= 1" in capsys.readouterr().err

    # 1. the defaults: a random model falls short, clearly (exit 1, keyword and shortfall named, no row)
    short = tmp_path / "short.jsonl"
    assert rewrite(short, "max_rounds=2", "--json") == 1
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    assert summary["failed"] == 3 and summary["written"] == 0 and summary["calls"] == 6
    assert "rewrite: FAILED: 3 of 3 keyword(s) fell short" in cap.err and "keyword 'running shoes' is short of" in cap.err
    records = _lines(str(short) + ".errors.jsonl")
    assert [r["id"] for r in records] == [1, "b", "c"] and short.read_text() == ""
    assert all(r["calls"] == 2 and r["missing"]["headlines"] >= 1 and f"keyword {r['keyword']!r}" in r["error"]
               for r in records)
    assert rewrite(short, "max_rounds=2") == 2  # the output exists: --resume or another file
    assert "pass --resume" in capsys.readouterr().err

    # 2. relaxed: every keyword done, rows in input order with exactly the configured counts
    out = tmp_path / "out.jsonl"
    assert rewrite(out, *RELAXED, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    rows = _lines(out)
    assert [r["id"] for r in rows] == [1, "b", "c"] and summary["written"] == 3 and summary["failed"] == 0
    for r in rows:
        assert list(r) == KEYS and len(r["headlines"]) == 2 and len(r["descriptions"]) == 1
        assert 1 <= r["calls"] <= 6 and all(h.strip() for h in r["headlines"] + r["descriptions"])
    assert not Path(str(out) + ".errors.jsonl").exists()

    # 3. resume: a torn last line is redone; seeded per row, call and kind, the rows equal the first run's even
    # though the batches differ
    text = out.read_text().splitlines(keepends=True)
    out.write_text(text[0] + text[1][:10])
    assert rewrite(out, *RELAXED, "--resume", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == 1 and summary["written"] == 2
    assert _lines(out) == rows
    assert rewrite(out, *RELAXED, "--resume", "--json") == 0  # all done: no model run
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == 3 and summary["written"] == 0 and summary["calls"] == 0

    # 4. the judge is applied to headlines: no random headline reaches relevance 5
    judged = tmp_path / "judged.jsonl"
    assert rewrite(judged, *RELAXED[:-1], "max_rounds=1", "relevance_min=5", "--judge", str(model)) == 1
    records = _lines(str(judged) + ".errors.jsonl")
    assert all(r["dropped"]["relevance"] >= 1 and r["missing"]["headlines"] == 2 for r in records)
    assert rewrite(tmp_path / "judged0.jsonl", *RELAXED, "relevance_min=0", "--judge", str(model)) == 0
