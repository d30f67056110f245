"""Lipschitz constants during training: fast, differentiable, warm-started power iteration.

These are *estimates* (power iteration approaches the spectral norm from below), used only to
shape the training loss. Evaluation and saved models always use the sound bounds of
``verispec.engines.lipschitz`` on the exported IR; ``sound_constant`` gives that value so the
training loop can report the gap.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from verispec.engines.lipschitz import network_lipschitz
from verispec.errors import UnsupportedLayerError
from verispec.layers import GroupSort
from verispec.network import Network
from verispec.regions import Norm
from verispec.train.layers import CholeskyDense, LiResBlock, RowNormDense

LINEAR = (nn.Linear, nn.Conv2d, LiResBlock, CholeskyDense, RowNormDense)
ONE_LIPSCHITZ = (nn.ReLU, GroupSort, nn.Flatten, nn.Identity, nn.Dropout)


def flat_modules(model: nn.Module) -> list[nn.Module]:
    """The leaf modules of nested Sequentials, in order."""
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in flat_modules(child)]
    return [model]


def head_weight(module: nn.Module) -> torch.Tensor:
    """The (differentiable) weight matrix of a dense head module."""
    if isinstance(module, nn.Linear):
        return module.weight
    if isinstance(module, CholeskyDense | RowNormDense):
        return module.weight()
    raise UnsupportedLayerError(f"the last layer must be dense, got {type(module).__name__}")


def _operator(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The linear part (no bias) of a linear module, as a function of a batch."""
    if isinstance(module, nn.Linear):
        return lambda u: u @ module.weight.T
    if isinstance(module, CholeskyDense | RowNormDense):
        return lambda u: u @ module.weight().T
    if isinstance(module, nn.Conv2d):
        return lambda u: nn.functional.conv2d(u, module.weight, None, module.stride, module.padding)
    if isinstance(module, LiResBlock):
        return lambda u: (
            u
            + module.alpha
            * nn.functional.conv2d(u, module.conv.weight, None, 1, module.conv.padding)
        )
    raise UnsupportedLayerError(f"no Lipschitz estimate for {type(module).__name__}")


class PowerIteration:
    """Differentiable spectral-norm estimates of a model's body (all but the last linear layer),
    with persistent, warm-started singular vectors."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], warmup: int = 30) -> None:
        self.modules = flat_modules(model)
        for i, m in enumerate(self.modules):
            if not isinstance(m, LINEAR + ONE_LIPSCHITZ):
                raise UnsupportedLayerError(
                    f"layer {i} ({type(m).__name__}) has no training-time Lipschitz estimate"
                )
        linear_idx = [i for i, m in enumerate(self.modules) if isinstance(m, LINEAR)]
        if not linear_idx or linear_idx[-1] != len(self.modules) - 1:
            raise UnsupportedLayerError("the model must end with a dense layer")
        self.head = self.modules[-1]
        self.body = [self.modules[i] for i in linear_idx[:-1]]
        shapes = self._input_shapes(model, input_shape)
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(0)
        self.vectors = [
            torch.randn((1, *shapes[id(m)]), generator=gen).to(device) for m in self.body
        ]
        for _ in range(warmup):
            self._step()

    @staticmethod
    def _input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
        shapes: dict[int, tuple[int, ...]] = {}
        hooks = [
            m.register_forward_pre_hook(
                lambda mod, args: shapes.__setitem__(id(mod), tuple(args[0].shape[1:]))
            )
            for m in flat_modules(model)
        ]
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
        for h in hooks:
            h.remove()
        return shapes

    def _step(self) -> None:
        with torch.no_grad():
            for i, m in enumerate(self.body):
                op = _operator(m)
                u = self.vectors[i].detach().requires_grad_(True)
                with torch.enable_grad():
                    out = op(u)
                    (back,) = torch.autograd.grad(out, u, grad_outputs=out)
                self.vectors[i] = back / back.norm().clamp_min(1e-30)

    def body_constant(self, iterations: int = 1) -> torch.Tensor:
        """The product of per-layer estimates, differentiable w.r.t. the weights."""
        for _ in range(iterations):
            self._step()
        result = torch.ones((), device=self.vectors[0].device if self.vectors else None)
        for m, u in zip(self.body, self.vectors, strict=True):
            result = result * _operator(m)(u).norm() / u.norm()
        return result

    def normalise_body(self, iterations: int = 200) -> None:
        """Rescale every body layer to an estimated l2 operator norm of 1 (an initialisation).

        Orthogonal kernels give convolutions operator norms well above 1 (3 for a 3x3 kernel on
        one input channel), so a fresh 4C3F starts near K = 40 and the first epochs are spent
        shrinking it. Only a starting point: the loss and the sound bound see the real weights.
        """
        for _ in range(iterations):
            self._step()
        with torch.no_grad():
            for m, u in zip(self.body, self.vectors, strict=True):
                # LiResBlock (identity plus a small branch), CholeskyDense (<= 1 by construction)
                # and RowNormDense (scale-invariant) are left as they are
                if not isinstance(m, nn.Linear | nn.Conv2d):
                    continue
                scale = float(_operator(m)(u).norm() / u.norm())
                if scale > 0.0:
                    m.weight.div_(scale)

    def pairwise(self, body: torch.Tensor) -> torch.Tensor:
        """K (m, m): ||w_i - w_j||_2 * body, differentiable."""
        w = head_weight(self.head)
        return torch.cdist(w, w) * body


def sound_constant(model: nn.Module, input_shape: tuple[int, ...], norm: Norm = Norm.L2) -> float:
    """The engine's proven body constant K for the model's exported IR."""
    was_training = model.training
    model.eval()
    try:
        network = Network.from_torch(model, input_shape)
    finally:
        model.train(was_training)
    return network_lipschitz(network, norm).body
