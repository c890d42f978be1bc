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
from gnelib.nn.batchnorm import BNMLP
from gnelib.base.errors import check_choice, check_positive_int
from gnelib.runs.registry import parse_numbers, profiles_from_sizes, register
from gnelib.probes.isometry import gram_eigenvalues, haar_orthogonal, isometry_gap, isometry_gaps
from gnelib.theory.weingarten import haar_moment

__all__ = ["row_bn", "monotonicity_paths", "weingarten_mc_table", "theorem3_one_step",
           "near_isometric_input", "local_decay", "one_step_contraction", "slope_stats",
           "yang_rate", "paper_local_rate", "train_bn_depths", "load_bn_training_data",
           "TrainResult", "gaussian_gap_rate", "gaussian_gap_growth", "BNDepthSweepConfig",
           "bn_depth_sweep", "BNRateLawConfig", "bn_rate_law", "BNTrainDepthsConfig",
           "bn_train_depths", "train_result_from_record"]


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
    decreased it)."""
    d = check_positive_int("width", width)
    x = torch.randn(paths, d, d, generator=generator, dtype=torch.float64).numpy()
    gaps = [isometry_gaps(x)]
    ident_err, ident_abs, increase = 0.0, 0.0, -math.inf
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
    return dict(gaps=np.stack(gaps, 1), identity_rel_err=ident_err, identity_abs_err=ident_abs,
                max_rel_increase=increase)


#: Index patterns (rows, cols) of the Haar moments compared with Monte Carlo.
MOMENT_PATTERNS = [
    ("E[W_ik^2 W_jq^2] (E1)", [0, 0, 1, 1], [0, 0, 1, 1]),
    ("E[W_ik^2 W_jk^2] (E2)", [0, 0, 1, 1], [0, 0, 0, 0]),
    ("E[W_ik^4]", [0, 0, 0, 0], [0, 0, 0, 0]),
    ("E[W_11 W_12 W_21 W_22]", [0, 0, 1, 1], [0, 1, 0, 1]),
    ("E[W_11^2 W_22^2 W_33^2]", [0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]),
    ("E[W_11^2 W_12^2 W_22^2]", [0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]),
    ("E[W_11 W_12 W_21 W_22 W_33^2]", [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 2, 2]),
    ("E[W_11^6]", [0] * 6, [0] * 6),
]


def weingarten_mc_table(width: int, draws: int, generator: torch.Generator) -> list[dict]:
    """Exact Haar moments of degree 4 and 6 (:func:`~gnelib.theory.weingarten.haar_moment`, the
    Weingarten formula) against the mean over ``draws`` Haar matrices, with its standard
    error. For the moments with distinct rows and columns, Monte Carlo averages over all
    index choices with the same pattern (exchangeable by Haar invariance)."""
    d = check_positive_int("width", width)
    W = _haar(d, draws, generator)
    rows = []
    for name, r, c in MOMENT_PATTERNS:
        s = np.prod(W[:, r, c], axis=1)
        rows.append(dict(moment=name, degree=len(r), exact=haar_moment(r, c, d),
                         mc=float(s.mean()), se=float(s.std(ddof=1) / math.sqrt(draws))))
    return rows


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
    Also returns the isometry gap of every trained square weight (their Fig. 6)."""
    from gnelib.training import train
    device = torch.device(device)
    out = []
    with torch_threads(threads if device.type == "cpu" else None):
        for L in depths:
            model = BNMLP(int(np.prod(data.input_shape)), width, L, data.num_classes,
                          init="orthogonal", norm="torch", activation=activation, bias=True,
                          gain_exponent=gain_exponent, generator=generator)
            hist = train(model, data, steps=steps, batch_size=width, lr=lr, momentum=0.0,
                         device=device, generator=generator, progress=progress,
                         desc=f"depth {L}")
            flat = data.x_train.flatten(1)
            gaps = np.array([isometry_gap(m.weight.detach().double().cpu())
                             for m in model.layers[1:]])
            n_eval = min(len(flat), 4096)
            out.append(TrainResult(
                depth=L,
                train_acc=_batch_stat_accuracy(model, flat[:n_eval], data.y_train[:n_eval], width, device),
                test_acc=_batch_stat_accuracy(model, data.x_test.flatten(1), data.y_test, width, device),
                test_acc_eval_mode=hist.final_accuracy, loss=hist.loss, weight_gaps=gaps,
                diverged=hist.diverged))
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
# The chapter's expensive runs as registered experiments (gnelib.runs.registry): a frozen
# configuration of int/float/str/bool fields, so list-valued sizes (depths, gains) are
# comma-separated strings; the profiles are built from SIZES["bn"], the one source of truth.

