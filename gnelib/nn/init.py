"""Weight initialisations by name, built on ``torch.nn.init``."""
from __future__ import annotations

import math

import torch
from torch import nn

from gnelib.base.errors import check_choice

__all__ = ["INITS", "init_weight_"]

#: Initialisation schemes :func:`init_weight_` knows.
INITS = ("xavier", "he", "orthogonal", "gaussian")


def init_weight_(weight: torch.Tensor, scheme: str, gain: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Initialise ``weight`` (out × in [× kernel]) in place.

    - ``xavier``: :math:`\\mathcal N(0, 2 g^2/(n_\\text{in}+n_\\text{out}))` (Glorot & Bengio 2010), g = 1 by default;
    - ``he``: :math:`\\mathcal N(0, 2 g^2/n_\\text{in})` (He et al. 2015), g = 1 by default;
    - ``orthogonal``: a Haar-random (semi-)orthogonal matrix times g (Saxe et al. 2014), g = 1 by default;
    - ``gaussian``: :math:`\\mathcal N(0, g^2/n_\\text{in})`, g = 1 by default.
    """
    check_choice("init", scheme, INITS)
    g = 1.0 if gain is None else float(gain)
    with torch.no_grad():
        if scheme == "xavier":
            return nn.init.xavier_normal_(weight, gain=g, generator=generator)
        if scheme == "he":
            nn.init.kaiming_normal_(weight, nonlinearity="relu", generator=generator)
            return weight.mul_(g)
        if scheme == "orthogonal":
            return nn.init.orthogonal_(weight, gain=g, generator=generator)
        fan_in = weight[0].numel()
        return nn.init.normal_(weight, 0.0, g / math.sqrt(fan_in), generator=generator)
