"""The bandwidth bound of the SMN suite, the book-sized profile and the Performance page's
choice of records (structure only; nothing about speed)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from gnelib.bench import bench_smn, harness, report


def test_llc_is_read_from_the_os():
    llc = harness.llc_bytes()
    assert llc is None or llc >= 2**16


def test_stream_bandwidth_reports_copy_and_triad():
    bw = harness.stream_bandwidth(2**16, repeats=2)
    assert bw["copy"] > 0 and bw["triad"] > 0
    assert bw["bandwidth"] == max(bw["copy"], bw["triad"])
    assert bw["bytes_per_array"] == 2**18


def test_beyond_cache_shapes_hold_four_caches():
    llc = 32 * 2**20
    for n, c, h, w in bench_smn.beyond_cache_shapes(llc):
        assert n * c * h * w * 4 >= 4 * llc
        assert (n - 1) * c * h * w * 4 < 4 * llc


def test_bound_and_goals_from_a_record():
    times = {k: {"median": 0.2} for k in ("SMN compiled", "BN compiled",
                                          "BN compiled, two-pass", "BatchNorm2d")}
    times["SMN compiled"] = {"median": 0.1}
    cases = [{"label": "a", "params": {"shape": [2, 4, 8, 8], "beyond_cache": True},
              "times": times, "extra": {}}]
    rec = {"cases": cases, "bandwidth": {"bandwidth": 1e9}}
    bench_smn.add_bound(rec, rec["bandwidth"])
    x = cases[0]["extra"]
    assert x["bytes_min"] == 8 * 2 * 4 * 8 * 8 * 4
    assert x["of_bound"]["SMN compiled"] == pytest.approx(0.1 / (x["bytes_min"] / 1e9))
    goals = bench_smn._goals(rec)
    assert [g["threshold"] for g in goals] == [0.77, 0.5, 1.3]
    assert goals[1]["value"] == pytest.approx(0.5) and goals[1]["met"]


def test_book_profile_writes_to_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GNE_DATA_DIR", str(tmp_path))
    assert harness.BOOK.profile == "book" and not harness.BOOK.smoke
    assert harness.result_path("smn", False, "book") == tmp_path / "results/bench/book/smn.json"
    assert harness.result_path("smn", True) == tmp_path / "results/bench/smoke/smn.json"
    assert harness.result_path("smn", False) == tmp_path / "results/bench/smn.json"
    with pytest.raises(ValueError, match="profile"):
        harness.Settings(profile="huge")


def test_page_shows_full_then_book_records_and_smoke_only_at_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("GNE_DATA_DIR", str(tmp_path))

    def write(profile):
        path = harness.result_path("depth", profile == "smoke", profile)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"name": "depth", "profile": profile,
                                    "smoke": profile == "smoke"}))
    write("smoke")
    ran = []
    monkeypatch.setattr(report, "runner", lambda name: (
        lambda settings, **kw: ran.append(settings.profile) or {"profile": settings.profile,
                                                               "smoke": settings.smoke}))
    recs, here = report.load_or_run("book", names=["depth"])
    assert here == ["depth"] and ran == ["book"]  # smoke records never shown at book
    recs, here = report.load_or_run("smoke", names=["depth"])
    assert here == [] and report.record_profile(recs["depth"]) == "smoke"
    write("book")
    recs, here = report.load_or_run("book", names=["depth"])
    assert here == [] and report.record_profile(recs["depth"]) == "book"
    write("full")
    recs, _ = report.load_or_run("book", names=["depth"])
    assert report.record_profile(recs["depth"]) == "full"


def test_bound_kernel_moves_six_reads_and_two_writes():
    import torch
    for fresh in (False, True):
        run = bench_smn.bound_kernel((2, 3, 4, 4), "cpu", fresh=fresh)
        out = run()
        dot = out[0] if fresh else out
        assert dot.ndim == 0 and torch.isfinite(dot)
        if fresh:  # two new outputs of the input's shape, as a layer's y and dx
            assert out[1].shape == out[2].shape == (2, 3, 4, 4)
            assert out[1].data_ptr() != out[2].data_ptr()


def test_bound_is_the_timed_kernel_when_the_record_has_it():
    times = {k: {"median": 0.2} for k in ("SMN compiled", "BN compiled",
                                          "BN compiled, two-pass", "BatchNorm2d")}
    times[bench_smn.BOUND] = {"median": 0.05}
    cases = [{"label": "a", "params": {"shape": [2, 4, 8, 8], "beyond_cache": True},
              "times": times, "extra": {}}]
    rec = {"cases": cases, "bandwidth": {"bandwidth": 1e9}}
    bench_smn.add_bound(rec, rec["bandwidth"])
    x = cases[0]["extra"]
    assert x["bound_s"] == 0.05
    assert x["bound_stream_s"] == pytest.approx(x["bytes_min"] / 1e9)
    assert x["of_bound"]["SMN compiled"] == pytest.approx(4.0)
    assert x["bound_kernel_bandwidth"] == pytest.approx(x["bytes_min"] / 0.05)


def test_first_touch_cost_and_allocator_setting_are_reported():
    t = harness.first_touch_cost(2**16, repeats=2)
    assert t["fresh_s"] > 0 and t["reused_s"] > 0 and t["ratio"] == t["fresh_s"] / t["reused_s"]
    r = harness.reuse_freed_memory()
    assert set(r) == {"applied", "how"} and harness.reuse_freed_memory() is r


def test_a_contender_timed_at_some_cases_only_is_listed_and_tabulated(tmp_path):

    def build(extra):
        def fns():
            d = {"ref": lambda: None}
            if extra:
                d["only here"] = lambda: None
            return d
        return fns
    cases = [harness.Case(label=str(i), size=float(i + 1), build=build(i == 1))
             for i in range(2)]
    rec = harness.run_suite("t", "t", cases, "ref", settings=harness.SMOKE, out=False,
                            progress=False)
    assert rec["contenders"] == ["ref", "only here"]
    table = harness.format_table(rec)
    assert "only here" in table and table.count("\n") >= 3


def test_missing_runs_only_suites_without_a_full_or_book_record(tmp_path, monkeypatch, capsys):
    from gnelib.bench import SUITES
    from gnelib.bench.__main__ import main
    monkeypatch.setenv("GNE_DATA_DIR", str(tmp_path))
    ran = []
    monkeypatch.setattr("gnelib.bench.__main__.runner",
                        lambda name: (lambda settings, device: ran.append(name) or
                                      {"title": name, "what": "", "notes": [], "path": "-",
                                       "reference": "r", "contenders": [], "cases": [],
                                       "median_ratio": {}, "size_name": "s", "goals": []}))
    for name in SUITES:
        if name != "depth":
            path = harness.result_path(name, False, "book" if name != "smn" else "full")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"name": name}))
    assert main(["--all", "--book", "--missing"]) == 0
    assert ran == ["depth"]
    harness.result_path("depth", False, "book").write_text("{}")
    ran.clear()
    assert main(["--all", "--book", "--missing"]) == 0 and ran == []
    assert "nothing to run" in capsys.readouterr().out
