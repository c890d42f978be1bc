"""One statistical check helper for every chapter assertion, and the ledger of checks run.

A chapter states a hypothesis ("the measured φ equals the predicted p·s"), measures a
quantity over independent draws, and calls :func:`check`. The helper

- tests the hypothesis at level ``alpha`` (Bonferroni-corrected over ``n_tests`` checks drawn
  from the same data): with raw per-seed ``values`` it uses Student's t with ``n - 1`` degrees
  of freedom (few seeds make the normal threshold far too permissive), with an
  ``estimate`` and its ``se`` normal quantiles (t if ``dof`` is given);
- reports its **power**: the smallest relative deviation from the prediction that the check
  would detect with probability 80 %, :math:`\\delta=\\lambda_{0.8}\\,\\mathrm{se}/|\\text{prediction}|`.
  For normal quantiles :math:`\\lambda_{0.8}=K+z_{0.8}`; for t the noncentrality at which the
  noncentral t exceeds ``K`` with probability 0.8 (exact for Gaussian per-seed values); for a
  joint test the smallest over components of the deviation of that component alone which
  gives the chi-square / Hotelling statistic 80 % power;
- prints one readable line, records a :class:`CheckResult` in the module ledger, and raises
  ``AssertionError(line)`` when the hypothesis is rejected (after recording it).

Kinds: ``"two-sided"`` (H0: true value = prediction), ``"upper"`` (H0: true value ≤
prediction; fails when the estimate exceeds it by more than K·se), ``"lower"`` (mirror),
``"exceeds"`` / ``"below"`` (an effect claimed to exist: passes only when the data reject
H0 "true value ≤ prediction" / "≥ prediction" at level alpha, so a missing effect fails; its
power is the smallest true excess detected with 80 % probability),
``"exact"`` (an identity that holds to rounding: relative error ≤ ``tol``, default 1e-10),
``"joint"`` (a vector estimate against a vector prediction, with its covariance ``cov`` or
per-seed rows ``values`` of shape (n_seeds, k): chi-square with a known covariance,
Hotelling's T² with an estimated one).

A chapter ends with ``display(Markdown(checks_table()))``. Depends on numpy, scipy and the
standard library only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import optimize, special, stats

__all__ = ["CheckResult", "check", "checks_table", "reset_checks", "ledger", "bootstrap_se",
           "ratio_se", "jackknife", "extrapolate_inverse_width", "KINDS"]

KINDS = ("two-sided", "upper", "lower", "exceeds", "below", "exact", "joint")
POWER = 0.8  # the detection probability the reported deviation refers to

_LEDGER: list["CheckResult"] = []


@dataclass
class CheckResult:
    """The outcome of one :func:`check`.

    ``statistic`` is z (normal), t (Student) or T² / chi² (joint); for ``exact`` the relative
    error (absolute when the prediction is 0). ``K`` is the rejection threshold of that
    statistic (for joint: of T² or chi²; for exact: ``tol``). ``power_rel`` is the smallest
    deviation detected with 80 % power, relative to ``|prediction|`` (a fraction: 0.05 means
    5 %), or absolute when ``power_abs`` is true (prediction 0). ``max_z`` and
    ``max_z_component`` are the largest per-component standardised deviation of a joint check.
    """

    hypothesis: str
    quantity: str | None
    kind: str
    estimate: float | np.ndarray
    se: float | np.ndarray | None
    prediction: float | np.ndarray
    statistic: float
    p_value: float
    K: float
    dof: float | None
    power_rel: float
    passed: bool
    alpha: float = 1e-4
    n_tests: int = 1
    power_abs: bool = False
    n: int | None = None
    max_z: float | None = None
    max_z_component: int | None = None
    note: str = ""
    line: str = field(default="", repr=False)

    def __post_init__(self):
        if not self.line:
            self.line = _format_line(self)

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    @property
    def power_pct(self) -> float:
        """:attr:`power_rel` in percent (absolute value when :attr:`power_abs`)."""
        return self.power_rel if self.power_abs else 100 * self.power_rel

    @property
    def power_text(self) -> str:
        """The smallest detectable deviation as text: ``"3.1 %"`` or ``"0.012 abs"``."""
        return _power_text(self)


# ----------------------------------------------------------------------------- formatting

def _num(x) -> str:
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def _vec(x, limit: int = 4) -> str:
    a = np.atleast_1d(np.asarray(x, dtype=float)).ravel()
    body = ", ".join(_num(v) for v in a[:limit])
    return f"[{body}{', …' if a.size > limit else ''}]"


def _power_text(r: CheckResult) -> str:
    p = r.power_rel
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    if r.kind == "exact":
        return f"tol {p:.0e}" + (" abs" if r.power_abs else " rel")
    if r.power_abs:
        return f"{_num(p)} abs"
    if math.isinf(p):
        return "inf %"
    pct = 100 * p
    return f"{pct:.2g} %" if pct < 10 else f"{pct:.0f} %"


def _estimate_text(r: CheckResult) -> str:
    if r.kind == "joint":
        return f"{_vec(r.estimate)} (k = {np.size(r.estimate)})"
    if r.se is None or r.kind == "exact":
        return _num(r.estimate) if np.ndim(r.estimate) == 0 else _vec(r.estimate)
    return f"{_num(r.estimate)} ± {_num(r.se)}"


def _prediction_text(r: CheckResult) -> str:
    if r.kind == "joint":
        return _vec(r.prediction)
    if r.kind == "exact" and np.size(r.prediction) > 1:
        return _vec(r.prediction)
    rel = {"two-sided": "", "upper": "≤ ", "lower": "≥ ", "exceeds": "> ", "below": "< ",
           "exact": "= "}[r.kind]
    return rel + _num(r.prediction)


def _stat_name(r: CheckResult) -> str:
    if r.kind == "exact":
        return "abs err" if r.power_abs else "rel err"
    if r.kind == "joint":
        return "T²" if r.dof is not None else "chi²"
    return "t" if r.dof is not None else "z"


def _statistic_text(r: CheckResult) -> str:
    name = _stat_name(r)
    if r.kind == "exact":
        return f"{name} = {r.statistic:.2g} (tol {r.K:.0e})"
    if r.passed:
        cmp = {"two-sided": "|{}| ≤ K", "upper": "{} ≤ K", "lower": "{} ≥ −K", "joint": "{} ≤ K",
               "exceeds": "{} > K", "below": "{} < −K"}
    else:
        cmp = {"two-sided": "|{}| > K", "upper": "{} > K", "lower": "{} < −K", "joint": "{} > K",
               "exceeds": "{} ≤ K", "below": "{} ≥ −K"}
    dof = f", dof = {_num(r.dof)}" if r.dof is not None else ""
    txt = (f"{name} = {_num(r.statistic)}, p = {r.p_value:.2g} "
           f"({cmp[r.kind].format(name)} = {_num(r.K)}{dof})")
    if r.kind == "joint" and r.max_z is not None:
        txt += f", largest |z| = {_num(r.max_z)} (component {r.max_z_component})"
    return txt


def _format_line(r: CheckResult) -> str:
    head = f"[{r.verdict}] {r.hypothesis}"
    if r.quantity:
        head += f" ({r.quantity})"
    if r.note:
        return f"{head}: {r.note}"
    level = f"α = {r.alpha:g}" + (f"/{r.n_tests}" if r.n_tests > 1 else "")
    parts = [f"estimate {_estimate_text(r)}", f"prediction {_prediction_text(r)}",
             _statistic_text(r)]
    if r.kind == "exact":
        return f"{head}: " + "; ".join(parts)
    return (f"{head}: " + "; ".join(parts) + f"; {r.kind}, {level}; "
            f"detects ≥ {r.power_text} deviation")


# ----------------------------------------------------------------------------- statistics

@lru_cache(maxsize=4096)
def _quantile(q: float, dof: float | None) -> float:
    return float(special.ndtri(q) if dof is None else special.stdtrit(dof, q))


def _cdf(x: float, dof: float | None) -> float:
    """Normal (``dof`` None) or Student-t distribution function (scipy.special: fast)."""
    return float(special.ndtr(x) if dof is None else special.stdtr(dof, x))


@lru_cache(maxsize=4096)
def _noncentrality(K: float, dof: float | None, two_sided: bool, power: float = POWER) -> float:
    """The shift λ (in standard errors) at which P(reject) = ``power``: for the normal
    statistic ``K + z_power`` (plus the negligible other tail when two-sided), for Student's t
    the noncentrality of the noncentral t with ``dof`` degrees of freedom."""
    if dof is None:
        if not two_sided:
            return K + float(stats.norm.ppf(power))
        f = lambda lam: stats.norm.sf(K - lam) + stats.norm.cdf(-K - lam) - power  # noqa: E731
    else:
        def f(lam):
            p = 1.0 - float(special.nctdtr(dof, lam, K))
            if two_sided:  # the far tail, negligible but included where it computes
                low = float(special.nctdtr(dof, lam, -K))
                p += low if math.isfinite(low) else 0.0
            return p - power
    hi = K + 10.0
    while f(hi) < 0:
        hi *= 2
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-10))


@lru_cache(maxsize=1024)
def _joint_critical(k: int, level: float, dof: float | None) -> float:
    """Rejection threshold of chi²_k, or of Hotelling's T² (k components, covariance estimated
    with ``dof`` degrees of freedom: T²·(dof−k+1)/(k·dof) ~ F(k, dof−k+1))."""
    if dof is None:
        return float(stats.chi2.isf(level, k))
    return float(stats.f.isf(level, k, dof - k + 1) * k * dof / (dof - k + 1))


@lru_cache(maxsize=1024)
def _joint_noncentrality(k: int, crit: float, dof: float | None, power: float = POWER) -> float:
    """Noncentrality of chi²_k (known covariance) or of Hotelling's T² with ``dof`` degrees of
    freedom of the covariance estimate at which P(statistic > crit) = ``power``."""
    if dof is None:
        def f(lam):
            return stats.ncx2.sf(crit, k, lam) - power
    else:
        scale = (dof - k + 1) / (k * dof)  # T² -> F(k, dof - k + 1)

        def f(lam):
            return stats.ncf.sf(crit * scale, k, dof - k + 1, lam) - power
    hi = crit + 10.0
    while f(hi) < 0:
        hi *= 2
    return float(optimize.brentq(f, 1e-12, hi, xtol=1e-10))


def _rel(deviation_abs: float, prediction: float) -> tuple[float, bool]:
    if prediction == 0 or not math.isfinite(prediction):
        return float(deviation_abs), True
    return float(deviation_abs / abs(prediction)), False


def _finish(result: CheckResult) -> CheckResult:
    _LEDGER.append(result)
    print(result.line, flush=True)
    if not result.passed:
        raise AssertionError(result.line)
    return result


def check(hypothesis: str, *, prediction, estimate=None, se=None, values=None,
          kind: str = "two-sided", alpha: float = 1e-4, n_tests: int = 1, dof=None, cov=None,
          tol=None, quantity=None) -> CheckResult:
    """Test ``hypothesis`` about a measured quantity against ``prediction`` and record it.

    Give either raw per-seed ``values`` (1-D; for ``kind="joint"`` a (n_seeds, k) matrix) or an
    ``estimate`` with its standard error ``se`` (for joint: ``cov``, the covariance of the
    estimate vector). ``dof`` switches normal to t quantiles for an ``estimate``. ``n_tests``
    Bonferroni-corrects ``alpha``. ``tol`` is the relative tolerance of ``kind="exact"``
    (absolute when the prediction is 0). Returns the :class:`CheckResult`; prints its line;
    raises ``AssertionError`` with that line when the check fails.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (isinstance(n_tests, (int, np.integer)) and n_tests >= 1):
        raise ValueError(f"n_tests must be an integer >= 1, got {n_tests!r}")
    if values is not None and (estimate is not None or se is not None):
        raise ValueError("give either values or estimate (+ se), not both")
    common = dict(hypothesis=str(hypothesis), quantity=quantity, kind=kind, alpha=float(alpha),
                  n_tests=int(n_tests))
    if kind == "joint":
        return _finish(_joint(prediction, estimate, cov, values, dof, common))
    if kind == "exact":
        return _finish(_exact(prediction, estimate, values, tol, common))

    n = None
    if values is not None:
        v = np.asarray(values, dtype=float)
        if v.ndim != 1:
            raise ValueError(f"values must be 1-D for kind {kind!r}, got shape {v.shape}")
        n = v.size
        if n < 2:
            raise ValueError(f"values must hold at least 2 draws, got {n}")
        estimate = float(v.mean())
        se = float(v.std(ddof=1) / math.sqrt(n))
        dof = n - 1
    if estimate is None or se is None:
        raise ValueError("check needs values, or estimate and se")
    estimate, se, prediction = float(estimate), float(se), float(prediction)
    dof = None if dof is None else float(dof)
    if dof is not None and not dof > 0:
        raise ValueError(f"dof must be > 0, got {dof!r}")
    two = kind == "two-sided"
    q = 1 - alpha / (2 * n_tests) if two else 1 - alpha / n_tests
    K = _quantile(q, dof)
    lam = _noncentrality(K, dof, two)
    power, power_abs = _rel(lam * se, prediction) if se >= 0 else (math.nan, False)
    base = dict(common, estimate=estimate, se=se, prediction=prediction, K=K, dof=dof, n=n,
                power_abs=power_abs)

    bad = [name for name, x in (("estimate", estimate), ("prediction", prediction), ("se", se))
           if math.isnan(x)]
    if bad or se < 0 or math.isinf(se):
        why = (f"{' and '.join(bad)} is NaN" if bad else f"standard error is {se!r}")
        return _finish(CheckResult(**base, statistic=math.nan, p_value=math.nan,
                                   power_rel=math.nan, passed=False,
                                   note=f"cannot be tested: {why} (estimate {_num(estimate)}, "
                                        f"se {_num(se)}, prediction {_num(prediction)})"))
    diff = estimate - prediction
    if se == 0:
        stat = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        stat = diff / se
    if two:
        p = 2 * _cdf(-abs(stat), dof)
        passed = abs(stat) <= K
    elif kind == "upper":
        p = _cdf(-stat, dof)
        passed = stat <= K
    elif kind == "lower":
        p = _cdf(stat, dof)
        passed = stat >= -K
    elif kind == "exceeds":  # an effect claimed to exist: reject H0 (true <= prediction)
        p = _cdf(-stat, dof)
        passed = stat > K
    else:  # "below"
        p = _cdf(stat, dof)
        passed = stat < -K
    return _finish(CheckResult(**base, statistic=float(stat), p_value=p, power_rel=power,
                               passed=bool(passed)))