def _profiles(**fields) -> dict:
    return profiles_from_sizes("bn", fields)


@dataclass(frozen=True)
class BNDepthSweepConfig:
    """One depth sweep of the log gradient norm of a BN MLP at initialisation."""

    depths: str = "5,10,20,50,100"
    width: int = 32
    batch: int = 32
    in_dim: int = 0  # 0: the width
    init: str = "orthogonal"
    norm: str = "paper"
    activation: str = "identity"
    gain_exponent: float = 0.0
    mean_reduction: bool = False
    distinct: int = 0  # 0: all batch samples distinct
    seeds: int = 8
    seed: int = 0

    def __post_init__(self):
        parse_numbers(self.depths, "depths")
        for f in ("width", "batch", "seeds"):
            check_positive_int(f, getattr(self, f))
        for f in ("in_dim", "distinct", "seed"):
            check_positive_int(f, getattr(self, f), minimum=0)


@register("bn_depth_sweep", BNDepthSweepConfig,
          profiles=_profiles(depths="depths", width="width", batch="width", seeds="seeds"))
def bn_depth_sweep(config: BNDepthSweepConfig, device="cpu", progress: bool = False) -> dict:
    """:math:`\\log\\|\\nabla_{W_1}\\mathcal L\\|_F` at initialisation against depth (Meterez
    et al. 2024, Fig. 3 / Theorem 5) with
    :func:`~gnelib.probes.bn_chain.log_grad_norm_vs_depth`, seeded by ``config.seed``: the
    orthogonal-vs-Gaussian, batch-size, degenerate-batch and activation-shaping sweeps of the
    chapter. Returns ``depths`` and ``log_grad_norm`` (seeds x depths)."""
    from gnelib.probes.bn_chain import log_grad_norm_vs_depth
    depths = parse_numbers(config.depths, "depths")
    g = log_grad_norm_vs_depth(depths, config.width, config.batch, in_dim=config.in_dim or None,
                               init=config.init, norm=config.norm, activation=config.activation,
                               gain_exponent=config.gain_exponent,
                               mean_reduction=config.mean_reduction,
                               distinct=config.distinct or None, seeds=config.seeds,
                               seed=config.seed, device=device, progress=progress)
    return {"depths": depths, "log_grad_norm": np.asarray(g, dtype=float)}


@dataclass(frozen=True)
class BNRateLawConfig:
    """Per-layer log gradient norms of one deep BN MLP at constant gains α."""

    alphas: str = "0.35,0.5,0.7,1"
    activation: str = "tanh"
    depth: int = 100
    width: int = 16
    seeds: int = 24
    seed: int = 0

    def __post_init__(self):
        parse_numbers(self.alphas, "alphas", float)
        for f in ("depth", "width", "seeds"):
            check_positive_int(f, getattr(self, f))
        check_positive_int("seed", self.seed, minimum=0)


@register("bn_rate_law", BNRateLawConfig,
          profiles=_profiles(alphas="rate_alphas", depth="rate_depth", width="cond_width",
                             seeds="rate_seeds"))
