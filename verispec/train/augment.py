"""Training-data augmentation: random integer translations of image batches.

Shifting each image by a few pixels, with zero fill, changes the training data only, never what
is certified. It is off by default: on the MNIST protocol (docs/benchmarks.md) the 4C3F model
underfits the robust objective, and shifts there raised clean accuracy but lowered VRA.
"""

from __future__ import annotations

import torch

from verispec.errors import UnsupportedError


def check_shift(max_shift: int, input_shape: tuple[int, ...]) -> None:
    """Raise UnsupportedError unless ``max_shift`` pixels can shift inputs of ``input_shape``."""
    if len(input_shape) != 3:
        raise UnsupportedError(
            f"shift augmentation needs image inputs (c, h, w), got {input_shape}; "
            "train without --shift or give image inputs"
        )
    h, w = input_shape[1:]
    if max_shift < 0 or max_shift >= min(h, w):
        raise UnsupportedError(
            f"shift {max_shift} must lie in [0, {min(h, w) - 1}] for {h}x{w} images"
        )


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image (n, c, h, w) moved by its own (dy, dx), uniform in [-max_shift, max_shift]^2,
    with zeros shifted in. Draws 2n integers from ``generator`` (on the CPU, so runs repeat)."""
    if max_shift == 0:
        return images
    check_shift(max_shift, tuple(images.shape[1:]))
    n, _, h, w = images.shape
    s = max_shift
    shifts = torch.randint(-s, s + 1, (n, 2), generator=generator).to(images.device)
    padded = torch.nn.functional.pad(images, (s, s, s, s))
    rows = torch.arange(h, device=images.device)[None, :] + s - shifts[:, :1]  # (n, h)
    cols = torch.arange(w, device=images.device)[None, :] + s - shifts[:, 1:]  # (n, w)
    picked = padded.gather(2, rows[:, None, :, None].expand(n, images.shape[1], h, w + 2 * s))
    return picked.gather(3, cols[:, None, None, :].expand(n, images.shape[1], h, w))