def _exact(prediction, estimate, values, tol, common) -> CheckResult:
    if values is not None:
        estimate = values
    if estimate is None:
        raise ValueError("kind='exact' needs estimate (or values)")
    est = np.asarray(estimate, dtype=float)
    pred = np.broadcast_to(np.asarray(prediction, dtype=float), est.shape)
    tol = 1e-10 if tol is None else float(tol)
    scale = np.max(np.abs(pred)) if pred.size else 0.0
    power_abs = not (scale > 0 and math.isfinite(scale))
    err = np.max(np.abs(est - pred)) if est.size else 0.0
    stat = float(err if power_abs else err / scale)
    passed = bool(np.all(np.isfinite(est)) and math.isfinite(stat) and stat <= tol)
    scalar = est.ndim == 0
    out = dict(common, estimate=float(est) if scalar else est,
               prediction=float(pred) if scalar else np.asarray(pred), se=None, statistic=stat,
               p_value=math.nan, K=tol, dof=None, power_rel=tol, passed=passed,
               power_abs=power_abs)
    if np.any(np.isnan(est)):
        out["note"] = f"cannot be tested: estimate is NaN (prediction {_prediction_text_raw(pred)})"
    return CheckResult(**out)


def _prediction_text_raw(pred) -> str:
    return _num(pred) if np.ndim(pred) == 0 else _vec(pred)