def bn_rate_law(config: BNRateLawConfig, device="cpu", progress: bool = False) -> dict:
    """The explosion rate :math:`R(\\alpha)` of activation shaping (Meterez et al. 2024,
    Section 4): for every constant gain α of ``alphas`` the per-layer profile
    :func:`~gnelib.probes.bn_chain.layer_gradient_profile` of a ``depth``-layer BN MLP
    (standard BN, orthogonal weights, d = n = ``width``), seeded by ``seed + j`` for the
    j-th gain. Returns ``alphas`` and ``profiles`` (gains x seeds x layers)."""
    from gnelib.probes.bn_chain import layer_gradient_profile
    alphas = parse_numbers(config.alphas, "alphas", float)
    profs = [layer_gradient_profile(config.depth, config.width, config.width, norm="torch",
                                    activation=config.activation, gain=al, seeds=config.seeds,
                                    seed=config.seed + j, device=device, progress=progress)
             for j, al in enumerate(alphas)]
    return {"alphas": alphas, "profiles": np.asarray(profs, dtype=float)}


@dataclass(frozen=True)
class BNTrainDepthsConfig:
    """SGD training of shaped BN MLPs of several depths (:func:`train_bn_depths`)."""

    train_data: str = "gaussian_mixture"
    depths: str = "10,30"
    width: int = 32
    steps: int = 60
    lr: float = 0.01
    activation: str = "tanh"
    gain_exponent: float = 0.4
    data_seed: int = 0
    seed: int = 0

    def __post_init__(self):
        check_choice("train_data", self.train_data, TRAIN_DATA)
        parse_numbers(self.depths, "depths")
        for f in ("width", "steps"):
            check_positive_int(f, getattr(self, f))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        for f in ("data_seed", "seed"):
            check_positive_int(f, getattr(self, f), minimum=0)


@register("bn_train_depths", BNTrainDepthsConfig,
          profiles=_profiles(train_data="train_data", depths="train_depths", width="train_width",
                             steps="train_steps", lr="train_lr", gain_exponent="gain_exponent"),
          summary=lambda r: {"data": r["data"],
                             "train_acc_deepest": r["runs"][-1]["train_acc"]})
def bn_train_depths(config: BNTrainDepthsConfig, device="cpu", progress: bool = False) -> dict:
    """:func:`train_bn_depths` (Meterez et al. 2024, Section 5 and Fig. 4) on
    :func:`load_bn_training_data` (its generator seeded by ``data_seed``, training by
    ``seed``). Returns the data set used, its number of classes, and per depth the fields
    of :class:`TrainResult`."""
    data, name = load_bn_training_data(config.train_data, torch.Generator().manual_seed(config.data_seed))
    res = train_bn_depths(data, parse_numbers(config.depths, "depths"), config.width, config.steps,
                          config.lr, torch.Generator().manual_seed(config.seed),
                          activation=config.activation, gain_exponent=config.gain_exponent,
                          device=device, progress=progress)
    runs = [dict(depth=r.depth, train_acc=r.train_acc, test_acc=r.test_acc,
                 test_acc_eval_mode=r.test_acc_eval_mode, loss=[float(v) for v in r.loss],
                 weight_gaps=np.asarray(r.weight_gaps, dtype=float), diverged=bool(r.diverged))
            for r in res]
    return {"data": name, "num_classes": int(data.num_classes), "runs": runs}


def train_result_from_record(run: dict) -> TrainResult:
    """A :class:`TrainResult` from one entry of ``bn_train_depths``'s ``runs`` (as stored)."""
    return TrainResult(depth=int(run["depth"]), train_acc=run["train_acc"], test_acc=run["test_acc"],
                       test_acc_eval_mode=run["test_acc_eval_mode"],
                       loss=np.asarray(run["loss"], dtype=float).tolist(),
                       weight_gaps=np.asarray(run["weight_gaps"], dtype=float),
                       diverged=bool(run["diverged"]))
