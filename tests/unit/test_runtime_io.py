"""runtime.io: files and directories that are never seen half-written; the one JSONL reader."""

import json

import pytest

from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import atomic_path, iter_jsonl, read_jsonl, tmp_sibling, write_json, write_jsonl, write_text


def test_atomic_file_replaces_only_on_success(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with atomic_path(path) as tmp:
        assert tmp == tmp_sibling(path) == tmp_path / "report.json.tmp"
        tmp.write_text("new")
        assert path.read_text() == "old"  # not visible before the block ends
    assert path.read_text() == "new" and not tmp.exists()


def test_atomic_file_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and not tmp_sibling(path).exists()


def test_atomic_directory(tmp_path):
    out = tmp_path / "ckpt"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a.bin").write_bytes(b"x")
        assert not out.exists()
    assert (out / "a.bin").read_bytes() == b"x" and not tmp_sibling(out).exists()
    with pytest.raises(KeyboardInterrupt):  # any exit, even an interrupt, leaves no temporary behind
        with atomic_path(tmp_path / "other") as tmp:
            tmp.mkdir()
            (tmp / "b.bin").write_bytes(b"y")
            raise KeyboardInterrupt
    assert not (tmp_path / "other").exists() and not tmp_sibling(tmp_path / "other").exists()


def test_a_stale_temporary_is_replaced(tmp_path):
    path = tmp_path / "x.txt"
    tmp_sibling(path).mkdir()  # left by a crashed run, even of another kind
    (tmp_sibling(path) / "junk").write_text("j")
    write_text(path, "fresh")
    assert path.read_text() == "fresh" and not tmp_sibling(path).exists()


def test_writers_round_trip(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2], "b": 1}
    assert (tmp_path / "a.json").read_text().endswith("\n")
    rows = [{"id": 1, "x": "é"}, {"id": 2}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert read_jsonl(tmp_path / "r.jsonl") == rows


@pytest.mark.parametrize("lines, line_no, what", [
    (['{"id": 1, "labels": {}}', '{"id": 2'], 2, "invalid JSON"),
    (['{"id": 1, "labels": {}}', "", "[1, 2]"], 3, "expected a JSON object, got list"),
    (['{"id": 1, "labels": {}}', '{"id": 2}'], 2, "missing field(s) labels"),
])
def test_read_jsonl_names_file_and_line(tmp_path, lines, line_no, what):
    path = tmp_path / "pred.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInput) as exc:
        read_jsonl(path, required=("id", "labels"))
    assert str(exc.value).startswith(f"{path}:{line_no}: ") and what in str(exc.value)
    assert isinstance(exc.value, ValueError)  # the CLI's bad input (exit 2)


def test_iter_jsonl_skips_blank_lines_and_gives_line_numbers(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"id": 1}\n\n  \n{"id": 2}\n')
    assert list(iter_jsonl(path)) == [(1, {"id": 1}), (4, {"id": 2})]
    with pytest.raises(FileNotFoundError, match="no such JSONL file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_iter_jsonl_on_error_reports_bad_lines_and_goes_on(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"id": 1}\n{not json\n[1, 2]\n{"x": 3}\n\n{"id": 5}\n')
    errors = []
    rows = list(iter_jsonl(path, ("id",), on_error=lambda n, msg: errors.append((n, msg))))
    assert rows == [(1, {"id": 1}), (6, {"id": 5})]
    assert [n for n, _ in errors] == [2, 3, 4]
    assert all(msg.startswith(f"{path}:{n}: ") for n, msg in errors)
    assert "invalid JSON" in errors[0][1] and "JSON object" in errors[1][1] and "missing field(s) id" in errors[2][1]
