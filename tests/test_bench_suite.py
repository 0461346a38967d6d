"""Smoke test of the benchmark suite (benchmarks/suite.py): one tiny benchmark, JSON shape.

Rules: B6 (idle pickup latency) with one run of a 1-second budget, in this process; it
needs neither beanstalkd nor matplotlib; every process the suite started is gone after.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import suite


def test_suite_runs_one_benchmark_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    code = suite.main(
        ["--only", "B6", "--runs", "1", "--seconds", "1", "--json", str(out), "--quiet"]
    )
    report = json.loads(out.read_text())
    assert code == 0, report
    assert {"command", "date", "machine", "options", "benchmarks"} <= set(report)
    assert report["machine"]["cores"] >= 1
    assert set(report["benchmarks"]) == set(suite.ALL)
    b6 = report["benchmarks"]["B6"]
    assert b6["status"] == "ok"
    assert all(b["status"] == "not run" for k, b in report["benchmarks"].items() if k != "B6")
    (variant,) = b6["variants"].values()
    assert len(variant["runs"]) == 1
    assert set(variant["jobs_per_s"]) == {"median", "min", "max"}
    assert variant["median"]["p50_ms"] > 0
    assert variant["median"]["p99_ms"] >= variant["median"]["p50_ms"]
    assert {"gateway", "server", "loadgen"} <= set(variant["cpu_s_per_1000"])
    assert variant["peak_rss_mib"]["gateway"] > 0
    assert 0 <= variant["median"]["loadgen_cpu_share"] <= 1
    assert [set(v) for v in b6["verdict"]] == [{"check", "met"}] * 2
    assert suite.rows(report)[0][0] == "B6"
    assert suite.markdown(report).startswith("| id |")


def test_unknown_benchmark_is_a_usage_error(tmp_path: Path) -> None:
    assert suite.main(["--only", "B99", "--json", str(tmp_path / "x.json")]) == 2
