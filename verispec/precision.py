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
from typing import Any

import torch

KNOBS = (
    "",
    "cuda.matmul",
    "cudnn",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)
"""The owners of torch's ``fp32_precision`` flags (torch >= 2.9), under ``torch.backends``
("" is the global one). Older torch has only the legacy flags (``allow_tf32``,
``set_float32_matmul_precision``); torch 2.9+ raises when code *reads* a legacy flag after the
two APIs were mixed, so where the new one exists only it is used."""


def _owner(path: str) -> Any:
    owner: Any = torch.backends
    for part in filter(None, path.split(".")):
        owner = getattr(owner, part, None)
    return owner


def _knobs() -> dict[str, Any]:
    """The new-API flag owners this torch has, by path (empty on torch < 2.9)."""
    out = {}
    for path in KNOBS:
        owner = _owner(path)
        try:
            _ = owner.fp32_precision
        except (AttributeError, RuntimeError):
            continue
        out[path] = owner
    return out


def float32_matmul_arithmetic() -> str:
    """What float32 matmuls may use now: "ieee", "tf32" or "bf16" (the least precise allowed
    by any flag; an unreadable mix of the legacy and new flags counts as "bf16")."""
    knobs = _knobs()
    if knobs:
        values = {
            str(knobs[p].fp32_precision) for p in ("", "cuda.matmul", "mkldnn.matmul") if p in knobs
        }
    else:
        try:
            legacy = torch.get_float32_matmul_precision()
            tf32 = bool(torch.backends.cuda.matmul.allow_tf32)
        except RuntimeError:
            return "bf16"
        values = {"bf16" if legacy == "medium" else "tf32" if legacy == "high" or tf32 else "ieee"}
    for worst in ("bf16", "tf32"):
        if worst in values:
            return worst
    return "ieee"


@contextmanager
def certified_arithmetic() -> Iterator[None]:
    """IEEE float32 / float64 matmuls and GEMM-based convolutions inside the block."""
    cudnn = torch.backends.cudnn
    knobs = _knobs()
    saved_cudnn = cudnn.enabled
    if knobs:
        saved = {path: owner.fp32_precision for path, owner in knobs.items()}
        try:
            for owner in knobs.values():
                owner.fp32_precision = "ieee"
            cudnn.enabled = False
            yield
        finally:
            cudnn.enabled = saved_cudnn
            for path, owner in knobs.items():
                owner.fp32_precision = saved[path]
        return
    legacy = (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        cudnn.allow_tf32,
    )
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        cudnn.allow_tf32 = False
        cudnn.enabled = False
        yield
    finally:
        cudnn.enabled = saved_cudnn
        torch.set_float32_matmul_precision(legacy[0])
        torch.backends.cuda.matmul.allow_tf32 = legacy[1]
        cudnn.allow_tf32 = legacy[2]


def arithmetic_flags() -> dict[str, object]:
    """The flags ``certified_arithmetic`` pins, as they are now (for tests and reports)."""
    flags: dict[str, object] = {"cudnn_enabled": torch.backends.cudnn.enabled}
    knobs = _knobs()
    if knobs:
        flags.update(
            {f"fp32_precision[{p or 'global'}]": o.fp32_precision for p, o in knobs.items()}
        )
    else:
        flags["float32_matmul_precision"] = torch.get_float32_matmul_precision()
        flags["cuda_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
        flags["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    flags["float32_matmuls"] = float32_matmul_arithmetic()
    return flags
