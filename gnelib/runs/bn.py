"""The experiments of the chapter "Batch normalization without gradient explosion", as
functions of their sizes, so that every profile (smoke, book, full) runs the same code.

Representations follow :mod:`gnelib.probes.isometry`: ``d x n`` (features x batch) matrices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gnelib.base.device import torch_threads
from gnelib.probes.bn_chain import bn_chain_gaps
from gnelib.theory.bn_rates import gaussian_gap_rate, paper_local_rate, yang_rate
from gnelib.nn.batchnorm import BN_ACTIVATIONS, BN_INITS, BNMLP, NORMS
from gnelib.base.errors import check_choice, check_positive_int
from gnelib.runs.registry import Config, param, register
from gnelib.probes.isometry import gram_eigenvalues, haar_orthogonal, isometry_gap, isometry_gaps
from gnelib.theory.weingarten import haar_moment

__all__ = ["row_bn", "monotonicity_paths", "weingarten_mc_table", "theorem3_one_step",
           "near_isometric_input", "local_decay", "one_step_contraction", "slope_stats",
           "yang_rate", "paper_local_rate", "train_bn_depths", "load_bn_training_data",
           "TrainResult", "gaussian_gap_rate", "gaussian_gap_growth", "BNDepthSweepConfig",
           "bn_depth_sweep", "BNRateLawConfig", "bn_rate_law", "BNTrainDepthsConfig",
           "bn_train_depths", "train_result_from_record", "haar_moment_draws", "MOMENT_PATTERNS",
           "BNConditionsConfig", "bn_conditions", "BNShapingConfig", "bn_shaping",
           "BNExponentRateConfig", "bn_exponent_rate", "BNYangConfig", "bn_yang_rates",
           "train_bn_activations", "BNTrainActivationsConfig",
           "bn_train_activations"]


def row_bn(x: np.ndarray) -> np.ndarray:
    """:math:`\\mathrm{Bn}(X)=\\mathrm{diag}(XX^\\top)^{-1/2}X` (Meterez et al. 2024, eq. 1) on
    a stack ``(..., d, n)``: every row scaled to unit norm."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _haar(d, batch, gen):
    return haar_orthogonal(d, generator=gen, batch=batch).numpy()


def monotonicity_paths(width: int, paths: int, steps: int, generator: torch.Generator) -> dict:
    """Check Lemma 2 along ``paths`` chains :math:`X_{\\ell+1}=\\mathrm{Bn}(W_\\ell X_\\ell)`
    from square Gaussian :math:`X_0`: the exact identity (ours)
    :math:`\\phi(\\mathrm{Bn}(X'))=\\phi(X)-\\log(\\mathrm{mean}\\,r/\\mathrm{geomean}\\,r)`,
    :math:`r_j=\\|X'_{j\\cdot}\\|^2`, and the pathwise monotonicity it implies. Returns the
    gaps ``(paths, steps+1)``, the largest absolute and relative violations of the identity
    and the largest relative change of :math:`\\phi` in one step (negative: every step
    decreased it), and ``predicted`` ``(paths, steps)``: the identity's value of
    :math:`\\phi(X_{\\ell+1})` from :math:`\\phi(X_\\ell)` and the row norms (to compare with
    ``gaps[:, 1:]``)."""
    d = check_positive_int("width", width)
    x = torch.randn(paths, d, d, generator=generator, dtype=torch.float64).numpy()
    gaps = [isometry_gaps(x)]
    ident_err, ident_abs, increase = 0.0, 0.0, -math.inf
    preds = []
    for _ in range(steps):
        xp = _haar(d, paths, generator) @ x
        r = (xp ** 2).sum(-1)
        pred = gaps[-1] - (np.log(r.mean(-1)) - np.log(r).mean(-1))
        x = row_bn(xp)
        phi = isometry_gaps(x)
        ident_abs = max(ident_abs, float(np.max(np.abs(phi - pred))))
        ident_err = max(ident_err, float(np.max(np.abs(phi - pred) / np.maximum(phi, 1e-300))))
        increase = max(increase, float(np.max((phi - gaps[-1]) / gaps[-1])))
        gaps.append(phi)
        preds.append(pred)
    return dict(gaps=np.stack(gaps, 1), identity_rel_err=ident_err, identity_abs_err=ident_abs,
                max_rel_increase=increase, predicted=np.stack(preds, 1))


