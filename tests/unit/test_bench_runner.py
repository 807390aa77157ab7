"""``benchmarks/run_all.py`` (``make bench``, issue 16): the generated block of RESULTS.md leaves every other byte
as it was, results.json records the machine, the versions and each benchmark, and a failing benchmark is
reported while the others still run and the exit code is non-zero. Fake benchmark scripts in tmp_path."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
run_all = importlib.util.module_from_spec(spec)
sys.modules["run_all"] = run_all  # dataclasses look their module up
spec.loader.exec_module(run_all)

BEGIN, END = run_all.markers("make bench")


def _outside(text: str, suite: str = "make bench") -> str:
    """``text`` without its ``suite`` block (markers, and the one newline inserted before them)."""
    begin, end = run_all.markers(suite)
    i, j = text.index(begin), text.index(end) + len(end) + 1
    assert text[i - 1] == "\n"
    return text[:i - 1] + text[j:]


def test_block_inserted_after_title_rest_byte_identical(tmp_path):
    original = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    if BEGIN in original:  # the real file already has a block: start from the file without it
        original = _outside(original)
    copy = tmp_path / "RESULTS.md"
    copy.write_bytes(original.encode("utf-8"))
    text = copy.read_text(encoding="utf-8")
    new = run_all.replace_block(text, "| a | b |\n")
    title = original.splitlines(keepends=True)[0]
    assert title.startswith("# ")
    assert new.startswith(title + "\n" + BEGIN + "\n| a | b |\n" + END + "\n")
    assert _outside(new) == original  # every byte outside the block as it was
    again = run_all.replace_block(new, "| a | b |\n")
    assert again == new  # idempotent
    other = run_all.replace_block(new, "| c | d |\nmore\n")
    assert "| a | b |" not in other and "| c | d |\nmore\n" + END in other
    assert _outside(other) == original
    assert other.count(BEGIN) == 1 and other.count(END) == 1


def test_gpu_block_goes_after_the_cpu_block_and_both_keep_the_rest():
    original = "# Title\n\nintro\n\n## section\ntext\n"
    cpu = run_all.replace_block(original, "cpu\n")
    both = run_all.replace_block(cpu, "gpu\n", "make bench-gpu", after="make bench")
    b0, b1 = run_all.markers("make bench-gpu")
    assert both.index(END) < both.index(b0)
    assert _outside(_outside(both, "make bench-gpu")) == original
    assert run_all.replace_block(both, "cpu 2\n") == both.replace("\ncpu\n", "\ncpu 2\n")
    # no title: at the top; no CPU block: after the title
    assert run_all.replace_block("text\n", "x") == "\n" + BEGIN + "\nx\n" + END + "\ntext\n"
    assert run_all.replace_block("# T\nrest\n", "g\n", "make bench-gpu", after="make bench").startswith(
        "# T\n\n" + b0 + "\ng\n" + b1 + "\nrest\n")


def test_lookup_dotted_paths():
    fig = {"a": {"b": [1, {"c": 2.5}]}, "sizes": {"4096": {"x": 3}}}
    assert run_all.lookup(fig, "a.b.1.c") == 2.5
    assert run_all.lookup(fig, "sizes.4096.x") == 3
    assert run_all.lookup(fig, "a.missing") is None and run_all.lookup(fig, "a.b.7") is None


def _script(tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / f"{name}.py"
    p.write_text(body)
    return str(p)


def test_runner_records_failures_and_exits_nonzero(tmp_path, capsys):
    good = _script(tmp_path, "good", "import json\nprint('| human | table |')\n"
                   "print(json.dumps({'ours': 30.0, 'base': {'x': 10.0}, 'rows': [{'avg_input_tokens': 5, "
                   "'avg_output_tokens': 2, 'usd_per_gpu_s': 0.1, 'samples_per_s': 4.0, 'usd_per_1m_samples': 2.5e4}]}))\n")
    bad = _script(tmp_path, "bad", "import sys\nprint('partial output')\nsys.exit(3)\n")
    nojson = _script(tmp_path, "nojson", "print('no figures here')\n")
    slow = _script(tmp_path, "slow", "import time\ntime.sleep(60)\n")
    after = _script(tmp_path, "after", "import json\nprint(json.dumps({'v': 2}))\n")
    R, B = run_all.Ratio, run_all.Bench
    benches = [
        B("good", (good,), ratios=(R("good ratio", "ours", "base.x", "tokens/s"), R("no baseline", "ours", None, "x"),
                                   R("absent figure", "nope", "base.x", "x")),
          cost=(run_all.CostRow("good, label only", "rows.0"),)),
        B("bad", (bad,), ratios=(R("bad ratio", "ours", "base", "samples/s"),)),
        B("nojson", (nojson,), ratios=(R("nojson ratio", "ours", "base", "x"),)),
        B("slow", (slow,), ratios=(R("slow ratio", "ours", "base", "x"),), timeout_s=1.0),
        B("after", (after,), ratios=(R("after figure", "v", None, "x"),)),
    ]
    md, js = tmp_path / "RESULTS.md", tmp_path / "results.json"
    md.write_text("# Benchmark and GPU results\n\nhand-written\n")
    rc = run_all.main(["--results-md", str(md), "--results-json", str(js)], benchmarks=benches)
    assert rc == 1
    out = capsys.readouterr()
    assert "| human | table |" in out.out  # the benchmark's own tables are echoed
    assert "bad (exit code 3)" in out.err

    report = json.loads(js.read_text())
    assert report["suite"] == "make bench"
    for key in ("cpu", "cores", "ram_gib", "gpu", "load_average"):
        assert key in report["machine"]
    assert set(report["versions"]) == {"python", "torch", "megatron-core", "transformers"}
    assert report["versions"]["torch"] and report["date"].endswith("UTC") and "commit" in report["git"]
    by = {b["name"]: b for b in report["benchmarks"]}
    assert [b["name"] for b in report["benchmarks"]] == ["good", "bad", "nojson", "slow", "after"]
    assert by["good"]["status"] == "ok" and by["good"]["figures"]["ours"] == 30.0 and by["good"]["wall_s"] >= 0
    assert by["bad"]["status"] == "failed" and by["bad"]["rc"] == 3
    assert by["nojson"]["status"] == "failed" and by["nojson"]["rc"] == 0 and "JSON" in by["nojson"]["error"]
    assert by["slow"]["status"] == "timeout"
    assert by["after"]["status"] == "ok"  # the ones after a failure still ran
    rows = {r["name"]: r for r in report["ratios"]}
    assert rows["good ratio"]["ratio"] == pytest.approx(3.0) and rows["good ratio"]["baseline"] == 10.0
    assert rows["no baseline"]["ratio"] is None and rows["no baseline"]["ours"] == 30.0
    assert rows["absent figure"]["status"] == "missing"
    assert rows["bad ratio"]["status"] == "failed" and rows["bad ratio"]["rc"] == 3
    assert report["cost"][0]["samples_per_s"] == 4.0

    text = md.read_text()
    assert text.endswith(END + "\n\nhand-written\n") and text.startswith("# Benchmark and GPU results\n\n" + BEGIN)
    assert "| good ratio | 30.0 | 10.0 | **3.00** | tokens/s |" in text
    assert "| bad ratio | **FAILED** (exit code 3) |" in text
    assert "| nojson ratio | **FAILED** (failed) |" in text and "| slow ratio | **FAILED** (timeout) |" in text
    assert "| good, label only | 5.00 | 2.00 | 0.1 | 4.00 | 25,000 |" in text
    assert "paper, Table 10" in text


def test_runner_all_ok_exits_zero_and_only(tmp_path):
    ok = _script(tmp_path, "ok", "import json\nprint(json.dumps({'a': 1.0, 'b': 2.0}))\n")
    bad = _script(tmp_path, "bad", "raise SystemExit(2)\n")
    benches = [run_all.Bench("ok", (ok,), ratios=(run_all.Ratio("r", "a", "b", "x"),)),
               run_all.Bench("bad", (bad,))]
    md, js = tmp_path / "R.md", tmp_path / "r.json"
    assert run_all.main(["--results-md", str(md), "--results-json", str(js), "--only", "ok"], benchmarks=benches) == 0
    assert "| r | 1.00 | 2.00 | **0.50** | x |" in md.read_text()  # a new file: the title, then the block
    assert md.read_text().startswith(run_all.TITLE + "\n\n" + BEGIN)
    assert [b["name"] for b in json.loads(js.read_text())["benchmarks"]] == ["ok"]
    assert not list(tmp_path.glob(".*.tmp"))  # temp files renamed away


def test_only_keeps_the_other_benchmarks_entries(tmp_path):
    """``--only X`` reruns X and keeps every other benchmark's figures (and date) from results.json, in the
    suite's order; an old failure stays visible but does not fail this run."""
    one = _script(tmp_path, "one", "import json\nprint(json.dumps({'a': 1.0, 'b': 2.0}))\n")
    two = _script(tmp_path, "two", "import json\nprint(json.dumps({'a': 3.0, 'b': 1.0}))\n")
    bad = _script(tmp_path, "bad", "raise SystemExit(2)\n")
    R = run_all.Ratio
    benches = [run_all.Bench("one", (one,), ratios=(R("r1", "a", "b", "x"),)),
               run_all.Bench("bad", (bad,), ratios=(R("rb", "a", "b", "x"),)),
               run_all.Bench("two", (two,), ratios=(R("r2", "a", "b", "x"),))]
    md, js = tmp_path / "R.md", tmp_path / "r.json"
    assert run_all.main(["--results-md", str(md), "--results-json", str(js)], benchmarks=benches) == 1
    first = json.loads(js.read_text())
    old = {b["name"]: b for b in first["benchmarks"]}
    old["one"]["date"] = "2026-01-01 00:00 UTC"  # as if the full run had been earlier
    js.write_text(json.dumps(first))
    Path(two).write_text("import json\nprint(json.dumps({'a': 5.0, 'b': 1.0}))\n")
    assert run_all.main(["--results-md", str(md), "--results-json", str(js), "--only", "two"], benchmarks=benches) == 0
    report = json.loads(js.read_text())
    assert [b["name"] for b in report["benchmarks"]] == ["one", "bad", "two"]
    by = {b["name"]: b for b in report["benchmarks"]}
    assert by["one"]["figures"] == {"a": 1.0, "b": 2.0} and by["one"]["date"] == "2026-01-01 00:00 UTC"
    assert by["two"]["figures"]["a"] == 5.0 and by["two"]["date"] == report["date"]
    assert by["bad"]["status"] == "failed"
    text = md.read_text()
    assert "| r1 | 1.00 | 2.00 | **0.50** | x |" in text and "| r2 | 5.00 | 1.00 | **5.00** | x |" in text
    assert "| rb | **FAILED**" in text and re.search(r"one ok \d+ s \(run 2026-01-01 00:00 UTC\)", text)
    assert not re.search(r"two ok \d+ s \(run", text)  # this run's date is the block's


def test_gpu_without_cuda_skips(monkeypatch, tmp_path, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    md = tmp_path / "R.md"
    assert run_all.main(["--gpu", "--results-md", str(md), "--results-json", str(tmp_path / "g.json")]) == 0
    assert "no CUDA device: GPU benchmarks skipped" in capsys.readouterr().out
    assert not md.exists() and not (tmp_path / "g.json").exists()


def test_benchmark_lists_are_well_formed():
    for benches in (run_all.BENCHMARKS, run_all.GPU_BENCHMARKS):
        names = [b.name for b in benches]
        assert len(names) == len(set(names))
        for b in benches:
            assert (ROOT / b.argv[0]).is_file(), b.argv[0]
            assert b.ratios, b.name
    cpu = {b.name for b in run_all.BENCHMARKS}
    assert {"convert", "train", "memory", "label", "fp8_gemm", "grpo_speed"} <= cpu
