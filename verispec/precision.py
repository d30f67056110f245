"""The arithmetic of a pass a certificate depends on: IEEE float32 / float64 kernels only.

The rounding-error analysis (``verispec/engines/roundoff.py``, ``verispec/float_error.py``)
covers sums of products evaluated in *some order*: direct loops, blocked and split-K GEMMs,
FMA. It does not cover reduced-precision multiplies (TF32 keeps 10 mantissa bits; float32
matmul precision "high" or "medium" uses TF32 or bfloat16) nor convolutions computed through
transforms (Winograd, FFT), whose error is relative to the transformed values, not to
|W| |h| per output. ``certified_arithmetic()`` pins, for the duration of the pass:

- float32 matmul precision "highest" and TF32 off for cuBLAS matmuls;
- cuDNN off: on CUDA torch then convolves with its native kernels, im2col followed by a GEMM,
  a sum of products in some order. cuDNN's algorithm choice (Winograd, FFT,
  implicit-GEMM variants, chosen by heuristics or ``benchmark`` mode) is not under our
  control, so it is not used for a certified pass;
- oneDNN (mkldnn), torch's CPU convolution, stays on: torch asks it for the direct algorithm
  (``ideep::algorithm::convolution_direct`` in ATen's mkldnn convolution), never Winograd.
  Turning it off costs 1.35x on a 4C3F Lipschitz check and changes nothing in the analysis.

Every flag is restored on exit. The flags are process-wide in torch: a certified pass and an
uncertified one must not run concurrently in two threads of one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def certified_arithmetic() -> Iterator[None]:
    """IEEE float32 / float64 matmuls and GEMM-based convolutions inside the block."""
    backends = torch.backends
    saved = (
        torch.get_float32_matmul_precision(),
        backends.cuda.matmul.allow_tf32,
        backends.cudnn.enabled,
        backends.cudnn.allow_tf32,
    )
    try:
        torch.set_float32_matmul_precision("highest")
        backends.cuda.matmul.allow_tf32 = False
        backends.cudnn.enabled = False
        backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        backends.cuda.matmul.allow_tf32 = saved[1]
        backends.cudnn.enabled = saved[2]
        backends.cudnn.allow_tf32 = saved[3]


def arithmetic_flags() -> dict[str, object]:
    """The flags ``certified_arithmetic`` pins, as they are now (for tests and reports)."""
    backends = torch.backends
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": backends.cuda.matmul.allow_tf32,
        "cudnn_enabled": backends.cudnn.enabled,
        "cudnn_allow_tf32": backends.cudnn.allow_tf32,
    }
