"""Training-data augmentation: random integer translations of image batches.

With few training images a Lipschitz-bounded network fits robust margins on the training set
that do not carry over to new points (on 13,000 MNIST images a 4C3F reached VRA 0.47 on
training points and 0.19 on test points at l2 1.58). Shifting each image by a few pixels, with
zero fill, is the standard remedy; it changes the training data only, never what is certified.
"""

from __future__ import annotations

import torch

from verispec.errors import UnsupportedError


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image (n, c, h, w) moved by its own (dy, dx), uniform in [-max_shift, max_shift]^2,
    with zeros shifted in. Draws 2n integers from ``generator`` (on the CPU, so runs repeat)."""
    if max_shift == 0:
        return images
    if images.dim() != 4:
        raise UnsupportedError(
            f"shift augmentation needs image batches (n, c, h, w), got shape "
            f"{tuple(images.shape)}; train without --shift or give image inputs"
        )
    n, _, h, w = images.shape
    if max_shift < 0 or max_shift >= min(h, w):
        raise UnsupportedError(
            f"shift {max_shift} must lie in [0, {min(h, w) - 1}] for {h}x{w} images"
        )
    s = max_shift
    shifts = torch.randint(-s, s + 1, (n, 2), generator=generator).to(images.device)
    padded = torch.nn.functional.pad(images, (s, s, s, s))
    rows = torch.arange(h, device=images.device)[None, :] + s - shifts[:, :1]  # (n, h)
    cols = torch.arange(w, device=images.device)[None, :] + s - shifts[:, 1:]  # (n, w)
    picked = padded.gather(2, rows[:, None, :, None].expand(n, images.shape[1], h, w + 2 * s))
    return picked.gather(3, cols[:, None, None, :].expand(n, images.shape[1], h, w))
