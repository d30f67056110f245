"""Layers for certifiably robust training. Each states its exact IR (``verispec_layers``), so the
Lipschitz engine bounds the function actually computed, never a claimed constant.

- ``LiResBlock``: the linear residual block of LiResNet (Hu et al., 2023), x + alpha conv(x)
  with the skip added *before* the activation; its IR is one convolution whose kernel is
  alpha K plus the identity at the centre tap, bounded as one operator.
- ``CholeskyDense``: W = L^-1 V with L = chol(V V^T + delta I) (Hu et al., 2024), so
  W W^T = I - delta L^-1 L^-T and ||W||_2 <= 1 by construction; the engine still computes
  the bound from the weights.
- ``RowNormDense``: last-layer row normalisation, W_i = V_i / ||V_i||_2.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from verispec.network import Conv2d, Dense, Layer


def _np(t: torch.Tensor) -> np.ndarray:
    return np.asarray(t.detach().cpu().to(torch.float64).numpy())


def orthogonal_init(module: nn.Module) -> nn.Module:
    """Orthogonal weights and zero biases for every Linear / Conv2d inside ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class LiResBlock(nn.Module):
    """y = x + alpha * conv(x); conv is C -> C, odd kernel, stride 1, 'same' zero padding."""

    def __init__(self, channels: int, kernel: int = 3, alpha: float = 1.0) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"LiResBlock needs an odd kernel, got {kernel}")
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)
        nn.init.orthogonal_(self.conv.weight)
        with torch.no_grad():
            self.conv.weight.mul_(0.1)
            if self.conv.bias is not None:
                self.conv.bias.zero_()
        self.alpha = float(alpha)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kernel, bias) of the single convolution equal to the block."""
        w = self.alpha * self.conv.weight
        k = w.shape[-1] // 2
        eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        w = w + nn.functional.pad(eye[:, :, None, None], (k, k, k, k))
        bias = (
            self.alpha * self.conv.bias if self.conv.bias is not None else torch.zeros(w.shape[0])
        )
        return w, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.conv(x)

    def verispec_layers(self) -> list[Layer]:
        w, b = self.folded()
        return [Conv2d(_np(w), _np(b), (1, 1), self.conv.padding)]


class CholeskyDense(nn.Module):
    """A square dense layer orthogonalised by a Cholesky factorisation (spectral norm <= 1)."""

    def __init__(self, features: int, delta: float = 1e-5) -> None:
        super().__init__()
        self.V = nn.Parameter(torch.empty(features, features))
        nn.init.orthogonal_(self.V)
        self.bias = nn.Parameter(torch.zeros(features))
        self.delta = delta

    def weight(self) -> torch.Tensor:
        v = self.V
        gram = v @ v.T + self.delta * torch.eye(v.shape[0], dtype=v.dtype, device=v.device)
        chol = torch.linalg.cholesky(gram)
        return torch.linalg.solve_triangular(chol, v, upper=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(), self.bias)

    def verispec_layers(self) -> list[Layer]:
        return [Dense(_np(self.weight()), _np(self.bias))]


class RowNormDense(nn.Module):
    """A dense layer whose rows are normalised to unit l2 norm (the GloRo last layer)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.V = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.orthogonal_(self.V)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def weight(self) -> torch.Tensor:
        return self.V / self.V.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(), self.bias)

    def verispec_layers(self) -> list[Layer]:
        return [Dense(_np(self.weight()), _np(self.bias))]