def _joint(prediction, estimate, cov, values, dof, common) -> CheckResult:
    n = None
    if values is not None:
        v = np.asarray(values, dtype=float)
        if v.ndim != 2:
            raise ValueError(f"values must be (n_seeds, k) for kind 'joint', got shape {v.shape}")
        n, k = v.shape
        if n <= k:
            raise ValueError(f"a joint check of {k} components from values needs more than {k} "
                             f"seeds (Hotelling's T²), got {n}")
        estimate = v.mean(0)
        cov = np.cov(v, rowvar=False, ddof=1).reshape(k, k) / n
        dof = n - 1
    if estimate is None or cov is None:
        raise ValueError("kind='joint' needs values, or estimate and cov")
    est = np.atleast_1d(np.asarray(estimate, dtype=float))
    k = est.size
    pred = np.broadcast_to(np.asarray(prediction, dtype=float), est.shape).astype(float)
    cov = np.asarray(cov, dtype=float).reshape(k, k)
    dof = None if dof is None else float(dof)
    if dof is not None and not dof >= k:
        raise ValueError(f"dof must be >= k = {k} for Hotelling's T², got {dof!r}")
    level = common["alpha"] / common["n_tests"]
    crit = _joint_critical(k, level, dof)
    base = dict(common, estimate=est, se=np.sqrt(np.clip(np.diag(cov), 0, None)), prediction=pred,
                K=crit, dof=dof, n=n)
    if np.any(np.isnan(est)) or np.any(np.isnan(cov)) or np.any(np.isnan(pred)):
        return CheckResult(**base, statistic=math.nan, p_value=math.nan, power_rel=math.nan,
                           passed=False, note="cannot be tested: estimate, prediction or "
                                              "covariance contains NaN")
    diff = est - pred
    try:
        inv = np.linalg.inv(cov)
        if not np.all(np.isfinite(inv)):
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        inv = np.linalg.pinv(cov)
    stat = float(diff @ inv @ diff)
    if stat < 0:  # rounding with a (near) singular covariance
        stat = 0.0
    if dof is None:
        p = float(special.chdtrc(k, stat))
    else:
        p = float(special.fdtrc(k, dof - k + 1, stat * (dof - k + 1) / (k * dof)))
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, diff / np.where(sd > 0, sd, 1), np.where(diff == 0, 0.0, np.inf))
    j = int(np.argmax(np.abs(z)))
    # power: a deviation of component i alone by d gives noncentrality d^2 (cov^-1)_ii
    lam = _joint_noncentrality(k, crit, dof)
    dii = np.diag(inv)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.where(dii > 0, np.sqrt(lam / np.where(dii > 0, dii, 1)), np.inf)
    nz = pred != 0
    power_abs = not np.any(nz)
    power = float(np.min(dev) if power_abs else np.min(dev[nz] / np.abs(pred[nz])))
    passed = bool(stat <= crit and math.isfinite(stat))
    return CheckResult(**base, statistic=stat, p_value=p, power_rel=power, passed=passed,
                       power_abs=power_abs, max_z=float(abs(z[j])), max_z_component=j)


