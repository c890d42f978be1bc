"""The chapter check helper (gnelib.book.checks): its error rates and power claims, verified by
simulation, and its bookkeeping (ledger, table, exceptions).

Simulated rates are compared with their target within about 4 binomial standard errors."""
import contextlib
import io
import math

import numpy as np
import pytest
from scipy import stats

from gnelib.book import checks as C
from gnelib.book.checks import check, checks_table, ledger, reset_checks


@pytest.fixture(autouse=True)
def _clean_ledger():
    reset_checks()
    yield
    reset_checks()


def run_quietly(fn, *args, **kw):
    """Call check(...) without its printed line; True when it passed, False when it raised."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            fn(*args, **kw)
            return True
        except AssertionError:
            return False


def rejection_rate(sim, n_sims):
    fails = sum(not sim(i) for i in range(n_sims))
    reset_checks()
    return fails / n_sims


def within(rate, target, n_sims, k=4.0):
    sd = math.sqrt(target * (1 - target) / n_sims)
    return abs(rate - target) <= k * sd + 1e-12


# ------------------------------------------------------------------ type-I error
@pytest.mark.parametrize("kind", ["two-sided", "upper", "lower"])
def test_type_one_rate_normal(kind):
    rng = np.random.default_rng(1)
    alpha, n = 0.02, 12000
    est = rng.normal(1.0, 0.1, n)

    def sim(i):
        return run_quietly(check, "H0 true", prediction=1.0, estimate=est[i], se=0.1,
                           kind=kind, alpha=alpha)

    rate = rejection_rate(sim, n)
    assert within(rate, alpha, n), rate


def test_type_one_rate_t_with_four_dof():
    """Five seeds (4 dof): the t threshold keeps the rate at alpha."""
    rng = np.random.default_rng(2)
    alpha, n = 0.02, 12000
    vals = rng.normal(3.0, 0.5, (n, 5))

    def sim(i):
        return run_quietly(check, "H0 true", prediction=3.0, values=vals[i], alpha=alpha)

    rate = rejection_rate(sim, n)
    assert within(rate, alpha, n), rate


def test_t_versus_normal_for_few_seeds():
    """With 5 seeds the normal threshold on the sample SE would reject far too often; the
    helper uses t(4) for values, and t(dof) for estimate+se+dof."""
    rng = np.random.default_rng(3)
    alpha, n = 0.01, 10000
    vals = rng.normal(0.0, 1.0, (n, 5)) + 2.0
    est = vals.mean(1)
    se = vals.std(1, ddof=1) / math.sqrt(5)
    naive = rejection_rate(lambda i: run_quietly(check, "naive", prediction=2.0,
                                                 estimate=est[i], se=se[i], alpha=alpha), n)
    with_dof = rejection_rate(lambda i: run_quietly(check, "t", prediction=2.0,
                                                    estimate=est[i], se=se[i], dof=4,
                                                    alpha=alpha), n)
    assert naive > 4 * alpha  # P(|t_4| > 2.576) = 0.062
    assert within(with_dof, alpha, n)
    r_vals = check("t from values", prediction=2.0, values=vals[0])
    r_dof = check("t from dof", prediction=2.0, estimate=est[0], se=se[0], dof=4)
    r_norm = check("normal", prediction=2.0, estimate=est[0], se=se[0])
    assert r_vals.dof == 4 and r_vals.K == pytest.approx(r_dof.K)
    assert r_vals.K == pytest.approx(stats.t.ppf(1 - 1e-4 / 2, 4))
    assert r_norm.K == pytest.approx(stats.norm.ppf(1 - 1e-4 / 2)) and r_norm.dof is None
    assert r_vals.K > 3 * r_norm.K
    assert r_vals.power_rel > r_norm.power_rel


# ------------------------------------------------------------------ power
@pytest.mark.parametrize("kind,dof", [("two-sided", None), ("upper", None), ("lower", None),
                                      ("two-sided", 4), ("upper", 9)])
def test_reported_power_is_eighty_percent(kind, dof):
    """At the reported deviation δ the check rejects with probability 0.8."""
    rng = np.random.default_rng(4)
    pred, sigma, n_sims = 2.0, 0.3, 4000
    if dof is None:
        se = 0.05
        delta = check("power", prediction=pred, estimate=pred, se=se, kind=kind).power_rel
        sign = -1 if kind == "lower" else 1
        est = rng.normal(pred * (1 + sign * delta), se, n_sims)
        sim = lambda i: run_quietly(check, "alt", prediction=pred, estimate=est[i], se=se,  # noqa: E731
                                    kind=kind)
    else:
        n = dof + 1
        # the deviation the check reports for a sample whose SE equals the true sigma/sqrt(n)
        delta = check("power", prediction=pred, estimate=pred, se=sigma / math.sqrt(n),
                      dof=dof, kind=kind).power_rel
        vals = rng.normal(pred * (1 + delta), sigma, (n_sims, n))
        sim = lambda i: run_quietly(check, "alt", prediction=pred, values=vals[i], kind=kind)  # noqa: E731
    rate = rejection_rate(sim, n_sims)
    assert abs(rate - 0.8) <= 0.05, (delta, rate)


def test_power_formula_normal():
    r = check("formula", prediction=4.0, estimate=4.0, se=0.1)
    K = stats.norm.ppf(1 - 1e-4 / 2)
    assert r.K == pytest.approx(K)
    assert r.power_rel == pytest.approx((K + stats.norm.ppf(0.8)) * 0.1 / 4.0, rel=1e-6)
    assert "detects ≥" in r.line and "%" in r.line


def test_power_absolute_for_zero_prediction():
    r = check("zero", prediction=0.0, estimate=0.01, se=0.02)
    assert r.power_abs and "abs" in r.line
    assert r.power_rel == pytest.approx((r.K + stats.norm.ppf(0.8)) * 0.02, rel=1e-6)


# ------------------------------------------------------------------ joint
def _corr_cov():
    return np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]]) * 0.04


def test_joint_hotelling_type_one_with_correlated_components():
    rng = np.random.default_rng(5)
    mu, cov = np.array([1.0, 2.0, 0.5]), _corr_cov()
    alpha, n_sims = 0.05, 3000
    vals = rng.multivariate_normal(mu, cov, size=(n_sims, 8))
    rate = rejection_rate(lambda i: run_quietly(check, "joint", prediction=mu, values=vals[i],
                                                kind="joint", alpha=alpha), n_sims)
    assert within(rate, alpha, n_sims), rate


def test_joint_chi2_with_known_covariance():
    rng = np.random.default_rng(6)
    mu, cov = np.array([1.0, 2.0, 0.5]), _corr_cov()
    alpha, n_sims = 0.05, 3000
    est = rng.multivariate_normal(mu, cov, size=n_sims)
    rate = rejection_rate(lambda i: run_quietly(check, "joint", prediction=mu, estimate=est[i],
                                                cov=cov, kind="joint", alpha=alpha), n_sims)
    assert within(rate, alpha, n_sims), rate
    # ignoring the correlation (diagonal covariance) would give the wrong rate
    diag = np.diag(np.diag(cov))
    wrong = rejection_rate(lambda i: run_quietly(check, "diag", prediction=mu, estimate=est[i],
                                                 cov=diag, kind="joint", alpha=alpha), n_sims)
    assert not within(wrong, alpha, n_sims)


def test_joint_detects_a_shift_against_the_correlation():
    """Two strongly correlated components moving in opposite directions: each |z| is small,
    the joint test rejects."""
    cov = np.array([[1.0, 0.99], [0.99, 1.0]]) * 1e-2
    r = None
    with pytest.raises(AssertionError, match="FAIL"):
        check("opposite", prediction=[1.0, 1.0], estimate=[1.2, 0.8], cov=cov, kind="joint")
    r = ledger()[-1]
    assert r.max_z < 2.5 and not r.passed and r.statistic > r.K


@pytest.mark.parametrize("mode", ["cov", "values"])
def test_joint_power_per_component(mode):
    rng = np.random.default_rng(7)
    mu, cov = np.array([1.0, 2.0, 0.5]), _corr_cov()
    n_sims, n = 2000, 12
    if mode == "cov":
        ref = check("ref", prediction=mu, estimate=mu, cov=cov / n, kind="joint")
    else:
        ref = check("ref", prediction=mu, estimate=mu, cov=cov / n, dof=n - 1, kind="joint")
    # the component that attains the minimum
    inv = np.linalg.inv(cov / n)
    devs = np.sqrt(C._joint_noncentrality(3, ref.K, ref.dof) / np.diag(inv)) / np.abs(mu)
    j = int(np.argmin(devs))
    assert ref.power_rel == pytest.approx(devs[j])
    shifted = mu.copy()
    shifted[j] *= 1 + ref.power_rel
    if mode == "cov":
        est = rng.multivariate_normal(shifted, cov / n, size=n_sims)
        sim = lambda i: run_quietly(check, "alt", prediction=mu, estimate=est[i], cov=cov / n,  # noqa: E731
                                    kind="joint")
    else:
        vals = rng.multivariate_normal(shifted, cov, size=(n_sims, n))
        sim = lambda i: run_quietly(check, "alt", prediction=mu, values=vals[i], kind="joint")  # noqa: E731
    rate = rejection_rate(sim, n_sims)
    assert abs(rate - 0.8) <= 0.05, rate


def test_joint_needs_more_seeds_than_components():
    with pytest.raises(ValueError, match="more than 3 seeds"):
        check("few", prediction=[0, 0, 0], values=np.ones((3, 3)), kind="joint")


# ------------------------------------------------------------------ Bonferroni
def test_bonferroni_threshold_and_familywise_rate():
    r1 = check("one", prediction=0.0, estimate=0.0, se=1.0)
    r5 = check("five", prediction=0.0, estimate=0.0, se=1.0, n_tests=5)
    assert r5.K == pytest.approx(stats.norm.ppf(1 - 1e-4 / 10))
    assert r5.K > r1.K and r5.power_rel > r1.power_rel
    up = check("upper", prediction=0.0, estimate=0.0, se=1.0, kind="upper", n_tests=5)
    assert up.K == pytest.approx(stats.norm.ppf(1 - 1e-4 / 5))
    rng = np.random.default_rng(8)
    m, alpha, n_fam = 5, 0.05, 3000
    z = rng.normal(size=(n_fam, m))
    fam_fail = 0
    for i in range(n_fam):
        fam_fail += not all(run_quietly(check, "fam", prediction=0.0, estimate=z[i, j], se=1.0,
                                        alpha=alpha, n_tests=m) for j in range(m))
    reset_checks()
    rate = fam_fail / n_fam
    expected = 1 - (1 - alpha / m) ** m  # independent checks
    assert within(rate, expected, n_fam), rate


# ------------------------------------------------------------------ exact and edge cases
def test_exact_kind():
    r = check("identity", prediction=2.0, estimate=2.0 * (1 + 1e-12), kind="exact")
    assert r.passed and r.power_rel == 1e-10
    with pytest.raises(AssertionError, match="FAIL"):
        check("identity", prediction=2.0, estimate=2.0 * (1 + 1e-8), kind="exact")
    assert check("loose", prediction=2.0, estimate=2.001, kind="exact", tol=1e-3).passed
    assert check("vector", prediction=[1.0, 2.0], estimate=[1.0, 2.0], kind="exact").passed
    assert check("zero", prediction=0.0, estimate=1e-12, kind="exact").power_abs


def test_zero_se():
    assert check("same", prediction=1.0, estimate=1.0, se=0.0).passed
    with pytest.raises(AssertionError) as err:
        check("differs", prediction=1.0, estimate=1.0 + 1e-9, se=0.0)
    assert "inf" in str(err.value)
    assert check("upper ok", prediction=1.0, estimate=0.5, se=0.0, kind="upper").passed


def test_nan_estimate_fails_clearly():
    with pytest.raises(AssertionError, match="NaN"):
        check("nan", prediction=1.0, estimate=float("nan"), se=0.1)
    with pytest.raises(AssertionError, match="NaN"):
        check("nan values", prediction=1.0, values=[1.0, float("nan"), 1.0])
    with pytest.raises(AssertionError, match="NaN"):
        check("nan exact", prediction=1.0, estimate=float("nan"), kind="exact")
    assert len(ledger()) == 3 and not any(r.passed for r in ledger())


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        check("x", prediction=1.0, estimate=1.0, se=1.0, kind="sideways")
    with pytest.raises(ValueError, match="either values"):
        check("x", prediction=1.0, estimate=1.0, values=[1.0, 2.0])
    with pytest.raises(ValueError, match="needs values"):
        check("x", prediction=1.0, estimate=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        check("x", prediction=1.0, values=[1.0])
    with pytest.raises(ValueError, match="alpha"):
        check("x", prediction=1.0, estimate=1.0, se=1.0, alpha=0)


# ------------------------------------------------------------------ ledger, lines and table
def test_failure_registers_prints_and_raises(capsys):
    with pytest.raises(AssertionError) as err:
        check("phi equals p s", prediction=0.5, estimate=0.6, se=0.01, quantity="φ(JJᵀ)")
    line = str(err.value)
    assert line == ledger()[-1].line and line in capsys.readouterr().out
    for piece in ("FAIL", "phi equals p s", "φ(JJᵀ)", "0.6 ± 0.01", "prediction 0.5", "z = 10",
                  "detects ≥"):
        assert piece in line


def test_success_prints_line(capsys):
    r = check("ok", prediction=1.0, estimate=1.001, se=0.01)
    assert r.line in capsys.readouterr().out and r.line.startswith("[PASS]")
    assert r.verdict == "PASS" and r.p_value == pytest.approx(2 * stats.norm.sf(0.1))


def test_table():
    check("first | with a pipe", prediction=1.0, estimate=1.0, se=0.1)
    check("second", prediction=0.0, estimate=0.0, se=0.1, kind="upper", n_tests=3)
    check("third", prediction=[1.0, 1.0], estimate=[1.0, 1.0], cov=np.eye(2) * 1e-4,
          kind="joint")
    with pytest.raises(AssertionError):
        check("fourth", prediction=1.0, estimate=2.0, se=0.1)
    md = checks_table()
    lines = md.splitlines()
    assert lines[0].startswith("| check | kind | estimate ± SE | prediction | statistic | verdict |")
    assert "smallest detectable deviation" in lines[0]
    assert len(lines) == 2 + 4
    assert "first \\| with a pipe" in md and "upper ×3" in md and "chi²" in md
    assert md.count("PASS") == 3 and md.count("FAIL") == 1
    assert all(ln.count(" | ") >= 6 for ln in lines[2:])
    text = checks_table(markdown=False)
    assert "second" in text and "|" not in text.splitlines()[1]
    reset_checks()
    assert ledger() == [] and "no checks" in checks_table()


# ------------------------------------------------------------------ helpers
def test_bootstrap_se_of_the_mean():
    rng = np.random.default_rng(9)
    v = rng.normal(size=400)
    se = C.bootstrap_se(v)
    assert se == pytest.approx(v.std(ddof=1) / 20, rel=0.08)
    assert C.bootstrap_se(v, seed=1) != se and C.bootstrap_se(v) == se
    med = C.bootstrap_se(v, stat=np.median, n_boot=500)
    assert 1.0 < med / se < 1.6  # the median is less efficient (sqrt(pi/2) asymptotically)


def test_ratio_se_delta_method_by_simulation():
    rng = np.random.default_rng(10)
    a, a_se, b, b_se = 3.0, 0.03, 2.0, 0.02
    r = rng.normal(a, a_se, 200000) / rng.normal(b, b_se, 200000)
    assert C.ratio_se(a, a_se, b, b_se) == pytest.approx(r.std(), rel=0.02)
    assert C.ratio_se(0.0, 1.0, 2.0, 5.0) == pytest.approx(0.5)
    assert C.ratio_se(1.0, 0.1, 0.0, 0.1) == math.inf


def test_exceeds_passes_only_when_the_effect_is_detected():
    from gnelib.book import checks as C
    C.reset_checks()
    r = C.check("growth per layer > 0", prediction=0.0, estimate=0.05, se=0.005, kind="exceeds")
    assert r.passed and "PASS" in r.line
    with pytest.raises(AssertionError):
        C.check("growth per layer > 0", prediction=0.0, estimate=0.005, se=0.005, kind="exceeds")
    with pytest.raises(AssertionError):
        C.check("decay per layer < 0", prediction=0.0, estimate=0.01, se=0.005, kind="below")
    assert C.check("decay per layer < 0", prediction=0.0, estimate=-0.05, se=0.005, kind="below").passed


def test_jackknife_of_the_mean_is_the_usual_standard_error_and_removes_a_ratio_bias():
    from gnelib.book import jackknife
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    est, se = jackknife(x, np.mean)
    assert est == pytest.approx(x.mean()) and se == pytest.approx(x.std(ddof=1) / math.sqrt(40))
    # a ratio of means: the jackknife removes its O(1/S) bias on average over many draws
    est_all, plain_all = [], []
    for _ in range(2000):
        v = rng.exponential(size=(6, 2)) + np.array([0.5, 0.2])
        plain_all.append(v[:, 0].mean() / v[:, 1].mean())
        est_all.append(jackknife(v, lambda w: w[:, 0].mean() / w[:, 1].mean())[0])
    truth = 1.5 / 1.2
    assert abs(np.mean(est_all) - truth) < abs(np.mean(plain_all) - truth) / 3
    with pytest.raises(ValueError, match="at least 3"):
        jackknife([1.0, 2.0], np.mean)
