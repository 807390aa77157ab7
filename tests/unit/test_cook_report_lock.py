"""Cooks of different tasks into one OUT at the same time each keep their ``cook_report.json`` section: the
report is read and written back under an exclusive lock (``cli.cook._report_locked``)."""

import json
import threading

from megatron_ads.cli.cook import REPORT, _report_locked
from megatron_ads.runtime.io import write_json


def test_concurrent_report_updates_keep_both_sections(tmp_path):
    inside, release = threading.Event(), threading.Event()

    def update(task, hold):
        with _report_locked(tmp_path) as report:
            if hold:
                inside.set()
                assert release.wait(30)
            report["tasks"][task] = {"status": "cooked"}
            write_json(tmp_path / REPORT, report)

    first = threading.Thread(target=update, args=("query_ad", True))
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=update, args=("ad_user", False))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waiting for the lock the first cook holds (without it: read {} and written)
    release.set()
    first.join(30)
    second.join(30)
    assert set(json.loads((tmp_path / REPORT).read_text())["tasks"]) == {"query_ad", "ad_user"}