# ----------------------------------------------------------------------------- ledger

def ledger() -> list[CheckResult]:
    """The checks recorded since the last :func:`reset_checks` (the list itself)."""
    return _LEDGER


def reset_checks() -> None:
    """Clear the ledger (a chapter calls this at its top)."""
    _LEDGER.clear()


_COLUMNS = ("check", "kind", "estimate ± SE", "prediction", "statistic", "verdict",
            "smallest detectable deviation")


def _row(r: CheckResult) -> list[str]:
    if r.note:
        stat = "—"
    elif r.kind == "exact":
        stat = f"{_stat_name(r)} {r.statistic:.2g}"
    else:
        stat = f"{_stat_name(r)} = {_num(r.statistic)} (K = {_num(r.K)})"
    name = r.hypothesis + (f" ({r.quantity})" if r.quantity else "")
    kind = r.kind + (f" ×{r.n_tests}" if r.n_tests > 1 else "")
    return [name, kind, _estimate_text(r), _prediction_text(r), stat,
            r.verdict, r.power_text if not r.note else "—"]


def checks_table(markdown: bool = True) -> str:
    """The ledger as a table: Markdown (for ``display(Markdown(...))``) or aligned plain text.
    Columns: check, kind, estimate ± SE, prediction, statistic, verdict, smallest detectable
    deviation (80 % power)."""
    rows = [_row(r) for r in _LEDGER]
    if markdown:
        def esc(s):
            return s.replace("|", "\\|").replace("\n", " ")
        out = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
        if not rows:
            out.append("| (no checks recorded) |" + " |" * (len(_COLUMNS) - 1))
        return "\n".join(out)
    table = [list(_COLUMNS)] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers

