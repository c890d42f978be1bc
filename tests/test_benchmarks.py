"""The benchmark harness (structure, alternation, JSON; never speed) and gnelib.nn.fast."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from gnelib.bench import SUITES, runner
from gnelib.bench import __main__ as cli
from gnelib.bench import harness, report

import gnelib
from gnelib.nn import fast

TINY = harness.Settings(min_run_time=0.002, rounds=3, warmup=1, smoke=True)


def _pair(log=None):
    a, b = torch.randn(64), torch.randn(256)

    def small():
        if log is not None:
            log.append("small")
        return a.sum()

    def large():
        if log is not None:
            log.append("large")
        return b.sum()
    return {"small": small, "large": large}


def test_measure_structure_and_reference_ratio():
    out = harness.measure(_pair(), "small", TINY)
    assert list(out) == ["small", "large"]
    for stats in out.values():
        assert set(stats) == {"median", "q1", "q3", "iqr", "runs", "first_call_s", "ratio"}
        assert stats["q1"] <= stats["median"] <= stats["q3"]
        assert stats["median"] > 0 and stats["iqr"] >= 0 and stats["first_call_s"] > 0
        assert stats["runs"] >= TINY.rounds  # at least one block per round
    assert out["small"]["ratio"] == 1.0
    assert out["large"]["ratio"] == out["large"]["median"] / out["small"]["median"]


def test_measure_alternates_the_order_of_contenders():
    log = []
    harness.measure(_pair(log), "small", TINY)
    timed = log[TINY.warmup * 2:]  # after the warm-up calls, in contender order
    blocks = [name for i, name in enumerate(timed) if i == 0 or timed[i - 1] != name]
    # rounds: (small, large), (large, small), (small, large); adjacent equal names merge
    assert blocks == ["small", "large", "small", "large"]


def test_measure_rejects_unknown_reference():
    with pytest.raises(ValueError, match="reference"):
        harness.measure(_pair(), "medium", TINY)


def test_settings_and_goal_validation():
    with pytest.raises(ValueError, match="rounds"):
        harness.Settings(rounds=0)
    with pytest.raises(ValueError, match="op"):
        harness.goal("x", 1.0, "<", 2.0)
    assert harness.goal("x", 0.5, "<=", 0.77)["met"]
    assert not harness.goal("x", 0.8, "<=", 0.77)["met"]
    assert harness.goal("x", 25.0, ">=", 20.0)["met"]
    assert not harness.goal("x", float("nan"), ">=", 20.0)["met"]


def test_loglog_slope_recovers_the_exponent():
    sizes = [1.0, 3.0, 10.0, 30.0]
    assert harness.loglog_slope(sizes, [2.5 * s ** 1.5 for s in sizes]) == pytest.approx(1.5,
                                                                                        abs=1e-12)


def test_run_suite_writes_the_json_record(tmp_path):
    cases = [harness.Case(label=str(n), size=float(n), params={"n": n},
                          build=lambda: _pair(), extra=lambda fns: {"checked": True})
             for n in (1, 2)]
    path = tmp_path / "bench" / "trivial.json"

    def goals(rec):
        return [harness.goal("large / small", rec["median_ratio"]["large"], "<=", 1e9)]
    rec = harness.run_suite("trivial", "a trivial pair", cases, "small", settings=TINY,
                            size_name="n", goals=goals, out=path, progress=False)
    on_disk = json.loads(path.read_text())
    assert on_disk["name"] == "trivial" and on_disk["reference"] == "small"
    assert on_disk["contenders"] == ["small", "large"]
    assert [c["label"] for c in on_disk["cases"]] == ["1", "2"]
    assert all(c["extra"] == {"checked": True} for c in on_disk["cases"])
    env = on_disk["env"]
    assert env["threads"] == torch.get_num_threads() and env["device"] == "cpu"
    assert env["torch"] == torch.__version__ and env["date"].endswith("Z")
    ratios = [c["times"]["large"]["ratio"] for c in on_disk["cases"]]
    assert on_disk["median_ratio"]["large"] == pytest.approx(sorted(ratios)[0] / 2 +
                                                             sorted(ratios)[1] / 2)
    assert on_disk["median_ratio"]["small"] == 1.0
    assert on_disk["goals"][0]["met"] is True and rec["path"] == str(path)
    table = harness.format_table(on_disk)
    assert "large / small" in table and "median ratio" in table and "goal:" in table


def test_cli_smoke_suite_writes_to_the_smoke_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GNE_DATA_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    try:
        assert cli.main(["depth", "--smoke"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "threads" in out and "median ratio" in out
    path = tmp_path / "results" / "bench" / "smoke" / "depth.json"
    rec = json.loads(path.read_text())
    assert rec["smoke"] is True and rec["env"]["threads"] == 1
    assert all(math.isfinite(c["extra"]["log_grad_norm"]) for c in rec["cases"])
    loaded = report.load("depth", prefer_smoke=False)  # no full record: falls back to smoke
    assert loaded["path"] == str(path)
    assert "depth" in report.goals_table({"depth": loaded})


def test_unknown_suite_is_rejected():
    with pytest.raises(ValueError, match="allowed values"):
        runner("nope")
    assert set(SUITES) == {"smn", "pws_train", "pws_eval", "jacobian", "depth"}


# --- gnelib.nn.fast -------------------------------------------------------------------------

def _smn_pair(compiled_cls_kw, c=3):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, c, 5, 5, generator=gen, dtype=torch.float64)
    g = torch.randn(4, c, 5, 5, generator=gen, dtype=torch.float64)
    ref = gnelib.SecondMomentNorm(c).double()
    new = fast.CompiledSecondMomentNorm(c, **compiled_cls_kw).double()
    with torch.no_grad():
        for m in (ref, new):
            m.weight.copy_(torch.linspace(0.5, 1.5, c, dtype=torch.float64))
            m.bias.copy_(torch.linspace(-0.2, 0.2, c, dtype=torch.float64))
    outs = []
    for m in (ref, new):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        grads = torch.autograd.grad(y, (xi, m.weight, m.bias), g)
        outs.append((y.detach(), *grads, m.running_rms.clone()))
    return outs, new


@pytest.mark.parametrize("kw", [dict(backward="closed_form", backend="eager"),
                                dict(backward="autograd", backend="aot_eager")])
def test_compiled_smn_matches_the_library_smn(kw):
    # eager / aot_eager backends: dynamo capture (and AOTAutograd's derived backward) without
    # code generation (inductor would compile C++ for seconds; the benchmarks exercise it)
    fast.reset_compiled()
    (ref, new), module = _smn_pair(kw)
    assert module.compiled  # the compiled path really ran
    for a, b in zip(ref, new):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    module.eval()  # eval mode uses the running statistic, as the parent does
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expected = x * (module.weight / (module.running_rms + module.eps)).view(1, -1, 1, 1) \
        + module.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(module(x), expected)


def test_like_for_like_batch_norm_closed_form_matches_autograd():
    from gnelib.bench.bench_smn import (batch_norm_plain, bn_backward, bn_forward,
                                      bn_forward_two_pass)

    gen = torch.Generator().manual_seed(3)
    x, g = (torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    w = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    y, mu, rstd = bn_forward(x, w, b, 1e-5)
    torch.testing.assert_close(y, torch.nn.functional.batch_norm(
        x, None, None, w, b, training=True, eps=1e-5), rtol=1e-12, atol=1e-12)
    for got, want in zip(bn_forward_two_pass(x, w, b, 1e-5), (y, mu, rstd)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
    expected = torch.autograd.grad(batch_norm_plain(xs, ws, bs, 1e-5), (xs, ws, bs), g)
    for got, want in zip(bn_backward(g, x, mu, rstd, w), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_compile_disabled_by_environment_runs_eagerly(monkeypatch):
    monkeypatch.setenv(fast.COMPILE_ENV, "0")
    fast.reset_compiled()
    try:
        (ref, new), module = _smn_pair(dict(backend="eager"))
        assert not module.compiled
        assert not fast.compiled_second_moment_norm(backend="eager").compiled()
        assert "GNE_COMPILE" in fast._kernels("eager", None, None).forward.reason
        for a, b in zip(ref, new):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    finally:
        fast.reset_compiled()


def test_failed_compile_falls_back_to_eager_with_a_warning():
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        fn = fast.CompiledFunction(lambda x: x * 2, backend="no_such_backend")
    torch.testing.assert_close(fn(torch.ones(3)), torch.full((3,), 2.0))
    assert not fn.compiled and "failed" in fn.reason


def test_fast_parameter_checks():
    with pytest.raises(ValueError, match="mode"):
        fast.CompiledSecondMomentNorm(3, mode="fastest")
    with pytest.raises(ValueError, match="backend"):
        fast.CompiledFunction(lambda x: x, backend="")
    with pytest.raises(ValueError, match="num_features"):
        fast.CompiledSecondMomentNorm(0)
    with pytest.raises(ValueError, match="backward"):
        fast.CompiledSecondMomentNorm(3, backward="numeric")
    with pytest.raises(ValueError, match="backward"):
        fast.compiled_second_moment_norm(backward="numeric")
