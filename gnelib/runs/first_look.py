"""The first chapter's registered experiments ("Gradient norm equality, a first look"):
``gradient_norms_at_init`` (gradient norms and per-block φ of a deep ReLU MLP at
initialisation) and ``train_mlp`` (SGD training of an MLP, divergence recorded). Their
per-profile sizes below are the only source of the chapter's sizes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gnelib.nn.mlp import ACTIVATIONS
from gnelib.runs.registry import Config, param, register

__all__ = ["GradientNormsConfig", "TrainMLPConfig", "gradient_norms_at_init", "train_mlp", "MLP_INITS",
           "TRAIN_DATASETS"]

# --------------------------------------------------------------------------------------
# The first chapter's experiments
# --------------------------------------------------------------------------------------

MLP_INITS = ("xavier", "he", "orthogonal")


@dataclass(frozen=True)
class GradientNormsConfig(Config):
    """A deep ReLU MLP at initialisation, probed on one random batch."""

    init: str = param("he", choices=MLP_INITS)
    gain: float = param(0.0, minimum=0.0, doc="full gain g of the init (0: the scheme's default, √2 for he)")
    width: int = param(256, positive=True)
    depth: int = param(32, positive=True)
    in_dim: int = param(40, positive=True)
    classes: int = param(10, minimum=2)
    batch: int = param(32, positive=True)
    probes: int = param(32, minimum=2)
    seed: int = param(0, minimum=0)


def _summary_gradient_norms(result: dict) -> dict:
    g = result["grad_sq_norms"]
    return {"phi_mean": sum(result["phi"]) / len(result["phi"]),
            "grad_first/last": g[0] / g[-2] if g[-2] > 0 else float("inf"),
            "end_to_end_phi": result["end_to_end_phi"]}


def _mlp_params(in_dim: int, width: int, depth: int, classes: int) -> int:
    return in_dim * width + (depth - 1) * width * width + width * classes + depth * width + classes


def _memory_gradient_norms(c: GradientNormsConfig) -> int:
    """float64: the weights and their gradients, the forward activations, and the probes'
    vmapped Jacobian products through the whole stack (``probes`` copies of it)."""
    params = _mlp_params(c.in_dim, c.width, c.depth, c.classes)
    return 8 * (3 * params + c.batch * c.width * c.depth * (4 + 4 * c.probes))


@register("gradient_norms_at_init", GradientNormsConfig,
          profiles={"smoke": dict(width=128, in_dim=128, depth=16, batch=32, probes=16),
                    "book": dict(width=512, in_dim=512, depth=48, batch=64, probes=32),
                    "full": dict(width=1024, in_dim=1024, depth=200, batch=128, probes=64)},
          summary=_summary_gradient_norms, memory=_memory_gradient_norms)
def gradient_norms_at_init(config: GradientNormsConfig, device="cpu") -> dict:
    """Per-layer squared weight-gradient norms and per-block φ(JJᵀ) of a deep ReLU MLP at
    initialisation (Chen et al. 2020, Definition 3.1 and the multiplication theorem).

    The MLP (``~gnelib.nn.mlp.MLP``, float64) sees a batch of standard Gaussian inputs with uniform
    random labels; the gradient of the mean cross-entropy gives ``grad_sq_norms``
    (:func:`~gnelib.probes.jacobian.gradient_norms`, every weight tensor including the read-out) and
    ``activation_grad_sq_norms`` (:func:`~gnelib.probes.jacobian.activation_gradient_norms`, at the input
    and every block output), and each
    block ``Linear→ReLU`` is probed at its own input with :func:`~gnelib.probes.jacobian.jacobian_moments`
    (φ, φ((JJᵀ)²) and their standard errors). ``end_to_end_phi`` is φ(JJᵀ) of the whole
    stack of blocks, to compare with the product of the per-block values.
    """
    from gnelib.nn.mlp import MLP
    from gnelib.probes.jacobian import activation_gradient_norms, gradient_norms, jacobian_moments

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(config.seed)
    model = MLP(config.in_dim, config.width, config.depth, config.classes, activation="relu",
                init=config.init, gain=config.gain or None, generator=gen).double().to(dev)
    x = torch.randn(config.batch, config.in_dim, generator=gen, dtype=torch.float64).to(dev)
    y = torch.randint(config.classes, (config.batch,), generator=gen).to(dev)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    norms = gradient_norms(model, loss)
    act = activation_gradient_norms(model.blocks, model.head, x, y)
    inputs, h = [], x
    with torch.no_grad():
        for block in model.blocks:
            inputs.append(h)
            h = block(h)
    moments = [jacobian_moments(b, hin, probes=config.probes, generator=gen)
               for b, hin in zip(model.blocks, inputs)]

    def trunk(t):
        for b in model.blocks:
            t = b(t)
        return t

    e2e = jacobian_moments(trunk, x, probes=config.probes, generator=gen)
    return {
        "layers": list(norms), "grad_sq_norms": list(norms.values()),
        "activation_grad_sq_norms": act,
        "phi": [m.phi1 for m in moments], "phi_se": [m.phi1_se for m in moments],
        "phi2": [m.phi2 for m in moments], "phi2_se": [m.phi2_se for m in moments],
        "relative_variance": [m.relative_variance for m in moments],
        "end_to_end_phi": e2e.phi1, "end_to_end_phi_se": e2e.phi1_se,
        "loss": loss.item(),
    }


TRAIN_DATASETS = ("mnist1d", "gaussian_mixture")


@dataclass(frozen=True)
class TrainMLPConfig(Config):
    """SGD training of an MLP on MNIST-1D or a Gaussian mixture."""

    dataset: str = param("mnist1d", choices=TRAIN_DATASETS)
    init: str = param("he", choices=MLP_INITS)
    gain: float = param(0.0, minimum=0.0, doc="full gain g of the init (0: the scheme's default, √2 for he)")
    activation: str = param("relu", choices=tuple(ACTIVATIONS))
    width: int = param(128, positive=True)
    depth: int = param(8, positive=True)
    steps: int = param(500, positive=True)
    batch_size: int = param(64, positive=True)
    lr: float = param(0.05, positive=True)
    momentum: float = param(0.9, minimum=0.0)
    weight_decay: float = param(0.0, minimum=0.0)
    n_train: int = param(4000, positive=True)
    eval_every: int = param(100, positive=True)
    seed: int = param(0, minimum=0)

    def __post_init__(self):
        super().__post_init__()
        if not self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")


def _summary_train(result: dict) -> dict:
    return {"final_accuracy": result["final_accuracy"], "final_loss": result["final_loss"],
            "diverged_step": result["diverged_step"]}


def _memory_train(c: TrainMLPConfig) -> int:
    """float32: weights, gradients and momentum, the data set, and the activations of a
    training batch and of a 1000-example evaluation batch."""
    params = _mlp_params(40, c.width, c.depth, 10)
    return 4 * (4 * params + 2 * 64 * c.n_train + 4 * (c.batch_size + 1000) * c.width * c.depth)


@register("train_mlp", TrainMLPConfig,
          profiles={"smoke": dict(width=32, depth=4, steps=60, n_train=1000, eval_every=20),
                    "book": dict(width=128, depth=8, steps=500, n_train=4000, eval_every=100),
                    "full": dict(width=512, depth=32, steps=5000, n_train=4000, eval_every=500)},
          summary=_summary_train, memory=_memory_train)
def train_mlp(config: TrainMLPConfig, device="cpu", progress: bool = False) -> dict:
    """Train a ``~gnelib.nn.mlp.MLP`` with :func:`~gnelib.training.train` (SGD with momentum) and return the
    loss and test-accuracy history; divergence (a NaN/inf loss) is recorded, not raised."""
    from gnelib.data import gaussian_mixture, mnist1d
    from gnelib.nn.mlp import MLP
    from gnelib.training import train

    gen = torch.Generator().manual_seed(config.seed)
    if config.dataset == "mnist1d":
        data = mnist1d().subset(config.n_train)
    else:
        data = gaussian_mixture(n_train=config.n_train, generator=torch.Generator().manual_seed(1234))
    model = MLP(data.input_shape[0], config.width, config.depth, data.num_classes,
                activation=config.activation, init=config.init, gain=config.gain or None, generator=gen)
    hist = train(model, data, steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                 momentum=config.momentum, weight_decay=config.weight_decay, device=device,
                 generator=gen, eval_every=config.eval_every, progress=progress, desc="train_mlp")
    return {
        "step": hist.step, "loss": hist.loss, "eval_step": hist.eval_step,
        "test_accuracy": hist.test_accuracy, "test_loss": hist.test_loss,
        "diverged_step": hist.diverged_step, "last_finite_loss": hist.last_finite_loss,
        "final_accuracy": hist.final_accuracy if hist.test_accuracy else None,
        "final_loss": hist.loss[-1] if hist.loss else None,
    }
