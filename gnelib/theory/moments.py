"""The moment calculus of block dynamical isometry (Chen et al. 2020), in float64 numpy/scipy.

A block with Jacobian :math:`J\\in\\mathbb R^{n_\\text{out}\\times n_\\text{in}}` is described by the
first two normalised spectral moments of :math:`JJ^\\top` (normalised by the number of rows)

.. math::
    \\phi_1 = \\phi(JJ^\\top) = \\mathbb E\\,\\tfrac1{n_\\text{out}}\\operatorname{Tr}(JJ^\\top),\\qquad
    \\phi_2 = \\phi\\big((JJ^\\top)^2\\big),

from which the spectral variance :math:`\\varphi = \\phi_2-\\phi_1^2` and the relative variance
:math:`\\varphi/\\phi_1^2` follow. :func:`serial` composes blocks in sequence (multiplication
theorem), :func:`parallel` adds blocks side by side (addition theorem), and the remaining
functions are the component library: one function per layer type, each returning
:class:`Moments` in closed form or by Gauss-Hermite quadrature. Expectations are over the
random weights and over the pre-activations where the docstring says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from gnelib.base.errors import check_positive, check_positive_int

__all__ = [
    "Moments", "serial", "parallel", "direct_sum", "identity", "relu", "leaky_relu", "prelu",
    "sprelu", "tanh", "sigmoid", "selu", "selu_coefficients", "SELU_LAMBDA", "SELU_ALPHA",
    "dense", "conv", "orthogonal", "orthogonal_conv", "delta_orthogonal", "batch_norm", "second_moment_norm",
    "l1_moment_norm", "weight_norm", "scaled_weight_standardization", "dropout", "avg_pool",
    "residual", "concatenation", "COMPONENTS",
]

#: The standard SeLU coefficients (Klambauer et al. 2017).
SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


@dataclass(frozen=True)
class Moments:
    """First two spectral moments of :math:`JJ^\\top` for one block: the one moments record of
    the library, for closed forms (the component library below) and for measurements
    (:func:`gnelib.probes.jacobian.jacobian_moments`, whose ``JacobianMoments`` is this class).

    ``phi1`` is :math:`\\phi(JJ^\\top)`, ``phi2`` is :math:`\\phi((JJ^\\top)^2)` (both normalised
    by the number of rows :math:`n_\\text{out}`), ``aspect`` is :math:`n_\\text{out}/n_\\text{in}`
    (1 for square blocks). Block dynamical isometry (Chen et al. 2020, Definition 3.1) asks
    for ``phi1`` ≈ 1 and ``variance`` ≈ 0 in every block.

    A measurement also carries ``phi1_se``/``phi2_se`` (standard errors of the probe average;
    0 for exact values), ``n_in``/``n_out``, ``probes`` (products with :math:`JJ^\\top`; 0 for
    exact or closed-form values), ``method`` (``"closed form"``, ``"exact"``, ``"hutchinson"``,
    ``"hutch++"``, ``"forward"``: then ``probes`` counts passes) and ``sketch`` (products in
    the Hutch++ sketch). Cauchy–Schwarz (``phi2 >= phi1**2``) is enforced for exact values
    only: an estimate may fall below it.
    """

    phi1: float
    phi2: float
    aspect: float = 1.0
    phi1_se: float = 0.0
    phi2_se: float = 0.0
    n_in: int | None = None
    n_out: int | None = None
    probes: int = 0
    method: str = "closed form"
    sketch: int = 0

    def __post_init__(self):
        for name in ("phi1", "phi2", "aspect", "phi1_se", "phi2_se"):
            v = getattr(self, name)
            ok = isinstance(v, (int, float, np.floating)) and (
                (math.isfinite(v) and v >= 0) or (name.endswith("_se") and math.isnan(v)))
            if not ok:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.aspect == 0:
            raise ValueError("aspect must be > 0 (n_out/n_in)")
        # Cauchy-Schwarz: phi2 >= phi1^2 up to rounding, for exact values.
        if self.probes == 0 and self.phi2 < self.phi1**2 * (1 - 1e-9) - 1e-300:
            raise ValueError(f"phi2 = {self.phi2!r} must be >= phi1**2 = {self.phi1**2!r}")

    @property
    def variance(self) -> float:
        """Spectral variance :math:`\\varphi(JJ^\\top)=\\phi_2-\\phi_1^2`."""
        return self.phi2 - self.phi1**2

    @property
    def relative_variance(self) -> float:
        """:math:`\\varphi/\\phi_1^2`, which adds under serial composition."""
        return self.phi2 / self.phi1**2 - 1.0 if self.phi1 > 0 else math.inf

    @classmethod
    def from_variance(cls, phi1: float, variance: float, aspect: float = 1.0) -> "Moments":
        """Build from :math:`\\phi_1` and the spectral variance :math:`\\varphi`."""
        return cls(float(phi1), float(variance + phi1**2), float(aspect))


def _as_moments(blocks) -> list[Moments]:
    blocks = list(blocks)
    if not blocks:
        raise ValueError("blocks must contain at least one Moments")
    for b in blocks:
        if not isinstance(b, Moments):
            raise ValueError(f"blocks must be Moments, got {type(b).__name__}")
    return blocks


def serial(*blocks: Moments) -> Moments:
    """Moments of :math:`J = J_L\\cdots J_1` (blocks listed input first): the multiplication theorem.

    Assumptions: the :math:`J_jJ_j^\\top` are asymptotically free (independent, orthogonally
    invariant weights, large width; the mean-field assumption for activation derivatives).
    Then, by the S-transform :math:`S_{AB}=S_AS_B` with
    :math:`S(z)=1/m_1+(m_1^2-m_2)z/m_1^3+O(z^2)`, first moments multiply and relative variances
    add. Rectangular blocks are handled by moving each :math:`J_{j}^\\top J_{j}` to the
    :math:`n_{j-1}`-dimensional space of the block below (moments scale by the aspect ratio).
    """
    blocks = _as_moments(blocks)
    acc = blocks[0]
    for b in blocks[1:]:
        a2 = b.aspect
        # A = J1 J1^T in n1 dims (row-normalised), B = J2^T J2 in n1 dims.
        m1_b = a2 * b.phi1
        rv_b = (b.phi2 * a2) / m1_b**2 - 1.0 if m1_b > 0 else 0.0
        m1 = acc.phi1 * m1_b
        rv = acc.relative_variance + rv_b if m1 > 0 else 0.0
        m2 = m1**2 * (1.0 + rv)
        acc = Moments(m1 / a2, m2 / a2, acc.aspect * a2)
    return acc


def parallel(*blocks: Moments) -> Moments:
    """Moments of :math:`J=\\sum_j J_j` (same shape): the addition theorem.

    Assumptions: the :math:`J_j` are free and all but at most one are centred (for example each
    contains an independent zero-mean weight matrix), so cross terms vanish:
    :math:`\\phi=\\sum_j\\phi_j` and
    :math:`\\varphi=\\sum_j\\varphi_j+\\sum_{i\\neq j}\\phi_i\\phi_j`.
    """
    blocks = _as_moments(blocks)
    aspects = {b.aspect for b in blocks}
    if len(aspects) > 1:
        raise ValueError(f"parallel blocks must have the same shape, got aspects {sorted(aspects)}")
    phi1 = sum(b.phi1 for b in blocks)
    var = sum(b.variance for b in blocks)
    var += sum(bi.phi1 * bj.phi1 for i, bi in enumerate(blocks) for j, bj in enumerate(blocks)
               if i != j)
    return Moments.from_variance(phi1, var, blocks[0].aspect)


def direct_sum(blocks, sizes) -> Moments:
    """Moments of a block-diagonal Jacobian :math:`\\operatorname{diag}(J_1,\\dots,J_k)` whose
    blocks have ``sizes`` rows: row-weighted averages of the moments (exact, no assumption).
    Used for per-channel normalisation layers."""
    blocks = _as_moments(blocks)
    sizes = np.asarray(sizes, dtype=np.float64)
    if len(sizes) != len(blocks) or np.any(sizes <= 0):
        raise ValueError("sizes must give one positive row count per block")
    w = sizes / sizes.sum()
    return Moments(float(w @ [b.phi1 for b in blocks]), float(w @ [b.phi2 for b in blocks]),
                   blocks[0].aspect)


def identity() -> Moments:
    """The identity map: :math:`\\phi_1=\\phi_2=1`."""
    return Moments(1.0, 1.0)


# ---------------------------------------------------------------- activations
def _check_p(p, name="p"):
    p = float(p)
    if not 0 < p <= 1:
        raise ValueError(f"{name} must be a probability in (0, 1], got {p!r}")
    return p


def relu(p: float = 0.5) -> Moments:
    """ReLU with :math:`P(h>0)=p`: :math:`J=D`, :math:`D_{ii}\\in\\{0,1\\}`, so
    :math:`\\phi_1=\\phi_2=p` and :math:`\\varphi=p-p^2` (Chen et al. 2020's table as quoted by Yao et al.)."""
    p = _check_p(p)
    return Moments(p, p)


def leaky_relu(slope: float, p: float = 0.5) -> Moments:
    """Leaky ReLU with negative slope γ: :math:`\\phi_1=p+\\gamma^2(1-p)`,
    :math:`\\phi_2=p+\\gamma^4(1-p)`; at p = ½, :math:`\\varphi/\\phi_1^2=((1-\\gamma^2)/(1+\\gamma^2))^2`
    (our derivation)."""
    p = _check_p(p)
    g = float(slope)
    return Moments(p + g**2 * (1 - p), p + g**4 * (1 - p))


def prelu(a: float, p: float = 0.5) -> Moments:
    """PReLU with (current) slope a: identical to :func:`leaky_relu` with slope a."""
    return leaky_relu(a, p)


def sprelu(a: float, p: float = 0.5) -> Moments:
    """sPReLU, PReLU divided by :math:`\\sqrt{1+a^2}`: :func:`prelu` moments scaled by
    :math:`1/(1+a^2)` and :math:`1/(1+a^2)^2`; :math:`\\phi_1=\\tfrac12` for every a at p = ½
    (our derivation)."""
    m = prelu(a, p)
    s = 1.0 + float(a) ** 2
    return Moments(m.phi1 / s, m.phi2 / s**2)


def _gauss_expect(fn, q: float, nodes: int = 160) -> float:
    """:math:`\\mathbb E[fn(h)]`, :math:`h\\sim\\mathcal N(0,q)`, by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    return float(w @ fn(math.sqrt(q) * x) / math.sqrt(2 * math.pi))


def tanh(q: float) -> Moments:
    """tanh at pre-activation :math:`h\\sim\\mathcal N(0,q)`: :math:`\\phi_1=\\mathbb E[(1-\\tanh^2h)^2]`,
    :math:`\\phi_2=\\mathbb E[(1-\\tanh^2h)^4]` (Gauss-Hermite quadrature); → (1, 1) as q → 0."""
    q = check_positive("q", q)
    d2 = lambda h: (1 - np.tanh(h) ** 2) ** 2  # noqa: E731
    return Moments(_gauss_expect(d2, q), _gauss_expect(lambda h: d2(h) ** 2, q))


def sigmoid(q: float) -> Moments:
    """Logistic sigmoid at :math:`h\\sim\\mathcal N(0,q)`: :math:`\\phi_k=\\mathbb E[\\sigma'(h)^{2k}]`
    with :math:`\\sigma'=\\sigma(1-\\sigma)` (quadrature); → (1/16, 1/256) as q → 0."""
    q = check_positive("q", q)
    d2 = lambda h: (0.25 / np.cosh(h / 2) ** 2) ** 2  # noqa: E731
    return Moments(_gauss_expect(d2, q), _gauss_expect(lambda h: d2(h) ** 2, q))


def _e_exp_neg(c: float, q: float) -> float:
    """:math:`\\mathbb E[e^{ch}\\,1(h<0)]=e^{c^2q/2}\\Phi(-c\\sqrt q)` for :math:`h\\sim\\mathcal N(0,q)`."""
    return math.exp(c * c * q / 2 + log_ndtr(-c * math.sqrt(q)))


def selu(lam: float = SELU_LAMBDA, alpha: float = SELU_ALPHA, q: float = 1.0) -> Moments:
    """SeLU(λ, α) at :math:`h\\sim\\mathcal N(0,q)`. The derivative is λ for h > 0 and
    :math:`\\lambda\\alpha e^h` for h < 0, so
    :math:`\\phi_1=\\lambda^2(\\tfrac12+\\alpha^2e^{2q}\\Phi(-2\\sqrt q))` (the block-φ equation of
    Chen et al.'s SeLU solver, read from the official code) and
    :math:`\\phi_2=\\lambda^4(\\tfrac12+\\alpha^4e^{8q}\\Phi(-4\\sqrt q))` (our derivation)."""
    q = check_positive("q", q)
    lam, alpha = float(lam), float(alpha)
    return Moments(lam**2 * (0.5 + alpha**2 * _e_exp_neg(2, q)),
                   lam**4 * (0.5 + alpha**4 * _e_exp_neg(4, q)))


def selu_coefficients(eps: float, gain2: float = 1.0, q: float = 1.0) -> tuple[float, float]:
    """Depth-aware SeLU coefficients (λ, α): the two equations of Chen et al.'s SeLU solver.

    With γ₀ = ``gain2`` = fan-in·Var(w), fixed-point second moment ``q`` and :math:`v=q\\gamma_0`,
    :math:`A=e^{2v}\\Phi(-2\\sqrt v)`, :math:`B=A-2e^{v/2}\\Phi(-\\sqrt v)+\\tfrac12`, solve

    .. math::
        \\gamma_0\\lambda^2(\\tfrac12+\\alpha^2A)=1+\\epsilon\\ \\text{(block φ = 1+ε)},\\qquad
        \\lambda^2(\\tfrac v2+\\alpha^2B)=q\\ \\text{(second-moment fixed point)}.

    Eliminating λ² (our algebra) gives :math:`\\alpha^2=\\epsilon v/(2(vA-(1+\\epsilon)B))`, then
    λ² from the first equation. ε = 0.0716 recovers the standard SeLU; ε = 0 gives
    :math:`(\\sqrt{2/\\gamma_0}, 0)`. Raises ``ValueError`` when no real solution exists.
    """
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    g0 = check_positive("gain2", gain2)
    q = check_positive("q", q)
    v = q * g0
    a = _e_exp_neg(2, v)
    b = a - 2 * _e_exp_neg(1, v) + 0.5
    denom = v * a - (1 + eps) * b
    if eps == 0:
        alpha2 = 0.0
    elif denom <= 0:
        eps_max = v * a / b - 1
        raise ValueError(f"eps = {eps!r} has no SeLU solution for gain2 = {g0!r}, q = {q!r}: "
                         f"eps must be in [0, {eps_max:.6g})")
    else:
        alpha2 = eps * v / (2 * denom)
    lam2 = (1 + eps) / (g0 * (0.5 + alpha2 * a))
    return math.sqrt(lam2), math.sqrt(alpha2)


# ---------------------------------------------------------------- linear layers
def dense(m: int, n: int, sigma2: float) -> Moments:
    """Dense m×n layer with i.i.d. :math:`\\mathcal N(0,\\sigma^2)` weights (real Wishart moments,
    exact in expectation): :math:`\\phi_1=n\\sigma^2`, :math:`\\phi_2=n(n+m+1)\\sigma^4`, so
    :math:`\\varphi/\\phi_1^2=(m+1)/n` (→ m/n at large width; our derivation)."""
    m, n = check_positive_int("m", m), check_positive_int("n", n)
    s2 = check_positive("sigma2", sigma2)
    return Moments(n * s2, n * (n + m + 1) * s2**2, m / n)


def conv(c_in: int, c_out: int, k: int, sigma2: float, dims: int = 2) -> Moments:
    """Stride-1 convolution with an i.i.d. :math:`\\mathcal N(0,\\sigma^2)` k×k (or k when ``dims`` is 1)
    kernel, circular padding (interior pixels), :math:`K=k^{d}` taps, :math:`n=c_\\text{in}K`:
    :math:`\\phi_1=n\\sigma^2` (Chen et al.'s table as quoted by Yao et al.) and
    :math:`\\phi_2=n(n+c_\\text{out}K+1)\\sigma^4` (our derivation by Wick's theorem on
    :math:`J=\\sum_{o,i,s}w_{ois}E_{oi}\\otimes T_s`: shifts commute, so the crossed pairing
    survives only for s = s' when the grid is larger than 2k). So a conv has the relative
    variance of a dense :math:`c_\\text{out}K\\times c_\\text{in}K` layer,
    :math:`(c_\\text{out}K+1)/(c_\\text{in}K)`, not :math:`c_\\text{out}/(c_\\text{in}K)`."""
    c_in, c_out, k = (check_positive_int(a, b) for a, b in
                      (("c_in", c_in), ("c_out", c_out), ("k", k)))
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    taps = k**dims
    m = dense(c_out * taps, c_in * taps, sigma2)
    return Moments(m.phi1, m.phi2, c_out / c_in)


def orthogonal(m: int, n: int, gain: float = 1.0) -> Moments:
    """Haar (semi-)orthogonal m×n weight times ``gain`` g: rows orthonormal when m ≤ n gives
    :math:`JJ^\\top=g^2I`, i.e. (g², g⁴) and :math:`\\varphi=0`; columns orthonormal when m > n
    gives a rank-n projection, (g²n/m, g⁴n/m)."""
    m, n = check_positive_int("m", m), check_positive_int("n", n)
    g2 = float(gain) ** 2
    r = min(1.0, n / m)
    return Moments(g2 * r, g2**2 * r, m / n)


def orthogonal_conv(c: int, k: int, gain: float = 1.0, dims: int = 2) -> Moments:
    """Stride-1 convolution, c channels in and out, whose flattened kernel
    :math:`W=[W_1\\cdots W_K]\\in\\mathbb R^{c\\times cK}` (K = k^dims taps) has Haar orthonormal
    rows times g (``torch.nn.init.orthogonal_`` on the kernel), circular padding, large c.

    Our derivation: in Fourier space the Jacobian at frequency ω is :math:`WU_\\omega` with
    :math:`U_\\omega^*U_\\omega=KI`, so :math:`\\hat J\\hat J^*=K\\,WP_\\omega W^*` with
    :math:`P_\\omega` a projection of trace ratio 1/K that is free of :math:`W^\\top W=g^2P_W`
    (also of ratio 1/K). For free projections with traces a, b,
    :math:`\\tau(PQPQ)=a^2b+ab^2-a^2b^2`, which gives :math:`\\phi_1=g^2` and
    :math:`\\phi_2=g^4(2-1/K)`: relative variance :math:`1-1/K` (8/9 for 3×3), against
    :math:`(cK+1)/(cK)\\approx1` for an i.i.d. kernel (:func:`conv`) and 0 for a
    delta-orthogonal one. Finite c adds corrections of order 1/c, which this large-c entry omits."""
    c, k = check_positive_int("c", c), check_positive_int("k", k)
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    taps = k**dims
    g2 = float(gain) ** 2
    return Moments(g2, g2**2 * (2 - 1 / taps))


def delta_orthogonal(c_in: int, c_out: int, gain: float = 1.0) -> Moments:
    """Delta-orthogonal conv kernel (only the centre tap, an orthogonal c_out×c_in matrix times g):
    the Jacobian is that matrix at every pixel, so the moments are :func:`orthogonal`'s."""
    return orthogonal(c_out, c_in, gain)


# ---------------------------------------------------------------- normalisation
def batch_norm(M: int, batch_var: float = 1.0, gamma: float = 1.0, eps: float = 0.0) -> Moments:
    """Batch norm in training mode for one channel of M values with biased batch variance v:
    :math:`J=\\tfrac{\\gamma}{\\tilde\\sigma}(I-\\tfrac1M\\mathbf 1\\mathbf 1^\\top-\\tfrac{v}{\\tilde\\sigma^2}uu^\\top)`,
    :math:`\\tilde\\sigma^2=v+\\epsilon`, u the unit standardised input. Exactly: eigenvalues of
    :math:`JJ^\\top` are :math:`c=\\gamma^2/\\tilde\\sigma^2` (M − 2 times), :math:`c(\\epsilon/\\tilde\\sigma^2)^2`
    and 0; at ε = 0 a scaled rank-(M−2) projection (our derivation)."""
    M = check_positive_int("M", M, 3)
    v = check_positive("batch_var", batch_var)
    eps = float(eps)
    c = float(gamma) ** 2 / (v + eps)
    r = (eps / (v + eps)) ** 2
    return Moments(c * (M - 2 + r) / M, c**2 * (M - 2 + r**2) / M)


def second_moment_norm(M: int, mean_square: float = 1.0, gamma: float = 1.0,
                       eps: float = 0.0) -> Moments:
    """Second moment normalisation :math:`y=\\gamma x/(s+\\epsilon)`, :math:`s^2=\\tfrac1M\\sum x^2`,
    one channel of M values: :math:`J=a(I-\\tfrac{s}{s+\\epsilon}uu^\\top)`, :math:`a=\\gamma/(s+\\epsilon)`,
    so eigenvalues of :math:`JJ^\\top` are a² (M − 1 times) and :math:`a^2(\\epsilon/(s+\\epsilon))^2`;
    at ε = 0 a scaled rank-(M−1) projection (our derivation)."""
    M = check_positive_int("M", M, 2)
    s = math.sqrt(check_positive("mean_square", mean_square))
    eps = float(eps)
    a2 = float(gamma) ** 2 / (s + eps) ** 2
    r = (eps / (s + eps)) ** 2
    return Moments(a2 * (M - 1 + r) / M, a2**2 * (M - 1 + r**2) / M)


def l1_moment_norm(M: int, mean_abs: float = math.sqrt(2 / math.pi), rms: float = 1.0,
                   gamma: float = 1.0) -> Moments:
    """L1 moment norm :math:`y=\\gamma x/\\mu_1`, :math:`\\mu_1=\\tfrac1M\\sum|x|`, one channel:
    :math:`J=\\tfrac{\\gamma}{\\mu_1}P`, :math:`P=I-x\\,\\mathrm{sign}(x)^\\top/(M\\mu_1)` an oblique
    projection; :math:`PP^\\top` has eigenvalues 1 (M − 2 times), 0 and
    :math:`\\kappa=\\mathrm{rms}^2/\\mu_1^2` (π/2 for zero-mean Gaussian x), so
    :math:`\\phi_1=\\tfrac{\\gamma^2}{\\mu_1^2}\\tfrac{M-2+\\kappa}{M}` (our derivation)."""
    M = check_positive_int("M", M, 3)
    m1 = check_positive("mean_abs", mean_abs)
    kappa = (check_positive("rms", rms) / m1) ** 2
    c = float(gamma) ** 2 / m1**2
    return Moments(c * (M - 2 + kappa) / M, c**2 * (M - 2 + kappa**2) / M)


def weight_norm(m: int, n: int, g: float = 1.0) -> Moments:
    """Weight normalisation :math:`w_i=g\\,v_i/\\|v_i\\|` of an m×n layer with Gaussian v: rows
    uniform on the sphere of radius g, :math:`\\mathbb E(u_i\\cdot u_j)^2=1/n`, so
    :math:`\\phi_1=g^2`, :math:`\\phi_2=g^4(1+(m-1)/n)` (our derivation)."""
    m, n = check_positive_int("m", m), check_positive_int("n", n)
    g2 = float(g) ** 2
    return Moments(g2, g2**2 * (1 + (m - 1) / n), m / n)


def scaled_weight_standardization(m: int, n: int, gain2: float = 2.0) -> Moments:
    """Scaled weight standardisation (sWS) :math:`\\hat w_i=\\sqrt{\\gamma_0}(w_i-\\bar w_i)/\\|w_i-\\bar w_i\\|`
    of an m×n layer (γ₀ = ``gain2`` = 2 for ReLU): rows uniform on the radius-√γ₀ sphere of the
    (n − 1)-dimensional subspace orthogonal to 1, so :math:`\\phi_1=\\gamma_0` for any raw weight
    scale and :math:`\\phi_2=\\gamma_0^2(1+(m-1)/(n-1))` (our derivation)."""
    m, n = check_positive_int("m", m), check_positive_int("n", n, 2)
    g0 = check_positive("gain2", gain2)
    return Moments(g0, g0**2 * (1 + (m - 1) / (n - 1)), m / n)


def dropout(keep: float) -> Moments:
    """Inverted dropout with keep probability q: :math:`D_{ii}\\in\\{0,1/q\\}`, so
    :math:`\\phi_1=1/q`, :math:`\\phi_2=1/q^3` and :math:`\\varphi=(1-q)/q^3` (our derivation)."""
    q = _check_p(keep, "keep")
    return Moments(1 / q, 1 / q**3)


def avg_pool(k: int, dims: int = 2) -> Moments:
    """Average pooling with window k (k×k for ``dims`` = 2) and stride k: disjoint rows of
    :math:`k^d` entries :math:`1/k^d`, so :math:`JJ^\\top=k^{-d}I`."""
    k = check_positive_int("k", k)
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    r = 1.0 / k**dims
    return Moments(r, r * r, r)


def residual(branch: Moments) -> Moments:
    """Residual block :math:`x+F(x)`: :func:`parallel` of the identity and a centred branch,
    :math:`\\phi_1=1+\\phi_F`, :math:`\\varphi=\\varphi_F+2\\phi_F` (addition theorem)."""
    if branch.aspect != 1.0:
        raise ValueError("branch must be square (aspect 1) for x + F(x)")
    return parallel(identity(), branch)


def concatenation(c: int, k: int, branch: Moments) -> Moments:
    """DenseNet concatenation :math:`[x;F(x)]` with c input and k new channels: exactly
    :math:`\\operatorname{Tr}(JJ^\\top)=c+k\\phi_F`, :math:`\\operatorname{Tr}((JJ^\\top)^2)=
    \\operatorname{Tr}((I+J_F^\\top J_F)^2)=c+2k\\phi_F+k\\phi_{2,F}`, divided by c + k rows
    (our derivation; ``branch`` is F's moments, normalised by its k rows)."""
    c, k = check_positive_int("c", c), check_positive_int("k", k)
    n = c + k
    return Moments((c + k * branch.phi1) / n, (c + 2 * k * branch.phi1 + k * branch.phi2) / n,
                   n / c)


#: The component table of the chapter: name -> (φ formula, ϕ formula, example setting, Moments).
COMPONENTS = {
    "ReLU, P(h>0)=p": ("p", "p − p²", "p = ½", relu(0.5)),
    "leaky ReLU, slope γ": ("p + γ²(1−p)", "p(1−p)(1−γ²)²", "γ = 0.3, p = ½", leaky_relu(0.3)),
    "PReLU, slope a": ("p + a²(1−p)", "p(1−p)(1−a²)²", "a = 0.25, p = ½", prelu(0.25)),
    "sPReLU, slope a": ("(p + a²(1−p))/(1+a²)", "p(1−p)(1−a²)²/(1+a²)²", "a = 0.25, p = ½",
                        sprelu(0.25)),
    "tanh, h ~ N(0, q)": ("E[(1−tanh²h)²]", "E[(1−tanh²h)⁴] − φ²", "q = 1", tanh(1.0)),
    "sigmoid, h ~ N(0, q)": ("E[σ'(h)²]", "E[σ'(h)⁴] − φ²", "q = 1", sigmoid(1.0)),
    "SeLU(λ, α), h ~ N(0, q)": ("λ²(½ + α²e^{2q}Φ(−2√q))", "λ⁴(½ + α⁴e^{8q}Φ(−4√q)) − φ²",
                                "standard λ, α; q = 1", selu()),
    "dense m×n, N(0, σ²)": ("nσ²", "n(m+1)σ⁴", "m = n = 256, σ² = 1/n", dense(256, 256, 1 / 256)),
    "conv, i.i.d. k×k kernel": ("c_in k² σ²", "c_in k²(c_out k²+1)σ⁴",
                                "c_in = c_out = 16, k = 3, σ² = 1/(9·16)", conv(16, 16, 3, 1 / 144)),
    "orthogonal, gain g": ("g²", "0", "g = 1", orthogonal(256, 256)),
    "orthogonal m×n, m > n (tall)": ("g²n/m", "g⁴(n/m)(1 − n/m)", "m = 512, n = 256, g = 1",
                                     orthogonal(512, 256)),
    "orthogonal conv kernel, K taps (large c)": ("g²", "g⁴(1 − 1/K)", "k = 3 (K = 9), g = 1",
                                                 orthogonal_conv(16, 3)),
    "delta-orthogonal conv, gain g": ("g²", "0", "g = 1", delta_orthogonal(16, 16)),
    "BN (train), M values": ("(γ²/σ²)(M−2)/M", "(γ⁴/σ⁴)(M−2)/M · 2/M", "M = 512, γ = σ = 1",
                             batch_norm(512)),
    "SMN, M values": ("(γ²/E x²)(M−1)/M", "(γ⁴/(E x²)²)(M−1)/M · 1/M", "M = 512, γ = E x² = 1",
                      second_moment_norm(512)),
    "L1 moment norm, M values": ("(γ²/μ₁²)(M−2+κ)/M", "(γ⁴/μ₁⁴)(M−2+κ²)/M − φ²",
                                 "M = 512, Gaussian x (κ = π/2)", l1_moment_norm(512)),
    "weight norm, gain g": ("g²", "g⁴(m−1)/n", "m = n = 256, g = 1", weight_norm(256, 256)),
    "sWS, gain² γ₀": ("γ₀", "γ₀²(m−1)/(n−1)", "m = n = 256, γ₀ = 2",
                      scaled_weight_standardization(256, 256)),
    "dropout, keep q": ("1/q", "(1−q)/q³", "q = 0.9", dropout(0.9)),
    "average pool k×k": ("1/k²", "0", "k = 2", avg_pool(2)),
    "residual x + F(x)": ("1 + φ_F", "ϕ_F + 2φ_F", "F dense, m = n = 256, σ² = 1/n",
                          residual(dense(256, 256, 1 / 256))),
    "concatenation [x; F(x)]": ("(c + kφ_F)/(c+k)", "(c + 2kφ_F + kφ₂_F)/(c+k) − φ²",
                                "c = 64, k = 16, F dense σ² = 1/64",
                                concatenation(64, 16, dense(16, 64, 1 / 64))),
}