def bootstrap_se(values, stat=np.mean, n_boot: int = 2000, seed: int = 0) -> float:
    """Bootstrap standard error of ``stat`` over the draws (rows, axis 0) of ``values``:
    the standard deviation of ``stat`` over ``n_boot`` resamples with replacement
    (numpy ``default_rng(seed)``, so reproducible). ``stat`` takes the resampled array."""
    v = np.asarray(values, dtype=float)
    if v.ndim == 0 or v.shape[0] < 2:
        raise ValueError("values must hold at least 2 draws along axis 0")
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 2):
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.shape[0], size=(n_boot, v.shape[0]))
    boots = np.array([stat(v[i]) for i in idx], dtype=float)
    return float(boots.std(axis=0, ddof=1)) if boots.ndim == 1 else boots.std(axis=0, ddof=1)


def jackknife(values, stat) -> tuple[float, float]:
    """Leave-one-out jackknife of a smooth statistic of the draws (rows, axis 0) of ``values``
    (Quenouille; Tukey): ``(estimate, se)``, the bias-corrected estimate
    :math:`S\\hat\\theta-(S-1)\\bar\\theta_{(\\cdot)}` (its O(1/S) bias removed, e.g. that of a
    ratio of means) and :math:`\\sqrt{\\tfrac{S-1}S\\sum_i(\\hat\\theta_{(i)}-\\bar\\theta_{(\\cdot)})^2}`.
    ``stat`` maps an array of draws to a number."""
    v = np.asarray(values, dtype=float)
    if v.ndim == 0 or v.shape[0] < 3:
        raise ValueError("values must hold at least 3 draws along axis 0")
    S = v.shape[0]
    full = float(stat(v))
    loo = np.array([float(stat(np.delete(v, i, axis=0))) for i in range(S)])
    return S * full - (S - 1) * float(loo.mean()), math.sqrt((S - 1) / S * float(((loo - loo.mean()) ** 2).sum()))


