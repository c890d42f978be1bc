"""Models shared by the chapters: a deep MLP made of probe-able blocks."""
from __future__ import annotations

from torch import nn

from gnelib.base.errors import check_choice, check_positive_int
from gnelib.nn.init import init_weight_

__all__ = ["ACTIVATIONS", "make_activation", "Block", "MLP"]

#: Activations by name.
ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "selu": nn.SELU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


class Block(nn.Sequential):
    """One block of an MLP: ``Linear`` followed by the activation: its Jacobian is
    :math:`J = D W`, the unit the book's per-block moments are measured on."""

    def __init__(self, n_in: int, n_out: int, activation: str = "relu", bias: bool = False):
        super().__init__(nn.Linear(n_in, n_out, bias=bias), make_activation(activation))


class MLP(nn.Module):
    """``depth`` blocks of width ``width`` and a linear read-out.

    Weights are initialised with :func:`~gnelib.nn.init.init_weight_` (``init``, ``gain``);
    biases (if any) start at zero. ``model.blocks[i]`` is the i-th block, for probes.
    """

    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int,
                 activation: str = "relu", init: str = "he", gain: float | None = None,
                 bias: bool = False, generator=None):
        super().__init__()
        check_positive_int("depth", depth)
        check_positive_int("width", width)
        check_positive_int("in_dim", in_dim)
        check_positive_int("out_dim", out_dim)
        check_choice("activation", activation, ACTIVATIONS)
        dims = [in_dim] + [width] * depth
        self.blocks = nn.ModuleList(Block(a, b, activation, bias) for a, b in zip(dims, dims[1:]))
        self.head = nn.Linear(width, out_dim, bias=bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                init_weight_(m.weight, init, gain=gain, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)