#: Index patterns (rows, cols) of the Haar moments compared with Monte Carlo: degrees 1 and 3
#: (zero by Haar invariance under column sign flips; a QR sampler without the sign fix biases
#: them), and degrees 4, 6, 8 (m = 2, 3, 4), each coset type of m <= 3 and two of m = 4.
MOMENT_PATTERNS = [
    ("E[W11]", [0], [0]),
    ("E[W11^3]", [0, 0, 0], [0, 0, 0]),
    ("E[W11 W21^2]", [0, 1, 1], [0, 0, 0]),
    ("E[W11 W12 W21 W22]", [0, 0, 1, 1], [0, 1, 0, 1]),
    ("E[W11^2 W22^2] (E1)", [0, 0, 1, 1], [0, 0, 1, 1]),
    ("E[W11^2 W21^2] (E2)", [0, 0, 1, 1], [0, 0, 0, 0]),
    ("E[W11^4]", [0] * 4, [0] * 4),
    ("E[W11 W12 W22 W23 W33 W31]", [0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 0]),
    ("E[W11 W12 W21 W22 W33^2]", [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 2, 2]),
    ("E[W11^2 W22^2 W33^2]", [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),
    ("E[W11^6]", [0] * 6, [0] * 6),
    ("E[W11 W12 W22 W23 W33 W34 W44 W41]", [0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 1, 2, 2, 3, 3, 0]),
    ("E[W11 W12 W21 W22 W33 W34 W43 W44]", [0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 0, 1, 2, 3, 2, 3]),
    ("E[W11^8]", [0] * 8, [0] * 8),
]


def haar_moment_draws(width: int, draws: int, generator: torch.Generator,
                      patterns=None) -> dict:
    """Per-draw estimates of the Haar moments of ``patterns`` (default
    :data:`MOMENT_PATTERNS`) on O(``width``), and their exact values
    (:func:`~gnelib.theory.weingarten.haar_moment`, the Weingarten formula).

    Each draw's estimate averages the pattern over the ``width**2`` cyclic relabellings
    ``i -> i + s``, ``j -> j + t`` (mod ``width``) of its row and column indices: unbiased,
    because a Haar matrix has the law of its row and column permutations, and much less
    noisy than one index choice. The draws are independent, so a joint test of all moments
    (Hotelling's T²) uses their sample covariance. Returns ``names``, ``degree``, ``exact``
    (k,) and ``values`` (draws, k). Used in: bn, § Where Weingarten calculus enters."""
    d = check_positive_int("width", width)
    patterns = MOMENT_PATTERNS if patterns is None else patterns
    if any(max(r + c) >= d for _, r, c in patterns):
        raise ValueError(f"width {d} is too small for the patterns (need > largest index)")
    W = _haar(d, check_positive_int("draws", draws, minimum=2), generator)
    cols = []
    for _, r, c in patterns:
        r, c = np.asarray(r), np.asarray(c)
        acc = np.zeros(len(W))
        for s in range(d):
            Ws = W[:, (r + s) % d]
            for t in range(d):
                acc += np.prod(Ws[:, np.arange(len(r)), (c + t) % d], axis=1)
        cols.append(acc / d ** 2)
    return dict(width=d, names=[n for n, _, _ in patterns], degree=[len(r) for _, r, _ in patterns],
                exact=np.array([haar_moment(r, c, d) for _, r, c in patterns]),
                values=np.stack(cols, 1))


def weingarten_mc_table(width: int, draws: int, generator: torch.Generator) -> list[dict]:
    """:func:`haar_moment_draws` as table rows: moment, degree, exact value, Monte Carlo mean
    and its standard error."""
    r = haar_moment_draws(width, draws, generator)
    v = r["values"]
    return [dict(moment=n, degree=k, exact=float(e), mc=float(v[:, i].mean()),
                 se=float(v[:, i].std(ddof=1) / math.sqrt(len(v))))
            for i, (n, k, e) in enumerate(zip(r["names"], r["degree"], r["exact"]))]


def theorem3_one_step(width: int, draws: int, generator: torch.Generator) -> dict:
    """Theorem 3 of Meterez et al. (2024) for one ``X = Bn(G)``, ``G`` square Gaussian:
    the Monte Carlo mean of :math:`\\mathcal I(\\mathrm{Bn}(WX))/\\mathcal I(X)` over Haar
    ``W`` (with standard error) and the theorem's lower bound
    :math:`(1-\\sum_k(\\lambda_k-1)^2/(2d^2(d+2)))^{-1}`."""
    d = check_positive_int("width", width)
    x = row_bn(torch.randn(d, d, generator=generator, dtype=torch.float64).numpy())
    lam = gram_eigenvalues(x)
    bound = 1.0 / (1.0 - np.sum((lam - 1) ** 2) / (2 * d * d * (d + 2)))
    phi0 = isometry_gap(x)
    ratios = []
    for start in range(0, draws, 2000):
        b = min(2000, draws - start)
        ratios.append(np.exp(phi0 - isometry_gaps(row_bn(_haar(d, b, generator) @ x))))
    ratios = np.concatenate(ratios)
    return dict(width=d, phi0=phi0, ratio=float(ratios.mean()),
                se=float(ratios.std(ddof=1) / math.sqrt(draws)), bound=float(bound))


def near_isometric_input(width: int, seeds: int, f: float, generator: torch.Generator):
    """The input of the paper's Fig. 1: :math:`X_0=\\mathrm{Bn}((1-f)I+f\\,uv^\\top)`,
    :math:`u,v\\sim U(0,1)^d`, one per seed, as a stack ``(seeds, d, d)`` (numpy)."""
    d = check_positive_int("width", width)
    u = torch.rand(seeds, d, 1, generator=generator, dtype=torch.float64).numpy()
    v = torch.rand(seeds, 1, d, generator=generator, dtype=torch.float64).numpy()
    return row_bn((1 - f) * np.eye(d) + f * u @ v)




def local_decay(width: int, seeds: int, depth: int, window, generator: torch.Generator,
                f: float = 0.005) -> dict:
    """Run the orthogonal BN chain from :func:`near_isometric_input` for ``depth`` layers and
    fit :math:`\\log\\phi_\\ell` on ``window = [l0, l1]``: the slope of the log of the mean
    over seeds (the quantity our local rate :math:`1-2/(d+2)` predicts; jackknife standard
    error over seeds) and the mean of the per-seed slopes (the Lyapunov exponent, slightly
    steeper by Jensen's inequality; standard error over seeds). Decay per layer is
    ``1 - exp(slope)``."""
    x0 = near_isometric_input(width, seeds, f, generator)
    gaps = bn_chain_gaps(torch.from_numpy(x0).transpose(1, 2), depth, generator=generator)
    ell = np.arange(depth + 1)
    sel = (ell >= window[0]) & (ell <= window[1])

    def log_mean_slope(g):
        return np.polyfit(ell[sel], np.log(g[:, sel].mean(0)), 1)[0]

    slope_mean = log_mean_slope(gaps)
    # jackknife over seeds (whole chains left out) for the standard error of that slope
    loo = np.array([log_mean_slope(np.delete(gaps, i, 0)) for i in range(seeds)])
    jk_se = math.sqrt((seeds - 1) / seeds * np.sum((loo - loo.mean()) ** 2))
    per_seed = np.array([np.polyfit(ell[sel], np.log(g[sel]), 1)[0] for g in gaps])
    return dict(width=width, gaps=gaps, decay=float(1 - math.exp(slope_mean)),
                decay_se=float(math.exp(slope_mean) * jk_se),
                decay_seeds=float(1 - math.exp(per_seed.mean())),
                decay_seeds_se=float(math.exp(per_seed.mean()) * per_seed.std(ddof=1) / math.sqrt(seeds)),
                predicted=2 / (width + 2), paper=paper_local_rate(width))


def one_step_contraction(width: int, draws: int, generator: torch.Generator,
                         f: float = 1e-4) -> dict:
    """One step of our local rate: :math:`\\mathbb E[\\phi(\\mathrm{Bn}(WX))]/\\phi(X)` over
    Haar ``W`` for a near-isometric ``X`` (small ``f``), predicted ``1 - 2/(d+2)``."""
    d = check_positive_int("width", width)
    x = near_isometric_input(d, 1, f, generator)[0]
    phi0 = isometry_gap(x)
    r = np.concatenate([isometry_gaps(row_bn(_haar(d, min(2000, draws - s), generator) @ x))
                        for s in range(0, draws, 2000)]) / phi0
    return dict(width=d, phi0=phi0, ratio=float(r.mean()),
                se=float(r.std(ddof=1) / math.sqrt(draws)), predicted=1 - 2 / (d + 2))


def slope_stats(xs, values, lo=None, hi=None, sign: float = 1.0) -> tuple[float, float]:
    """Least-squares slope of each row of ``values`` (seeds x len(xs)) against ``xs`` over
    ``lo <= x <= hi``, times ``sign``: the mean over rows and its standard error."""
    xs = np.asarray(xs, dtype=float)
    sel = np.ones_like(xs, dtype=bool)
    if lo is not None:
        sel &= xs >= lo
    if hi is not None:
        sel &= xs <= hi
    if sel.sum() < 2:
        raise ValueError(f"need at least two points in [lo, hi] = [{lo}, {hi}], got {sel.sum()}")
    s = sign * np.array([np.polyfit(xs[sel], v[sel], 1)[0] for v in np.atleast_2d(values)])
    se = s.std(ddof=1) / math.sqrt(len(s)) if len(s) > 1 else float("nan")
    return float(s.mean()), float(se)




# ----------------------------------------------------------------------------- training

TRAIN_DATA = ("gaussian_mixture", "mnist1d", "cifar10")


def load_bn_training_data(name: str, generator: torch.Generator):
    """The training set of the chapter: a 10-class Gaussian mixture in 64 dimensions
    (2048 train, 512 test), MNIST-1D, or CIFAR-10 (flattened) when its files are present;
    a missing CIFAR-10 falls back to MNIST-1D. Returns ``(dataset, name used)``."""
    from gnelib.data import cifar10, gaussian_mixture, mnist1d
    check_choice("train_data", name, TRAIN_DATA)
    if name == "cifar10":
        try:
            return cifar10(), "cifar10"
        except FileNotFoundError:
            name = "mnist1d"
    if name == "mnist1d":
        return mnist1d(), "mnist1d"
    return gaussian_mixture(n_train=2048, n_test=512, dim=64, classes=10, separation=1.0,
                            generator=generator), "gaussian_mixture"


@dataclass
class TrainResult:
    """One trained BN MLP: accuracies with batch statistics (as during training) and with
    the running statistics of ``eval()``, the loss curve, and :math:`\\phi(W_\\ell)` of every
    square layer after training."""

    depth: int
    train_acc: float
    test_acc: float
    test_acc_eval_mode: float
    loss: list
    weight_gaps: np.ndarray
    diverged: bool
    weight_change: np.ndarray | None = None

    @property
    def middle_gap(self) -> float:
        """Median :math:`\\phi(W_\\ell)` over the middle half of the square layers."""
        g = self.weight_gaps
        k = len(g)
        return float(np.median(g[k // 4: k - k // 4])) if k >= 4 else float(np.median(g))


@torch.no_grad()
def _batch_stat_accuracy(model, x, y, n, device):
    model.train()  # BN with batch statistics, as in training; running stats are not used
    correct = total = 0
    for i in range(0, len(x) - n + 1, n):
        out = model(x[i:i + n].to(device))
        correct += (out.argmax(1).cpu() == y[i:i + n]).sum().item()
        total += n
    return correct / total


def train_bn_depths(data, depths, width: int, steps: int, lr: float, generator: torch.Generator,
                    activation: str = "tanh", gain_exponent: float = 0.4, device="cpu",
                    progress: bool = False, threads: int | None = 1) -> list[TrainResult]:
    """Train one BN MLP per depth (Meterez et al. 2024, Section 5 and Fig. 4): orthogonal
    init, ``nn.BatchNorm1d`` with bias, activation shaping :math:`\\alpha_\\ell=\\ell^{-k}`,
    plain SGD (no momentum, no weight decay) with batch size = width, as in the paper.
    Also returns the isometry gap of every trained square weight (their Fig. 6) and its
    relative Frobenius change :math:`\\|W_\\ell-W_\\ell(0)\\|_F/\\|W_\\ell(0)\\|_F`."""
    from gnelib.training import train
    device = torch.device(device)
    out = []
    with torch_threads(threads if device.type == "cpu" else None):
        for L in depths:
            model = BNMLP(int(np.prod(data.input_shape)), width, L, data.num_classes,
                          init="orthogonal", norm="torch", activation=activation, bias=True,
                          gain_exponent=gain_exponent, generator=generator)
            w0 = [m.weight.detach().clone() for m in model.layers[1:]]
            hist = train(model, data, steps=steps, batch_size=width, lr=lr, momentum=0.0,
                         device=device, generator=generator, progress=progress,
                         desc=f"depth {L}")
            flat = data.x_train.flatten(1)
            gaps = np.array([isometry_gap(m.weight.detach().double().cpu())
                             for m in model.layers[1:]])
            change = np.array([float((m.weight.detach().cpu() - a.cpu()).norm() / a.norm())
                               for m, a in zip(model.layers[1:], w0)])
            n_eval = min(len(flat), 4096)
            out.append(TrainResult(
                depth=L,
                train_acc=_batch_stat_accuracy(model, flat[:n_eval], data.y_train[:n_eval], width, device),
                test_acc=_batch_stat_accuracy(model, data.x_test.flatten(1), data.y_test, width, device),
                test_acc_eval_mode=hist.final_accuracy, loss=hist.loss, weight_gaps=gaps,
                diverged=hist.diverged, weight_change=change))
    return out




def gaussian_gap_growth(width: int, paths: int, steps: int, generator: torch.Generator) -> dict:
    """The first ``steps`` layers of Gaussian BN chains from ``X_0 = Bn(G)``: per step the
    increment of :math:`\\phi`, and the two terms of our exact identity

    .. math:: \\phi(\\mathrm{Bn}(WX))-\\phi(X)=-\\tfrac1d\\log\\det(WW^\\top)+\\mathrm{mean}_j\\log r_j,

    :math:`r_j=\\|(WX)_{j\\cdot}\\|^2`, valid for ``X = Bn(.)`` (unit rows) and square ``W``.
    ``steps`` must be small enough that the batch stays numerically non-degenerate.
    Returns arrays ``(paths, steps)`` and the largest violation of the identity."""
    d = check_positive_int("width", width)
    x = row_bn(torch.randn(paths, d, d, generator=generator, dtype=torch.float64).numpy())
    phi = isometry_gaps(x)
    inc, logdet, logr, err = [], [], [], 0.0
    for _ in range(steps):
        w = (torch.randn(paths, d, d, generator=generator, dtype=torch.float64) / math.sqrt(d)).numpy()
        xp = w @ x
        r = (xp ** 2).sum(-1)
        x = row_bn(xp)
        new = isometry_gaps(x)
        ld = -2 * np.linalg.slogdet(w)[1] / d  # log det(W W^T) = 2 log|det W|
        lr = np.log(r).mean(-1)
        err = max(err, float(np.max(np.abs(new - phi - ld - lr))))
        inc.append(new - phi)
        logdet.append(ld)
        logr.append(lr)
        phi = new
    return dict(increment=np.stack(inc, 1), logdet_term=np.stack(logdet, 1),
                logr_term=np.stack(logr, 1), identity_abs_err=err,
                predicted=gaussian_gap_rate(d))


# ------------------------------------------------------------ registered experiments
# The chapter's expensive runs, one registered experiment per figure; the per-profile table of
# each ``@register`` is the only source of that run's sizes (``gne run NAME --profile P``).

def _sweep(depths, width, batch, seeds, seed, device, progress, **net):
    from gnelib.probes.bn_chain import log_grad_norm_vs_depth
    return np.asarray(log_grad_norm_vs_depth(list(depths), width, batch, seeds=seeds, seed=seed,
                                             device=device, progress=progress, **net), dtype=float)


@dataclass(frozen=True)
class BNDepthSweepConfig(Config):
    """One depth sweep of the log gradient norm of a BN MLP at initialisation."""

    depths: tuple[int, ...] = param((5, 10, 20, 50, 100), positive=True)
    width: int = param(32, positive=True)
    batch: int = param(32, positive=True)
    in_dim: int = param(0, minimum=0, doc="0: the width")
    init: str = param("orthogonal", choices=BN_INITS)
    norm: str = param("paper", choices=NORMS)
    activation: str = param("identity", choices=BN_ACTIVATIONS)
    gain_exponent: float = param(0.0, minimum=0.0)
    mean_reduction: bool = param(False)
    sqrt_n: bool = param(False, doc="the paper's BN with the factor sqrt(n) (authors' code)")
    distinct: int = param(0, minimum=0, doc="0: all batch samples distinct")
    seeds: int = param(8, minimum=2)
    seed: int = param(0, minimum=0)


@register("bn_depth_sweep", BNDepthSweepConfig,
          profiles={"smoke": dict(depths=(5, 10, 20, 50, 100), width=32, batch=32, seeds=16),
                    "book": dict(depths=(5, 10, 20, 50, 100, 200, 300, 500), width=100, batch=100,
                                 seeds=8),
                    "full": dict(depths=(5, 10, 20, 50, 100, 200, 500, 1000), width=100,
                                 batch=100, seeds=10)})
def bn_depth_sweep(config: BNDepthSweepConfig, device="cpu", progress: bool = False) -> dict:
    """:math:`\\log\\|\\nabla_{W_1}\\mathcal L\\|_F` at initialisation against depth (Meterez
    et al. 2024, Fig. 3 / Theorem 5) with
    :func:`~gnelib.probes.bn_chain.log_grad_norm_vs_depth`, seeded by ``config.seed``.
    Returns ``depths`` and ``log_grad_norm`` (seeds x depths). Used in: bn, § Gradients."""
    g = _sweep(config.depths, config.width, config.batch, config.seeds, config.seed, device,
               progress, in_dim=config.in_dim or None, init=config.init, norm=config.norm,
               activation=config.activation, gain_exponent=config.gain_exponent,
               mean_reduction=config.mean_reduction, factor="sqrt_n" if config.sqrt_n else 1.0,
               distinct=config.distinct or None)
    return {"depths": list(config.depths), "log_grad_norm": g}


@dataclass(frozen=True)
class BNConditionsConfig(Config):
    """Depth sweeps with orthogonal weights when a condition of Theorem 5 fails."""

    depths: tuple[int, ...] = param((5, 10, 20, 50, 100), positive=True)
    width: int = param(16, positive=True)
    batches: tuple[int, ...] = param((8, 12, 16, 32, 64), positive=True)
    distinct: tuple[int, ...] = param((2, 4, 8, 15, 16), positive=True)
    mr_width: int = param(8, positive=True)
    seeds: int = param(16, minimum=2)
    mr_seeds: int = param(64, minimum=2)
    seed: int = param(50, minimum=0)


@register("bn_conditions", BNConditionsConfig,
          profiles={"smoke": dict(), "book": dict(depths=(5, 10, 20, 50, 100, 200, 300, 500),
                                                  width=32, batches=(16, 24, 32, 64, 128),
                                                  distinct=(4, 8, 16, 31, 32), mr_width=16,
                                                  seeds=8, mr_seeds=32),
                    "full": dict(depths=(5, 10, 20, 50, 100, 200, 500, 1000), width=100,
                                 batches=(50, 75, 100, 200, 400), distinct=(10, 25, 50, 99, 100),
                                 mr_width=32, seeds=10, mr_seeds=32)})
def bn_conditions(config: BNConditionsConfig, device="cpu", progress: bool = False) -> dict:
    """The failure modes of the theorem (Meterez et al. 2024, Fig. 2 and Fig. G6): batch size
    ``n`` against width (inputs of dimension ``2 width``), batches of ``n = d`` built from
    ``r`` distinct samples, and mean reduction at ``n = d`` and ``n = d + 1`` for standard BN
    and for the paper's BN with centring. The two mean-reduction variants share their seeds
    (paired: same weights and inputs), so their difference is measured with little noise.
    Returns ``batch``, ``distinct`` (lists of seeds x depths arrays, in the order of the
    configuration) and ``mean_reduction`` ({"torch"|"paper": [n = d, n = d + 1]})."""
    d, mw, s0 = config.width, config.mr_width, config.seed
    kw = dict(depths=config.depths, seeds=config.seeds, device=device, progress=progress)
    batch = [_sweep(width=d, batch=n, seed=s0 + i, in_dim=2 * d, **kw)
             for i, n in enumerate(config.batches)]
    distinct = [_sweep(width=d, batch=d, seed=s0 + 10 + i, distinct=r, **kw)
                for i, r in enumerate(config.distinct)]
    mr = {norm: [_sweep(config.depths, mw, n, config.mr_seeds, s0 + 20 + j, device, progress,
                        norm=norm, mean_reduction=(norm == "paper"))
                 for j, n in enumerate([mw, mw + 1])] for norm in ("torch", "paper")}
    return {"batch": batch, "distinct": distinct, "mean_reduction": mr}


@dataclass(frozen=True)
class BNShapingConfig(Config):
    """Depth sweeps with standard BN, orthogonal weights and activations, with and without
    activation shaping."""

    depths: tuple[int, ...] = param((5, 10, 20, 50, 100), positive=True)
    width: int = param(16, positive=True)
    activations: tuple[str, ...] = param(("identity", "tanh", "sin"), choices=BN_ACTIVATIONS)
    gain_exponent: float = param(0.4, minimum=0.0)
    seeds: int = param(16, minimum=2)
    seed: int = param(80, minimum=0)


@register("bn_shaping", BNShapingConfig,
          profiles={"smoke": dict(), "book": dict(depths=(5, 10, 20, 50, 100, 200, 300, 500),
                                                  width=32, seeds=8),
                    "full": dict(depths=(5, 10, 20, 50, 100, 200, 500, 1000), width=100,
                                 seeds=10)})
def bn_shaping(config: BNShapingConfig, device="cpu", progress: bool = False) -> dict:
    """Meterez et al. (2024), Fig. 5 and Fig. G5-left: :math:`\\log\\|\\nabla_{W_1}\\mathcal L\\|_F`
    against depth for every activation, unshaped (``"plain"``) and with gains
    :math:`\\alpha_\\ell=\\ell^{-k}` (``"shaped"``); arms of one activation share their seed.
    Returns ``{activation: {"plain": (seeds x depths), "shaped": ...}}``."""
    out = {}
    for i, act in enumerate(config.activations):
        out[act] = {tag: _sweep(config.depths, config.width, config.width, config.seeds,
                                config.seed + i, device, progress, norm="torch", activation=act,
                                gain_exponent=k)
                    for tag, k in (("plain", 0.0), ("shaped", config.gain_exponent))}
    return {"sweeps": out}


@dataclass(frozen=True)
class BNRateLawConfig(Config):
    """Per-layer log gradient norms of one deep BN MLP at constant gains α."""

    alphas: tuple[float, ...] = param((0.35, 0.5, 0.7, 1.0), positive=True)
    activation: str = param("tanh", choices=BN_ACTIVATIONS)
    depth: int = param(100, positive=True)
    width: int = param(16, positive=True)
    seeds: int = param(24, minimum=2)
    seed: int = param(100, minimum=0)


@register("bn_rate_law", BNRateLawConfig,
          profiles={"smoke": dict(), "book": dict(alphas=(0.25, 0.35, 0.5, 0.7, 1.0), depth=200,
                                                  width=32, seeds=12),
                    "full": dict(alphas=(0.15, 0.25, 0.35, 0.5, 0.7, 0.9, 1.0), depth=1000,
                                 width=100, seeds=10)})
def bn_rate_law(config: BNRateLawConfig, device="cpu", progress: bool = False) -> dict:
    """The explosion rate :math:`R(\\alpha)` of activation shaping (Meterez et al. 2024,
    Section 4, Fig. E1): for every constant gain α of ``alphas`` the per-layer profile
    :func:`~gnelib.probes.bn_chain.layer_gradient_profile` of a ``depth``-layer BN MLP
    (standard BN, orthogonal weights, d = n = ``width``), seeded by ``seed + j`` for the
    j-th gain. Returns ``alphas`` and ``profiles`` (gains x seeds x layers)."""
    from gnelib.probes.bn_chain import layer_gradient_profile
    profs = [layer_gradient_profile(config.depth, config.width, config.width, norm="torch",
                                    activation=config.activation, gain=al, seeds=config.seeds,
                                    seed=config.seed + j, device=device, progress=progress)
             for j, al in enumerate(config.alphas)]
    return {"alphas": list(config.alphas), "profiles": np.asarray(profs, dtype=float)}


@dataclass(frozen=True)
class BNExponentRateConfig(Config):
    """Per-layer log gradient norms of shaped BN MLPs for several gain exponents and depths."""

    exponents: tuple[float, ...] = param((0.2, 0.4, 0.7, 1.0), minimum=0.0)
    depths: tuple[int, ...] = param((50, 100), positive=True)
    activation: str = param("tanh", choices=BN_ACTIVATIONS)
    width: int = param(16, positive=True)
    seeds: int = param(12, minimum=2)
    seed: int = param(300, minimum=0)


@register("bn_exponent_rate", BNExponentRateConfig,
          profiles={"smoke": dict(), "book": dict(exponents=(0.1, 0.2, 0.4, 0.7, 1.0),
                                                  depths=(100, 200), width=32, seeds=8),
                    "full": dict(exponents=(0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0),
                                 depths=(100, 200, 500, 1000), width=100, seeds=10)})
def bn_exponent_rate(config: BNExponentRateConfig, device="cpu", progress: bool = False) -> dict:
    """Meterez et al. (2024), Fig. E2: the per-layer profile of
    :math:`\\log\\|\\nabla_{W_\\ell}\\mathcal L\\|_F` of BN MLPs (standard BN, orthogonal weights,
    d = n = ``width``) shaped with :math:`\\alpha_\\ell=\\ell^{-k}`, for every gain exponent
    ``k`` and depth. Returns ``profiles[depth index][exponent index]`` (seeds x layers)."""
    from gnelib.probes.bn_chain import layer_gradient_profile
    profs = [[np.asarray(layer_gradient_profile(L, config.width, config.width, norm="torch",
                                                activation=config.activation, gain_exponent=k,
                                                seeds=config.seeds, seed=config.seed + 10 * i + j,
                                                device=device, progress=progress), dtype=float)
              for j, k in enumerate(config.exponents)] for i, L in enumerate(config.depths)]
    return {"exponents": list(config.exponents), "depths": list(config.depths), "profiles": profs}


@dataclass(frozen=True)
class BNYangConfig(Config):
    """Per-layer log gradient norms of Gaussian BN MLPs in Yang et al.'s regime (width much
    larger than the batch), for the paper's BN and standard BN, at several widths."""

    widths: tuple[int, ...] = param((64, 128), positive=True)
    seeds: tuple[int, ...] = param((32, 32), minimum=2)
    batch: int = param(6, minimum=4)
    depth: int = param(140, positive=True)
    seed: int = param(40, minimum=0)

    def __post_init__(self):
        super().__post_init__()
        if len(self.seeds) != len(self.widths) or len(self.widths) < 2:
            raise ValueError(f"seeds must give one count per width, and at least two widths; "
                             f"got widths={self.widths}, seeds={self.seeds}")


@register("bn_yang_rates", BNYangConfig,
          profiles={"smoke": dict(),
                    "book": dict(widths=(64, 128, 256), seeds=(32, 32, 16), depth=160),
                    "full": dict(widths=(128, 256, 512, 1024), seeds=(64, 64, 32, 16), depth=400)})
def bn_yang_rates(config: BNYangConfig, device="cpu", progress: bool = False) -> dict:
    """Yang et al. (2019), Thm 3.9, tested in its regime: the per-layer profile
    :func:`~gnelib.probes.bn_chain.layer_gradient_profile` of ``depth``-layer Gaussian BN MLPs
    of every width with batch ``batch``, for the paper's (uncentred) BN and standard (centred)
    BN. Returns ``profiles[norm][width index]`` (seeds x layers). Used in: bn, § Gradients."""
    from gnelib.probes.bn_chain import layer_gradient_profile
    out = {}
    for i, norm in enumerate(("paper", "torch")):
        out[norm] = [np.asarray(layer_gradient_profile(config.depth, w, config.batch,
                                                       init="gaussian", norm=norm, seeds=s,
                                                       seed=config.seed + 10 * i + j,
                                                       device=device, progress=progress),
                                dtype=float)
                     for j, (w, s) in enumerate(zip(config.widths, config.seeds))]
    return {"widths": list(config.widths), "profiles": out}


@dataclass(frozen=True)
class BNTrainDepthsConfig(Config):
    """SGD training of shaped BN MLPs of several depths (:func:`train_bn_depths`)."""

    train_data: str = param("gaussian_mixture", choices=TRAIN_DATA)
    depths: tuple[int, ...] = param((10, 30), positive=True)
    width: int = param(32, positive=True)
    steps: int = param(60, positive=True)
    lr: float = param(0.01, positive=True)
    activation: str = param("tanh", choices=BN_ACTIVATIONS)
    gain_exponent: float = param(0.4, minimum=0.0)
    data_seed: int = param(200, minimum=0)
    seed: int = param(201, minimum=0)


@register("bn_train_depths", BNTrainDepthsConfig,
          profiles={"smoke": dict(),
                    "book": dict(depths=(10, 50), steps=400),
                    "full": dict(train_data="cifar10", depths=(100, 500, 1000), width=100,
                                 steps=10000, lr=0.001)},
          summary=lambda r: {"data": r["data"],
                             "train_acc_deepest": r["runs"][-1]["train_acc"]})
def bn_train_depths(config: BNTrainDepthsConfig, device="cpu", progress: bool = False) -> dict:
    """:func:`train_bn_depths` (Meterez et al. 2024, Section 5 and Fig. 6) on
    :func:`load_bn_training_data` (its generator seeded by ``data_seed``, training by
    ``seed``). Returns the data set used, its number of classes, and per depth the fields
    of :class:`TrainResult`."""
    data, name = load_bn_training_data(config.train_data, torch.Generator().manual_seed(config.data_seed))
    res = train_bn_depths(data, list(config.depths), config.width, config.steps,
                          config.lr, torch.Generator().manual_seed(config.seed),
                          activation=config.activation, gain_exponent=config.gain_exponent,
                          device=device, progress=progress)
    runs = [dict(depth=r.depth, train_acc=r.train_acc, test_acc=r.test_acc,
                 test_acc_eval_mode=r.test_acc_eval_mode, loss=[float(v) for v in r.loss],
                 weight_gaps=np.asarray(r.weight_gaps, dtype=float), diverged=bool(r.diverged),
                 weight_change=np.asarray(r.weight_change, dtype=float))
            for r in res]
    return {"data": name, "num_classes": int(data.num_classes), "runs": runs}


def train_result_from_record(run: dict) -> TrainResult:
    """A :class:`TrainResult` from one entry of ``bn_train_depths``'s ``runs`` (as stored)."""
    return TrainResult(depth=int(run["depth"]), train_acc=run["train_acc"], test_acc=run["test_acc"],
                       test_acc_eval_mode=run["test_acc_eval_mode"],
                       loss=np.asarray(run["loss"], dtype=float).tolist(),
                       weight_gaps=np.asarray(run["weight_gaps"], dtype=float),
                       diverged=bool(run["diverged"]),
                       weight_change=np.asarray(run.get("weight_change", []), dtype=float))


# --------------------------------------------------- training tanh / sin, shaped and unshaped

class _StackedBNMLP:
    """``R`` independent BN MLPs of one depth and width trained side by side, written with
    batched matrix products so that one forward pass serves every run (arms and seeds): the
    networks of :func:`~gnelib.nn.batchnorm.BNMLP` with ``norm="torch"``, ``bias=True``,
    orthogonal initialisation: ``nn.BatchNorm1d`` in training mode (biased batch variance,
    eps 1e-5, affine, running statistics with momentum 0.1 and the unbiased variance, as
    torch keeps them), gains :math:`\\alpha_\\ell` per run and layer, and an activation per run
    (tanh or sin). Parameters are float32 tensors with a leading run axis."""

    def __init__(self, in_dim, width, depth, out_dim, acts, gains, generators, device):
        from gnelib.probes.bn_chain import stack_weights
        R = len(acts)
        ws, heads = [], []
        for g in generators:  # one generator per run: arms that share a seed share weights
            w, h = stack_weights(1, in_dim, width, depth, out_dim, "orthogonal", g)
            ws.append(w)
            heads.append(h)
        f32 = dict(dtype=torch.float32, device=device)
        self.W = [torch.cat([w[i] for w in ws]).to(**f32).requires_grad_(True) for i in range(depth)]
        self.b = [torch.zeros(R, 1, width, **f32, requires_grad=True) for _ in range(depth)]
        self.gamma = [torch.ones(R, 1, width, **f32, requires_grad=True) for _ in range(depth)]
        self.beta = [torch.zeros(R, 1, width, **f32, requires_grad=True) for _ in range(depth)]
        self.H = torch.cat(heads).to(**f32).requires_grad_(True)
        self.hb = torch.zeros(R, 1, out_dim, **f32, requires_grad=True)
        self.rm = [torch.zeros(R, 1, width, **f32) for _ in range(depth)]
        self.rv = [torch.ones(R, 1, width, **f32) for _ in range(depth)]
        self.alpha = torch.as_tensor(np.asarray(gains, dtype=np.float32), device=device)  # (R, L)
        self.is_tanh = torch.tensor([a == "tanh" for a in acts], device=device).view(R, 1, 1)
        if any(a not in ("tanh", "sin") for a in acts):
            raise ValueError(f"activations must be tanh or sin, got {sorted(set(acts))}")

    def params(self):
        return [*self.W, *self.b, *self.gamma, *self.beta, self.H, self.hb]

    def forward(self, x, mode="batch", update=False):
        """Logits ``(R, n, out)`` of ``x`` ``(R, n, in)``: BN on batch statistics
        (``mode="batch"``, running statistics updated when ``update``) or on the running
        statistics (``mode="running"``, as ``eval()``)."""
        for ell, W in enumerate(self.W):
            h = torch.baddbmm(self.b[ell], x, W.transpose(1, 2))
            if mode == "batch":
                mu = h.mean(1, keepdim=True)
                var = h.var(1, unbiased=False, keepdim=True)
                if update:
                    n = h.shape[1]
                    with torch.no_grad():
                        self.rm[ell].mul_(0.9).add_(0.1 * mu)
                        self.rv[ell].mul_(0.9).add_(0.1 * var * n / (n - 1))
            else:
                mu, var = self.rm[ell], self.rv[ell]
            z = self.alpha[:, ell].view(-1, 1, 1) * ((h - mu) / torch.sqrt(var + 1e-5) * self.gamma[ell]
                                                      + self.beta[ell])
            x = torch.where(self.is_tanh, torch.tanh(z), torch.sin(z))
        return torch.baddbmm(self.hb, x, self.H.transpose(1, 2))


def _ce_per_run(logits, y):
    R, n, C = logits.shape
    return torch.nn.functional.cross_entropy(logits.reshape(R * n, C), y.reshape(R * n),
                                             reduction="none").view(R, n).mean(1)


def train_bn_activations(data, activations, gain_exponent: float, depth: int, width: int,
                         epochs: int, lr: float, seeds: int, seed: int, max_steps: int = 0,
                         device="cpu", threads: int | None = 1, progress: bool = False) -> dict:
    """Train, side by side, BN MLPs (standard BN with biases, orthogonal init, batch = width,
    plain SGD, as in Meterez et al. 2024, Section 5) for every activation of ``activations``,
    unshaped (``k = 0``) and shaped (:math:`\\alpha_\\ell=\\ell^{-k}`, ``k = gain_exponent``),
    ``seeds`` runs each. The four arms of one seed share their initial weights and the order
    of their mini-batches (seed ``seed + s``), so they start on equal footing and see the same
    examples. After every epoch (and at initialisation, epoch 0) it records, per run:

    - ``train_acc``: the mean accuracy over the epoch's mini-batches (as seen in training);
    - ``test_acc``: test accuracy with BN's running statistics (``eval()``, the paper's code);
    - ``test_acc_batch``: test accuracy with batch statistics on batches of the training size;
    - ``grad_norms``: :math:`\\|\\nabla_{W_\\ell}\\mathcal L\\|_F` for every hidden layer
      ``ℓ = 0..L-1`` on one fixed batch (the first ``width`` training examples) with batch
      statistics, running statistics untouched (the paper's ``get_measurements``, Fig. 6 /
      F1–F2);
    - ``weight_gaps``: :math:`\\phi(W_\\ell)` of every square layer ``ℓ = 1..L-1``.

    ``max_steps > 0`` stops after that many SGD steps (dry runs). A run whose loss becomes
    non-finite stops learning (its learning rate is set to 0) and is flagged ``diverged``.
    Returns arrays with leading axes ``(arm, seed)``; arms in the order
    ``[(act, 0), (act, k) for act in activations]``. Used in: bn, § Training deep BN MLPs."""
    check_positive_int("depth", depth)
    check_positive_int("width", width)
    check_positive_int("epochs", epochs)
    device = torch.device(device)
    arms = [(a, k) for a in activations for k in (0.0, float(gain_exponent))]
    A, S = len(arms), check_positive_int("seeds", seeds)
    acts = [a for a, _ in arms for _ in range(S)]
    from gnelib.nn.batchnorm import layer_gains
    gains = [layer_gains(depth, k) for _, k in arms for _ in range(S)]
    gens = [torch.Generator().manual_seed(seed + s) for _ in arms for s in range(S)]
    in_dim = int(np.prod(data.input_shape))
    xtr, ytr = data.x_train.flatten(1).float(), data.y_train
    xte, yte = data.x_test.flatten(1).float(), data.y_test
    n, N = width, len(xtr)
    if N < n:
        raise ValueError(f"the training set ({N}) is smaller than one batch ({n})")
    steps_per_epoch = N // n
    rec = {k: [] for k in ("train_acc", "test_acc", "test_acc_batch", "grad_norms", "weight_gaps")}
    with torch_threads(threads if device.type == "cpu" else None):
        net = _StackedBNMLP(in_dim, width, depth, data.num_classes, acts, gains, gens, device)
        order_gens = [torch.Generator().manual_seed(10_000 + seed + s) for s in range(S)]
        lr_run = torch.full((A * S, 1, 1), float(lr), device=device)
        diverged = np.zeros(A * S, dtype=bool)
        fixed_x = xtr[:n].to(device).expand(A * S, n, in_dim)
        fixed_y = ytr[:n].to(device).expand(A * S, n)

        def measure(train_acc):
            with torch.enable_grad():
                loss = _ce_per_run(net.forward(fixed_x, "batch"), fixed_y).sum()
                gw = torch.autograd.grad(loss, net.W)
            rec["grad_norms"].append(torch.stack([g.flatten(1).norm(dim=1) for g in gw], 1).double().cpu().numpy())
            rec["weight_gaps"].append(isometry_gaps(torch.stack(net.W[1:], 1).detach().double().cpu())
                                      if depth > 1 else np.zeros((A * S, 0)))
            with torch.no_grad():
                xt = xte.to(device).expand(A * S, *xte.shape)
                pred = net.forward(xt, "running").argmax(-1).cpu()
                rec["test_acc"].append((pred == yte).double().mean(1).numpy())
                m = (len(xte) // n) * n
                xb = xte[:m].to(device).view(m // n, n, in_dim)
                correct = torch.zeros(A * S)
                for j in range(m // n):
                    p = net.forward(xb[j].expand(A * S, n, in_dim), "batch").argmax(-1).cpu()
                    correct += (p == yte[j * n:(j + 1) * n]).double().sum(1)
                rec["test_acc_batch"].append((correct / m).numpy())
            rec["train_acc"].append(np.asarray(train_acc, dtype=float))

        measure(np.full(A * S, np.nan))
        done = 0
        for epoch in range(epochs):
            perms = [torch.randperm(N, generator=g) for g in order_gens]
            hits = torch.zeros(A * S)
            seen = 0
            for i in range(steps_per_epoch):
                idx = torch.stack([p[i * n:(i + 1) * n] for p in perms])  # (S, n)
                idx = idx.repeat(A, 1)  # run r = arm * S + s uses seed s's order
                xb, yb = xtr[idx].to(device), ytr[idx].to(device)
                with torch.enable_grad():
                    logits = net.forward(xb, "batch", update=True)
                    losses = _ce_per_run(logits, yb)
                    bad = ~torch.isfinite(losses.detach())
                    if bad.any():
                        diverged |= bad.cpu().numpy()
                        lr_run[bad] = 0.0
                    grads = torch.autograd.grad(torch.where(bad, 0.0, losses).sum(), net.params())
                with torch.no_grad():
                    for p, g in zip(net.params(), grads):
                        p.sub_(lr_run.view(-1, *([1] * (p.dim() - 1))) * torch.nan_to_num(g))
                hits += (logits.detach().argmax(-1).cpu() == yb.cpu()).double().sum(1)
                seen += n
                done += 1
                if max_steps and done >= max_steps:
                    break
            measure((hits / seen).numpy())
            if progress:
                print(f"epoch {epoch + 1}/{epochs}: test acc " +
                      ", ".join(f"{a}{'' if k == 0 else ' shaped'} {rec['test_acc'][-1][j * S:(j + 1) * S].mean():.3f}"
                                for j, (a, k) in enumerate(arms)), flush=True)
            if max_steps and done >= max_steps:
                break
    out = {k: np.stack(v, -1 if k in ("train_acc", "test_acc", "test_acc_batch") else 1) for k, v in rec.items()}
    shape = lambda v: v.reshape(A, S, *v.shape[1:])  # noqa: E731
    return dict(arms=[dict(activation=a, gain_exponent=k) for a, k in arms],
                epochs=list(range(len(rec["test_acc"]))),
                diverged=diverged.reshape(A, S), **{k: shape(v) for k, v in out.items()})


@dataclass(frozen=True)
class BNTrainActivationsConfig(Config):
    """SGD training of tanh and sin BN MLPs with and without activation shaping
    (:func:`train_bn_activations`)."""

    train_data: str = param("mnist1d", choices=TRAIN_DATA)
    activations: tuple[str, ...] = param(("tanh", "sin"), choices=("tanh", "sin"))
    gain_exponent: float = param(0.4, positive=True, doc="k of the shaped arm; the other arm has k = 0")
    depth: int = param(12, positive=True)
    width: int = param(16, positive=True, doc="also the batch size")
    epochs: int = param(2, positive=True)
    n_train: int = param(1000, minimum=0, doc="0: the whole training set")
    lr: float = param(0.1, positive=True)
    seeds: int = param(6, minimum=2)
    max_steps: int = param(0, minimum=0, doc="0: no limit; > 0 stops after that many SGD steps")
    seed: int = param(700, minimum=0)


@register("bn_train_activations", BNTrainActivationsConfig,
          profiles={"smoke": dict(),
                    "book": dict(depth=24, width=32, epochs=6, n_train=2000, seeds=12),
                    "full": dict(train_data="cifar10", depth=1000, width=100, epochs=1000,
                                 n_train=0, lr=0.001, seeds=3)},
          summary=lambda r: {"data": r["data"], "final_test_acc": [float(np.nanmean(a[:, -1]))
                                                                   for a in np.asarray(r["test_acc"])]})
def bn_train_activations(config: BNTrainActivationsConfig, device="cpu", progress: bool = False) -> dict:
    """Meterez et al. (2024), Fig. 4 (accuracy per epoch of shaped tanh and sin BN MLPs) and
    Fig. 6 / F1–F2 (per-layer gradient norms and :math:`\\phi(W_\\ell)` over training), with the
    unshaped arms beside the shaped ones: :func:`train_bn_activations` on
    :func:`load_bn_training_data` (the first ``n_train`` training examples). Returns the data
    set used and the per-epoch records of :func:`train_bn_activations` (leading axes arm, seed).
    Used in: bn, § Training deep BN MLPs."""
    data, name = load_bn_training_data(config.train_data, torch.Generator().manual_seed(config.seed))
    if config.n_train:
        data = data.subset(config.n_train)
    res = train_bn_activations(data, config.activations, config.gain_exponent, config.depth,
                               config.width, config.epochs, config.lr, config.seeds, config.seed,
                               max_steps=config.max_steps, device=device, progress=progress)
    return {"data": name, **res}