def ratio_se(a: float, a_se: float, b: float, b_se: float, cov_ab: float = 0.0) -> float:
    """Delta-method standard error of ``a / b`` from the standard errors of ``a`` and ``b``
    (and their covariance, 0 for independent estimates):
    :math:`\\mathrm{se}^2=\\mathrm{se}_a^2/b^2+a^2\\mathrm{se}_b^2/b^4-2a\\,\\mathrm{cov}_{ab}/b^3`."""
    a, a_se, b, b_se, cov_ab = (float(x) for x in (a, a_se, b, b_se, cov_ab))
    if b == 0:
        return math.inf
    var = a_se**2 / b**2 + a**2 * b_se**2 / b**4 - 2 * a * cov_ab / b**3
    return math.sqrt(max(var, 0.0))


def extrapolate_inverse_width(widths, values, ses) -> tuple[float, float, float, float]:
    """The width-to-infinity limit of a quantity measured at several widths, assuming a
    finite-width correction linear in ``1/N``: weighted least squares of ``value`` on ``1/N``
    (exact interpolation for two widths). The widths are measured independently, so the
    standard errors combine in quadrature. Returns ``(intercept, its standard error, slope in
    1/N, its standard error)``. Used in: bdi, §"Finite width"; bn, §"Yang et al.'s rate"."""
    x = 1.0 / np.asarray(widths, dtype=float)
    y, s = np.asarray(values, dtype=float), np.asarray(ses, dtype=float)
    if x.size < 2 or y.shape != x.shape or s.shape != x.shape:
        raise ValueError("need values and standard errors at two or more widths")
    if np.any(s <= 0):  # exact values: unweighted fit, no standard errors
        A = np.stack([np.ones_like(x), x], 1)
        beta = np.linalg.lstsq(A, y, rcond=None)[0]
        return float(beta[0]), 0.0, float(beta[1]), 0.0
    A = np.stack([np.ones_like(x), x], 1) / s[:, None]
    cov = np.linalg.inv(A.T @ A)
    beta = cov @ A.T @ (y / s)
    return float(beta[0]), float(math.sqrt(cov[0, 0])), float(beta[1]), float(math.sqrt(cov[1, 1]))
