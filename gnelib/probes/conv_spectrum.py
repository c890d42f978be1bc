"""Exact spectral moments of a circular convolution's Jacobian, by the discrete Fourier
transform: a stride-1 convolution with circular padding on an N×N (or length-N) grid is block
diagonalised by the DFT, with the c_out×c_in block :math:`\\hat J(\\omega)=\\sum_sW_se^{-i\\omega\\cdot s}`
at each of the N^d frequencies, so :math:`\\operatorname{Tr}(JJ^\\top)^k=\\sum_\\omega
\\operatorname{Tr}(\\hat J\\hat J^*)^k` exactly."""
from __future__ import annotations

import torch

__all__ = ["circular_conv_moments"]


def circular_conv_moments(weight: torch.Tensor, grid: int) -> tuple[float, float]:
    """Exact :math:`(\\phi(JJ^\\top),\\ \\phi((JJ^\\top)^2))`, normalised by the c_out·N^d rows, of
    the Jacobian of the stride-1 circular convolution with kernel ``weight`` (c_out, c_in, k)
    or (c_out, c_in, k, k) on a grid of side ``grid`` (≥ k).

    Used in: bdi, §"The conv entries, exactly"."""
    if weight.ndim not in (3, 4):
        raise ValueError(f"weight must be (c_out, c_in, k) or (c_out, c_in, k, k), got {tuple(weight.shape)}")
    dims = weight.ndim - 2
    if any(k > grid for k in weight.shape[2:]):
        raise ValueError(f"grid {grid} is smaller than the kernel {tuple(weight.shape[2:])}")
    c_out, c_in = weight.shape[:2]
    ker = torch.zeros((c_out, c_in) + (grid,) * dims, dtype=torch.complex128)
    ker[(slice(None), slice(None)) + tuple(slice(0, k) for k in weight.shape[2:])] = \
        weight.detach().to(torch.complex128)
    spec = torch.fft.fftn(ker, dim=tuple(range(2, 2 + dims)))
    j = spec.reshape(c_out, c_in, -1).permute(2, 0, 1)  # (frequencies, c_out, c_in)
    a = j @ j.conj().transpose(1, 2)
    rows = c_out * grid**dims
    phi1 = torch.diagonal(a, dim1=1, dim2=2).real.sum().item() / rows
    phi2 = (a.abs() ** 2).sum().item() / rows
    return phi1, phi2
