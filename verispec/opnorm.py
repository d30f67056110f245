"""Proven upper bounds on operator norms of linear layers.

Every public ``*_bound`` function returns a float ``b`` with ``b >= ||op||`` for the stated operator
norm, where the inequality is a theorem in exact arithmetic and floating-point rounding is covered
by an explicit error budget (see "Rounding" below). Bounds are computed in float64 on the CPU.

Notation: ``u = 2**-53`` (unit roundoff), ``gamma(m) = m*u / (1 - m*u)``.

Dense layers (``dense_l2_bound``)
    ``sigma_max(W)**2 = lambda_max(G)`` with ``G`` the smaller Gram matrix (``W W^T`` or
    ``W^T W``, side ``r = min(out, in)``, inner dimension ``m = max(out, in)``). ``W`` is first
    scaled by a power of two (exact) so that ``max|W|`` lies in ``[1/2, 1)``. The computed Gram
    ``G~`` satisfies ``|G~ - G| <= gamma(m) |W||W|^T`` entrywise, so
    ``||G~ - G||_2 <= gamma(m) ||W||_F**2 <= gamma(m) r sigma_max**2``. A backward-stable symmetric
    eigensolver returns ``lambda~`` with ``|lambda~ - lambda_max(G~)| <= p(r) u ||G~||_2``; we take
    ``p(r) = 4 r**2`` (far above LAPACK's modest polynomial). Hence
    ``sigma_max**2 <= lambda~ / (1 - delta)`` with ``delta = gamma(m) r + p(r) u (1 + gamma(m) r)``,
    and this ``delta`` is applied explicitly (it is ~1e-10 for r, m ~ 1e3). For the largest
    singular value the Gram route is therefore as reliable as an SVD, and several times faster on
    wide matrices.

Convolutions, EXPLICIT
    The operator matrix is built by applying ``conv2d`` (float64) to the identity basis. Each entry
    is a single kernel weight or zero (a sum of one exact product ``w * 1.0`` and exact zeros), so
    the matrix is exact; its norm is bounded as for dense layers. Above ``_EXPLICIT_MAX_ENTRIES``
    the smaller Gram matrix is formed without the matrix, as ``conv^T(conv(e_i))`` (or
    ``conv(conv^T(e_i))``) on basis vectors: the inner factor is again exact and the outer one
    sums at most ``max(in, out)`` products per entry, so the dense error analysis applies.

Convolutions, AUTO
    EXPLICIT when ``in_dim * out_dim <= 4e6`` or the Gram route is cheap (``_explicit_cost``, e.g.
    a single input channel), else FFT.

Convolutions, FFT (circulant embedding + polyphase + Gram iteration)
    Work per axis (the 2-D operator is the tensor product of the per-axis index maps). Let the
    padded input be ``x_pad[t] = x[t - p]`` for ``t in [p, p + H)`` and 0 elsewhere; the output is
    ``y[i] = sum_a K[a] x_pad[s i + a]`` for ``i < Ho``; the read positions are ``t < R`` with
    ``R = s (Ho - 1) + k <= H + 2p``.

    1. Circulant embedding. Take ``N >= H + p`` with ``s | N``. Embed ``x`` at positions
       ``[p, p + H)`` of the cyclic group ``Z_N`` (``E``: injective coordinate map, an isometry) and
       let ``C_theta`` be the strided theta-circulant ``z[i] = sum_a K[a] phase(s i + a)
       x~[(s i + a) mod N]`` with ``phase(t) = exp(1j theta floor(t / N))``, ``i < N / s``. For a
       read position ``t < R`` outside ``[p, p + H)``: if ``t < p`` then ``t + N >= p + H``, and if
       ``t >= p + H`` then ``t - N < R - N <= p``; so ``(t mod N)`` is never a data position and
       every read equals ``x_pad[t]`` (``t < 2N``, and the phase only ever multiplies zeros).
       Output rows with ``s i >= N`` read only ``t >= N >= p + H`` (padding): they are zero rows.
       Hence ``conv = [P C_theta E; 0]`` with ``P`` the coordinate projection onto
       ``i < min(Ho, N / s)`` (a contraction), and ``||conv|| <= ||C_theta||`` (the complex norm
       of a real matrix equals its real norm).
    2. Twist. With ``D_in = diag(exp(1j theta t / N))``, ``D_out = diag(exp(1j theta s i / N))``
       (unitary), ``C_theta = D_out C D_in^{-1}`` where ``C`` is the ordinary strided circulant with
       kernel ``K[a] exp(1j theta a / N)``.
    3. Polyphase. Writing ``a = s a' + r`` and ``X_r[m] = x~[s m + r]`` (a permutation of the
       input), ``C`` becomes a stride-1 circulant on ``Z_M``, ``M = N / s``, with ``c_in s``
       input channels and kernel ``K'[(c, r), a'] = K[c, s a' + r]`` of length ``q = ceil(k / s)``
       (the phase ``exp(1j theta r / N)`` of each channel is a unitary diagonal and drops out).
    4. Fourier. The unitary DFT on ``Z_M`` block-diagonalises it; with both axes, ``||C_theta||``
       equals the maximum over ``w = ((2 pi k1 + theta1) / M1, (2 pi k2 + theta2) / M2)`` of
       ``sigma_max(B(w))``, ``B(w) = sum_{a', b'} K'[:, :, a', b'] exp(1j (a' w1 + b' w2))``, a
       ``c_out x (c_in s1 s2)`` matrix. Every ``(M_d, theta_d)`` with ``s_d M_d >= H_d + p_d`` gives
       a valid bound, so we search ``M_d`` in a small range and ``theta_d in {0, pi}`` (both keep
       the grid symmetric under ``w -> -w``, and ``B(-w) = conj B(w)`` halves the work) and keep the
       smallest. The search only selects a grid; the returned number is the proven bound for it.
       (With only ``q`` taps per axis the DFT is evaluated directly as the trigonometric sum; a
       zero-padded FFT of the kernel gives the same numbers.)
    5. Gram iteration (Delattre et al., ICML 2023). For any matrix ``G_0`` and
       ``G_{t+1} = G_t^H G_t``: ``sigma_max(G_t) = sigma_max(G_0)**(2**t) <= ||G_t||_F``. We start
       from ``G_0 = B B^H`` (or ``B^H B``, the smaller side ``r``) evaluated as the trigonometric
       polynomial ``sum_d R_d exp(1j d.w)`` with ``R_d = sum_{a - b = d} K'_a K'_b^T``, rescale by
       the Frobenius norm every step and track the scale in log space. Blocks that provably cannot
       attain the maximum are dropped first (an eigensolver screen with the dense error model,
       then the Gram lower bounds ``(||G_t||_F / sqrt(r))**(1/2**t)``); the returned number is
       the Gram-iteration bound of the survivors.
    6. Exact refinements (each gives the same operator, so the proof above applies verbatim):
       taps that only ever read padding are zeroed, and an axis whose exact treatment is cheap
       (block side ``<= _FOLD_MAX_SIDE``) is folded into the channels,
       ``K_f[(o, i), (c, h)] = K[o, c, h + p - s i]``, leaving a size-1 axis (one frequency).
       This removes the circulant slack on that axis, which is large on tiny inputs.

Rounding for FFT: with ``n`` the larger block side, ``q = q1 q2`` taps and ``D = (2q1-1)(2q2-1)``
shifts, ``||G~_0 - G_0||_2 <= gamma(n q + D + 8) q ||K||_F**2`` and, by Parseval on a grid with
``M_d >= q_d``, ``max_w lambda_max(G_0(w)) >= ||K||_F**2 / r``; each Gram step adds a relative
error at most ``4 (gamma(r + 4) r + 2 u sqrt(r))`` and step ``t`` enters with weight
``2**-(t+1)``. The sum of these terms (~1e-10 for realistic layers) is ``_fft_budget``.

Rounding, in general: every returned bound is multiplied by ``1 + max(ROUNDING_ALLOWANCE, budget)``
and rounded up one ulp, where ``budget`` is the a-priori bound of the method's own floating-point
error (under IEEE float64 with the standard error models of BLAS/LAPACK, as in any SVD-based
bound). ``ROUNDING_ALLOWANCE`` exceeds every budget by orders of magnitude for layers that fit in
memory, so in practice the factor is exactly ``1 + ROUNDING_ALLOWANCE``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
import torch.nn.grad

__all__ = [
    "ROUNDING_ALLOWANCE",
    "ConvBoundMethod",
    "avgpool2d_l2_bound",
    "conv2d_abs_l2_bound",
    "conv2d_l2_bound",
    "conv2d_linf_to_l2_bound",
    "conv2d_output_hw",
    "dense_abs_l2_bound",
    "dense_l2_bound",
    "dense_linf_to_l2_bound",
]

ROUNDING_ALLOWANCE: float = 1e-6
"""Relative allowance multiplied onto every returned bound (covers floating-point rounding)."""

_U = 2.0**-53
# AUTO uses the explicit operator when in_dim * out_dim is at most this many entries.
_EXPLICIT_MAX_ENTRIES = 4_000_000
# AUTO also uses the explicit route (via the smaller Gram matrix) when it costs at most this many
# flops, e.g. a conv with a single input channel.
_AUTO_EXPLICIT_FLOPS = 1.5e9
# EXPLICIT refuses a Gram matrix with more entries than this (memory: 8 bytes per entry).
_EXPLICIT_HARD_LIMIT = 200_000_000
# FFT: grid sizes M_min .. M_min + _FFT_GRID_RANGE - 1 are tried per axis (with theta in {0, pi}).
_FFT_GRID_RANGE = 3
# FFT: the search over grid sizes is done for blocks up to this side (else only theta is searched).
_FFT_WIDE_SEARCH_SIDE = 128
# FFT: an axis is folded into the channels (treated exactly) when the blocks stay this small.
_FOLD_MAX_SIDE = 128
# FFT: Gram iteration steps (at least / at most).
_GRAM_MIN_STEPS = 6
_GRAM_MAX_STEPS = 24
# Conv abs bound: power-iteration steps for the Collatz-Wielandt vector.
_CW_STEPS = 30


class ConvBoundMethod(enum.Enum):
    """How ``conv2d_l2_bound`` bounds the l2 operator norm of a convolution."""

    AUTO = "auto"  # EXPLICIT when the explicit operator is small (or cheap via its Gram), else FFT
    EXPLICIT = "explicit"  # explicit operator matrix (conv applied to the identity), exact
    FFT = "fft"  # circulant embedding + polyphase + Gram iteration


# ---------------------------------------------------------------------------------------------
# validation helpers


def _gamma(m: float) -> float:
    """gamma(m) = m u / (1 - m u); +inf when m u >= 1/2 (no useful bound)."""
    mu = m * _U
    return mu / (1.0 - mu) if mu < 0.5 else math.inf


def _to_array(weight: Any, ndim: int, what: str) -> np.ndarray:
    """``weight`` as a finite float64 numpy array with ``ndim`` dimensions."""
    if isinstance(weight, torch.Tensor):
        if weight.is_complex():
            raise ValueError(f"{what}: weight must be real, got a complex tensor")
        weight = weight.detach().to("cpu", torch.float64).numpy()
    if np.iscomplexobj(weight):
        raise ValueError(f"{what}: weight must be real, got a complex array")
    try:
        arr = np.asarray(weight, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: weight must be a real numeric array ({exc})") from None
    if arr.ndim != ndim:
        raise ValueError(f"{what}: weight must have {ndim} dimensions, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: weight contains NaN or infinite entries")
    return arr


def _pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each ``>= minimum``, as a 2-tuple."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        items: Sequence[Any] = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        items = value
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must contain ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} entries must be >= {minimum}, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def _inflate(value: float, budget: float = 0.0) -> float:
    """``value * (1 + max(ROUNDING_ALLOWANCE, budget))``, rounded up one ulp."""
    if not math.isfinite(budget):
        raise ValueError("operator too large for a meaningful float64 rounding bound")
    if value <= 0.0:
        return 0.0
    out = value * (1.0 + max(ROUNDING_ALLOWANCE, budget))
    return float(np.nextafter(out, math.inf))


def conv2d_output_hw(
    input_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[int, int]:
    """Output (H_out, W_out) of conv2d / pooling: ``floor((H + 2p - k) / s) + 1`` per axis."""
    h, w = _pair(input_hw, "input_hw", 1)
    kh, kw = _pair(kernel_hw, "kernel size", 1)
    sh, sw = _pair(stride, "stride", 1)
    ph, pw = _pair(padding, "padding", 0)
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(
            f"kernel {(kh, kw)} is larger than the padded input {(h + 2 * ph, w + 2 * pw)}"
        )
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _conv_args(
    weight: Any, stride: Any, padding: Any, input_hw: Any, what: str
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    k = _to_array(weight, 4, what)
    s = _pair(stride, "stride", 1)
    p = _pair(padding, "padding", 0)
    hw = _pair(input_hw, "input_hw", 1)
    if k.shape[2] < 1 or k.shape[3] < 1:
        raise ValueError(f"{what}: kernel size must be >= 1, got shape {k.shape}")
    out_hw = conv2d_output_hw(hw, (k.shape[2], k.shape[3]), s, p)
    return k, s, p, hw, out_hw


# ---------------------------------------------------------------------------------------------
# dense


def _sigma_from_gram(gram: np.ndarray, inner: int) -> float:
    """Upper bound of sigma_max(A) from a computed Gram matrix ``gram`` (r, r) of ``A``.

    ``gram`` must be ``A A^T`` or ``A^T A`` computed by sums of at most ``inner`` products each,
    with ``max|A| <= 1``. Applies ``delta`` from the module docstring; no allowance yet.
    """
    r = gram.shape[0]
    if r == 1:
        lam = float(gram[0, 0])
    else:
        lam = float(scipy.linalg.eigh(gram, eigvals_only=True, subset_by_index=[r - 1, r - 1])[0])
    g = _gamma(inner + 2) * r
    delta = g + 4.0 * r * r * _U * (1.0 + g)
    if not delta < 0.5:
        raise ValueError("operator too large for a meaningful float64 rounding bound")
    return math.sqrt(max(lam, 0.0) / (1.0 - delta))


def _pow2_exponent(amax: float) -> int:
    """``e`` with ``amax * 2**-e`` in [1/2, 1) (scaling by ``2**-e`` is exact)."""
    return math.frexp(amax)[1]


def _top_sv_bound(a: np.ndarray) -> float:
    """Upper bound of sigma_max(a) for a (m, n) matrix, with its rounding ``delta`` applied.

    Not yet multiplied by the allowance. See the module docstring (Dense layers) for the proof.
    """
    if a.size == 0:
        return 0.0
    amax = float(np.max(np.abs(a)))
    if amax == 0.0:
        return 0.0
    e = _pow2_exponent(amax)
    scaled = np.ldexp(a, -e)
    m, n = scaled.shape
    gram = scaled @ scaled.T if m <= n else scaled.T @ scaled
    return math.ldexp(_sigma_from_gram(gram, max(m, n)), e)


def dense_l2_bound(weight: np.ndarray) -> float:
    """Upper bound of ``||W||_2`` (largest singular value) of a dense weight ``(out, in)``."""
    w = _to_array(weight, 2, "dense_l2_bound")
    return _inflate(_top_sv_bound(w))


def dense_abs_l2_bound(weight: np.ndarray) -> float:
    """Upper bound of ``|| |W| ||_2`` (entrywise absolute value) for a weight ``(out, in)``.

    Exact (up to the allowance): the largest singular value of ``|W|``, never above ``||W||_F``.
    """
    w = _to_array(weight, 2, "dense_abs_l2_bound")
    return _inflate(_top_sv_bound(np.abs(w)))


def _linf_to_l2_from_matrix(a: np.ndarray) -> float:
    """min of the three linf->l2 bounds for an explicit (m, n) matrix, allowance applied.

    Computed on ``a * 2**-e`` with ``max|a| 2**-e`` in [1/2, 1) (exact; no under/overflow).
    """
    m, n = a.shape
    if a.size == 0 or not np.any(a):
        return 0.0
    e = _pow2_exponent(float(np.max(np.abs(a))))
    scaled = np.ldexp(a, -e)
    budget = _gamma(m + n + 4)
    row_l1 = np.sum(np.abs(scaled), axis=1)
    row_bound = math.sqrt(float(np.sum(row_l1 * row_l1)))
    col_bound = float(np.sum(np.sqrt(np.sum(scaled * scaled, axis=0))))
    spec_bound = math.sqrt(n) * _inflate(_top_sv_bound(scaled))
    return _inflate(math.ldexp(min(row_bound, col_bound, spec_bound), e), budget)


def dense_linf_to_l2_bound(weight: np.ndarray) -> float:
    """Upper bound of ``max_{||d||_inf <= 1} ||W d||_2`` for a weight ``(out, in)``.

    The minimum of ``sqrt(sum_i ||row_i||_1**2)`` (each ``|(Wd)_i| <= ||row_i||_1``),
    ``sqrt(in) ||W||_2`` (``||d||_2 <= sqrt(in)``) and ``sum_j ||col_j||_2`` (triangle inequality).
    """
    w = _to_array(weight, 2, "dense_linf_to_l2_bound")
    return _linf_to_l2_from_matrix(w)


# ---------------------------------------------------------------------------------------------
# pooling


def avgpool2d_l2_bound(kernel: tuple[int, int], stride: tuple[int, int]) -> float:
    """Upper bound of the l2 norm of AvgPool2d (padding 0, ceil_mode False), any input size.

    Schur test ``||A||_2 <= sqrt(||A||_1 ||A||_inf)``: every row has ``kh kw`` entries
    ``1 / (kh kw)`` (row sum 1) and an input pixel lies in at most ``ceil(kh/sh) ceil(kw/sw)``
    windows, so the bound is ``sqrt(ceil(kh/sh) ceil(kw/sw) / (kh kw))`` (exact when k == s).
    """
    kh, kw = _pair(kernel, "kernel", 1)
    sh, sw = _pair(stride, "stride", 1)
    cover = (-(-kh // sh)) * (-(-kw // sw))
    return _inflate(math.sqrt(cover / (kh * kw)))


# ---------------------------------------------------------------------------------------------
# convolution: explicit operator


def _conv_dims(
    k: np.ndarray, input_hw: tuple[int, int], out_hw: tuple[int, int]
) -> tuple[int, int]:
    """(in_dim, out_dim) of the conv operator."""
    return k.shape[1] * input_hw[0] * input_hw[1], k.shape[0] * out_hw[0] * out_hw[1]


def _conv_matrix(
    k: np.ndarray, stride: tuple[int, int], padding: tuple[int, int], input_hw: tuple[int, int]
) -> np.ndarray:
    """Explicit (out_dim, in_dim) matrix of the conv (no bias); entries are exact kernel weights."""
    c_in = k.shape[1]
    h, w = input_hw
    out_hw = conv2d_output_hw(input_hw, (k.shape[2], k.shape[3]), stride, padding)
    n_in, n_out = _conv_dims(k, input_hw, out_hw)
    kt = torch.tensor(k, dtype=torch.float64)  # a copy: k may be read-only
    out = np.empty((n_in, n_out), dtype=np.float64)
    chunk = max(1, min(n_in, 2_000_000 // (n_out + n_in)))
    with torch.no_grad():
        for start in range(0, n_in, chunk):
            stop = min(n_in, start + chunk)
            basis = torch.zeros(stop - start, n_in, dtype=torch.float64)
            idx = torch.arange(stop - start)
            basis[idx, idx + start] = 1.0
            y = F.conv2d(basis.reshape(-1, c_in, h, w), kt, stride=stride, padding=padding)
            out[start:stop] = y.reshape(stop - start, n_out).numpy()
    return out.T


def _conv_gram(
    k: np.ndarray, stride: tuple[int, int], padding: tuple[int, int], input_hw: tuple[int, int]
) -> np.ndarray:
    """The smaller Gram matrix (A^T A or A A^T) of the conv operator A, via conv and its adjoint.

    One factor applied to a basis vector is exact (a single product ``w * 1.0`` per entry), the
    other sums at most ``max(in_dim, out_dim)`` products, as in a dense Gram product.
    """
    c_out, c_in = k.shape[0], k.shape[1]
    h, w = input_hw
    ho, wo = conv2d_output_hw(input_hw, (k.shape[2], k.shape[3]), stride, padding)
    n_in, n_out = _conv_dims(k, input_hw, (ho, wo))
    side = min(n_in, n_out)
    kt = torch.tensor(k, dtype=torch.float64)

    def fwd(x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x.reshape(-1, c_in, h, w), kt, stride=stride, padding=padding)
        return y.reshape(x.shape[0], n_out)

    def adj(y: torch.Tensor) -> torch.Tensor:
        x = torch.nn.grad.conv2d_input(
            (y.shape[0], c_in, h, w),
            kt,
            y.reshape(-1, c_out, ho, wo),
            stride=stride,
            padding=padding,
        )
        return x.reshape(y.shape[0], n_in)

    gram = np.empty((side, side), dtype=np.float64)
    chunk = max(1, min(side, 4_000_000 // (n_in + n_out)))
    with torch.no_grad():
        for start in range(0, side, chunk):
            stop = min(side, start + chunk)
            basis = torch.zeros(stop - start, side, dtype=torch.float64)
            idx = torch.arange(stop - start)
            basis[idx, idx + start] = 1.0
            cols = adj(fwd(basis)) if n_in <= n_out else fwd(adj(basis))
            gram[start:stop] = cols.numpy()
    return gram


def _explicit_bound(
    k: np.ndarray, stride: tuple[int, int], padding: tuple[int, int], input_hw: tuple[int, int]
) -> float:
    """Exact l2 norm (allowance applied) from the explicit operator or its smaller Gram matrix."""
    out_hw = conv2d_output_hw(input_hw, (k.shape[2], k.shape[3]), stride, padding)
    n_in, n_out = _conv_dims(k, input_hw, out_hw)
    side = min(n_in, n_out)
    if n_in * n_out <= _EXPLICIT_MAX_ENTRIES:
        return _inflate(_top_sv_bound(_conv_matrix(k, stride, padding, input_hw)))
    if side * side > _EXPLICIT_HARD_LIMIT:
        raise ValueError(
            f"explicit Gram matrix would be {side} x {side} (limit {_EXPLICIT_HARD_LIMIT} "
            "entries); use ConvBoundMethod.FFT"
        )
    e = _pow2_exponent(float(np.max(np.abs(k))))
    gram = _conv_gram(np.ldexp(k, -e), stride, padding, input_hw)
    return _inflate(math.ldexp(_sigma_from_gram(gram, max(n_in, n_out)), e))


def _explicit_cost(k: np.ndarray, input_hw: tuple[int, int], out_hw: tuple[int, int]) -> float:
    """Rough flop count of the explicit (Gram) route: building the Gram plus the eigensolver."""
    n_in, n_out = _conv_dims(k, input_hw, out_hw)
    side = min(n_in, n_out)
    nnz = float(k.size) * out_hw[0] * out_hw[1]
    return 2.0 * side * nnz + 1.5 * float(side) ** 3


# ---------------------------------------------------------------------------------------------
# convolution: FFT (circulant embedding + polyphase + Gram iteration)


def _polyphase_kernel(k: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """(c_out, c_in, kh, kw) -> (c_out, c_in s1 s2, ceil(kh/s1), ceil(kw/s2)); tap s a' + r."""
    c_out, c_in, kh, kw = k.shape
    s1, s2 = stride
    q1, q2 = -(-kh // s1), -(-kw // s2)
    out = np.zeros((c_out, c_in, s1, s2, q1, q2), dtype=np.float64)
    for r1 in range(s1):
        for r2 in range(s2):
            sub = k[:, :, r1::s1, r2::s2]
            out[:, :, r1, r2, : sub.shape[2], : sub.shape[3]] = sub
    return out.reshape(c_out, c_in * s1 * s2, q1, q2)


def _gram_coefficients(kp: np.ndarray) -> np.ndarray:
    """R[d + q - 1] = sum_{a - b = d} kp[:, :, a] kp[:, :, b]^T, shape (2q1 - 1, 2q2 - 1, r, r).

    ``kp`` is (r, n, q1, q2); then ``B(w) B(w)^H = sum_d R_d exp(1j d.w)``.
    """
    r, _, q1, q2 = kp.shape
    coeffs = np.zeros((2 * q1 - 1, 2 * q2 - 1, r, r), dtype=np.float64)
    for d1 in range(-(q1 - 1), q1):
        a_lo, a_hi = max(0, d1), min(q1, q1 + d1)
        for d2 in range(-(q2 - 1), q2):
            b_lo, b_hi = max(0, d2), min(q2, q2 + d2)
            x = kp[:, :, a_lo:a_hi, b_lo:b_hi].reshape(r, -1)
            y = kp[:, :, a_lo - d1 : a_hi - d1, b_lo - d2 : b_hi - d2].reshape(r, -1)
            coeffs[d1 + q1 - 1, d2 + q2 - 1] = x @ y.T
    return coeffs


def _grid_numerators(m: int, e: int, half: bool) -> list[int]:
    """Numerators j = 2k + e of the frequencies w = pi j / m, k < m (only w <= pi if ``half``)."""
    nums = [2 * k + e for k in range(m)]
    return [j for j in nums if j <= m] if half else nums


def _freq_key(j: int, m: int) -> tuple[int, int]:
    """Canonical key of w = pi j / m, i.e. w / (2 pi) = j / (2 m) reduced mod 1."""
    num, den = j % (2 * m), 2 * m
    g = math.gcd(num, den)
    return num // g, den // g


def _gram_blocks(coeffs: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """G(w) = sum_d R_d exp(1j (d1 w1 + d2 w2)) for the point list (w1[i], w2[i]) -> (P, r, r)."""
    d1n, d2n, r, _ = coeffs.shape
    d1 = np.arange(d1n) - (d1n - 1) // 2
    d2 = np.arange(d2n) - (d2n - 1) // 2
    phase = np.exp(
        1j * (w1[:, None, None] * d1[None, :, None] + w2[:, None, None] * d2[None, None, :])
    )
    return np.tensordot(phase.reshape(len(w1), -1), coeffs.reshape(d1n * d2n, r, r), axes=1)


class _GridSearch:
    """Evaluates max_w lambda_max(G(w)) on (M1, e1) x (M2, e2) grids, caching per frequency."""

    def __init__(self, coeffs: np.ndarray) -> None:
        self.coeffs = coeffs
        self.cache: dict[tuple[tuple[int, int], tuple[int, int]], float] = {}

    def _points(self, g1: tuple[int, int], g2: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        return [
            (j1, g1[0], j2, g2[0])
            for j1 in _grid_numerators(g1[0], g1[1], half=False)
            for j2 in _grid_numerators(g2[0], g2[1], half=True)
        ]

    def _values(self, pts: list[tuple[int, int, int, int]]) -> np.ndarray:
        keys = [(_freq_key(j1, m1), _freq_key(j2, m2)) for j1, m1, j2, m2 in pts]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            w1 = np.array([math.pi * pts[i][0] / pts[i][1] for i in missing])
            w2 = np.array([math.pi * pts[i][2] / pts[i][3] for i in missing])
            g = _gram_blocks(self.coeffs, w1, w2)
            lam = np.linalg.eigvalsh(g)[:, -1]
            for i, v in zip(missing, lam, strict=True):
                self.cache[keys[i]] = float(v)
        return np.array([self.cache[key] for key in keys])

    def value(
        self,
        g1: tuple[int, int],
        g2: tuple[int, int],
        cutoff: float = math.inf,
        peak: tuple[float, float] | None = None,
    ) -> tuple[float, tuple[float, float]]:
        """(max value, argmax frequency); stops early (returning >= cutoff) if it cannot win."""
        pts = self._points(g1, g2)
        if peak is not None:
            # Evaluate first the points nearest to the incumbent's peak (and its mirror image).
            def dist(p: tuple[int, int, int, int]) -> float:
                w = (math.pi * p[0] / p[1], math.pi * p[2] / p[3])
                best = math.inf
                for sign in (1.0, -1.0):
                    d = 0.0
                    for wd, pd in zip(w, peak, strict=True):
                        t = abs((wd - sign * pd + math.pi) % (2 * math.pi) - math.pi)
                        d += t * t
                    best = min(best, d)
                return best

            pts.sort(key=dist)
            head = self._values(pts[:8])
            if float(np.max(head)) >= cutoff:
                return float(np.max(head)), (0.0, 0.0)
        vals = self._values(pts)
        i = int(np.argmax(vals))
        return float(vals[i]), (math.pi * pts[i][0] / pts[i][1], math.pi * pts[i][2] / pts[i][3])


def _grid_candidates(m_min: int, q: int, wide: bool) -> list[tuple[int, int]]:
    """Candidate (M, e) grids for one axis; a single tap (q == 1) makes B independent of w_d."""
    if q == 1:
        return [(1, 0)]  # same value as any valid grid: G(w) does not depend on w_d
    sizes = range(m_min, m_min + (_FFT_GRID_RANGE if wide else 1))
    return [(m, e) for m in sizes for e in (0, 1)]


def _choose_grid(
    coeffs: np.ndarray, m_min: tuple[int, int], wide: bool
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (M, e) grid per axis with the smallest circulant bound, by exhaustive search.

    Each candidate is first evaluated near the incumbent's peak and dropped as soon as it cannot
    win, so most candidates cost a handful of eigenvalue problems.
    """
    q1, q2 = (coeffs.shape[0] + 1) // 2, (coeffs.shape[1] + 1) // 2
    cands = [_grid_candidates(m_min[0], q1, wide), _grid_candidates(m_min[1], q2, wide)]
    search = _GridSearch(coeffs)
    best = (cands[0][0], cands[1][0])
    best_val, peak = search.value(*best)
    for c1 in cands[0]:
        for c2 in cands[1]:
            if (c1, c2) == best:
                continue
            val, trial_peak = search.value(c1, c2, cutoff=best_val, peak=peak)
            if val < best_val:
                best, best_val, peak = (c1, c2), val, trial_peak
    return best


def _gram_iteration_bound(blocks: np.ndarray) -> float:
    """Upper bound of max_j sigma_max(blocks[j]) for a batch (P, r, r) by Gram iteration.

    Blocks are screened first: a backward-stable eigensolver gives ``lambda~_j`` within
    ``4 r**2 u ||G_j||_F`` of ``lambda_max(G_j)`` (the same error model as the dense bound), and a
    block whose resulting upper value is below another block's lower value cannot attain the
    maximum. The survivors are bounded by Gram iteration, which is rigorous on its own.
    """
    r = blocks.shape[-1]
    fro = np.sqrt(np.sum(np.abs(blocks) ** 2, axis=(1, 2)))
    if not np.any(fro > 0):
        return 0.0
    lam = np.linalg.eigvalsh(blocks)[:, -1]
    err = 4.0 * r * r * _U * fro
    keep_np = (lam + err >= np.max(lam - err)) & (fro > 0)
    g = torch.from_numpy(np.ascontiguousarray(blocks[keep_np])).to(torch.complex128)
    norms = torch.linalg.matrix_norm(g)  # Frobenius
    half_log_r = 0.5 * math.log(r)
    x = g / norms[:, None, None]
    log_scale = torch.log(norms)  # G_t = exp(log_scale) x with ||x||_F = 1
    best = float(log_scale.max())  # log of the bound on sigma_max(G_0) after t steps
    for t in range(1, _GRAM_MAX_STEPS + 1):
        y = torch.matmul(x.mH, x)
        f = torch.linalg.matrix_norm(y)
        x = y / f[:, None, None]
        log_scale = 2.0 * log_scale + torch.log(f)
        upper = log_scale / 2.0**t
        lower = (log_scale - half_log_r) / 2.0**t
        # Drop blocks that provably cannot attain the maximum (tiny margin against rounding).
        keep = upper >= lower.max() - 1e-12
        x, log_scale, upper = x[keep], log_scale[keep], upper[keep]
        new_best = float(upper.max())
        converged = best - new_best <= 1e-13 * max(1.0, abs(new_best))
        best = new_best
        if t >= _GRAM_MIN_STEPS and converged:
            break
    return math.exp(best)


def _fft_budget(r: int, n: int, q1: int, q2: int) -> float:
    """Relative rounding budget of the FFT bound (see the module docstring)."""
    taps = q1 * q2
    shifts = (2 * q1 - 1) * (2 * q2 - 1)
    delta_g = _gamma(n * taps + shifts + 8) * taps * r
    delta_gram = 4.0 * (_gamma(r + 4) * r + 2.0 * _U * math.sqrt(r))
    return 2.0 * delta_g + 4.0 * delta_gram + 1e-12


def _zero_dead_taps(
    k: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    input_hw: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """Copy of ``k`` with the taps that only ever read padding set to zero (same operator)."""
    k = k.copy()
    for axis in range(2):
        s, p, n, n_out = stride[axis], padding[axis], input_hw[axis], out_hw[axis]
        for a in range(k.shape[2 + axis]):
            if not any(p <= s * i + a < p + n for i in range(n_out)):
                if axis == 0:
                    k[:, :, a, :] = 0.0
                else:
                    k[:, :, :, a] = 0.0
    return k


def _fold_axis(
    k: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    input_hw: tuple[int, int],
    out_hw: tuple[int, int],
    axis: int,
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The same operator with ``axis`` folded into the channels (treated exactly, not by FFT).

    ``K_f[(o, i), (c, h), b] = K[o, c, h + p - s i, b]`` (0 outside the kernel) for output row
    ``i < Ho`` and input row ``h < H``; the folded axis then has size 1, kernel 1, stride 1 and
    padding 0, and the result is a permutation of the original operator's rows and columns.
    """
    c_out, c_in = k.shape[0], k.shape[1]
    kt = k if axis == 0 else k.transpose(0, 1, 3, 2)
    s, p, n, n_out = stride[axis], padding[axis], input_hw[axis], out_hw[axis]
    folded = np.zeros((c_out, n_out, c_in, n, 1, kt.shape[3]), dtype=np.float64)
    for i in range(n_out):
        for a in range(kt.shape[2]):
            h = s * i + a - p
            if 0 <= h < n:
                folded[:, i, :, h, 0, :] = kt[:, :, a, :]
    kf: np.ndarray = folded.reshape(c_out * n_out, c_in * n, 1, kt.shape[3])
    if axis == 1:
        kf = np.ascontiguousarray(kf.transpose(0, 1, 3, 2))
        return kf, (stride[0], 1), (padding[0], 0), (input_hw[0], 1), (out_hw[0], 1)
    return kf, (1, stride[1]), (0, padding[1]), (1, input_hw[1]), (1, out_hw[1])


def _folded_side(k: np.ndarray, stride: tuple[int, int], n: tuple[int, int], axis: int) -> int:
    """Smaller block side after folding ``axis`` (``n`` = (input size, output size) on it)."""
    other = 1 - axis
    return min(k.shape[0] * n[1], k.shape[1] * n[0] * stride[other])


def _fft_bound(
    k: np.ndarray, stride: tuple[int, int], padding: tuple[int, int], input_hw: tuple[int, int]
) -> float:
    """Circulant (FFT) bound of the conv l2 norm, allowance applied.

    Axes whose exact treatment is cheap (block side <= ``_FOLD_MAX_SIDE``) are folded into the
    channels first, which removes the circulant's slack on that axis.
    """
    out_hw = conv2d_output_hw(input_hw, (k.shape[2], k.shape[3]), stride, padding)
    k = _zero_dead_taps(k, stride, padding, input_hw, out_hw)
    both = min(k.shape[0] * out_hw[0] * out_hw[1], k.shape[1] * input_hw[0] * input_hw[1])
    sides = [_folded_side(k, stride, (input_hw[d], out_hw[d]), d) for d in range(2)]
    if both <= _FOLD_MAX_SIDE:
        axes = [0, 1]
    elif min(sides) <= _FOLD_MAX_SIDE:
        axes = [int(np.argmin(sides))]
    else:
        axes = []
    for axis in axes:
        k, stride, padding, input_hw, out_hw = _fold_axis(
            k, stride, padding, input_hw, out_hw, axis
        )
    kp = _polyphase_kernel(k, stride)
    if kp.shape[0] > kp.shape[1]:
        kp = np.ascontiguousarray(kp.transpose(1, 0, 2, 3))  # same singular values, smaller Gram
    r, n, q1, q2 = kp.shape
    amax = float(np.max(np.abs(kp))) if kp.size else 0.0
    if amax == 0.0:
        return 0.0
    e = _pow2_exponent(amax)
    kp = np.ldexp(kp, -e)
    coeffs = _gram_coefficients(kp)
    m_min = [max(-(-(input_hw[d] + padding[d]) // stride[d]), (q1, q2)[d]) for d in range(2)]
    g1, g2 = _choose_grid(coeffs, (m_min[0], m_min[1]), wide=r <= _FFT_WIDE_SEARCH_SIDE)
    j1 = np.array(_grid_numerators(g1[0], g1[1], half=False), dtype=np.float64)
    j2 = np.array(_grid_numerators(g2[0], g2[1], half=True), dtype=np.float64)
    w1 = np.repeat(math.pi * j1 / g1[0], len(j2))
    w2 = np.tile(math.pi * j2 / g2[0], len(j1))
    lam = _gram_iteration_bound(_gram_blocks(coeffs, w1, w2))
    return _inflate(math.ldexp(math.sqrt(lam), e), _fft_budget(r, n, q1, q2))


# ---------------------------------------------------------------------------------------------
# convolution: public API


def conv2d_l2_bound(
    weight: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    input_hw: tuple[int, int],
    method: ConvBoundMethod = ConvBoundMethod.AUTO,
) -> float:
    """Upper bound of the l2 operator norm of ``conv2d(x, weight, stride, padding)`` (no bias).

    weight: (c_out, c_in, kh, kw); zero padding, dilation 1, groups 1; input (c_in, H, W).
    """
    k, s, p, hw, out_hw = _conv_args(weight, stride, padding, input_hw, "conv2d_l2_bound")
    if not isinstance(method, ConvBoundMethod):
        raise ValueError(f"method must be a ConvBoundMethod, got {method!r}")
    if k.size == 0 or not np.any(k):
        return 0.0
    if method is ConvBoundMethod.AUTO:
        method = (
            ConvBoundMethod.EXPLICIT if _prefer_explicit(k, hw, out_hw) else ConvBoundMethod.FFT
        )
    if method is ConvBoundMethod.EXPLICIT:
        return _explicit_bound(k, s, p, hw)
    return _fft_bound(k, s, p, hw)


def _prefer_explicit(k: np.ndarray, input_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """AUTO's choice: the explicit route when the operator is small or its Gram route is cheap."""
    n_in, n_out = _conv_dims(k, input_hw, out_hw)
    return (
        n_in * n_out <= _EXPLICIT_MAX_ENTRIES
        or _explicit_cost(k, input_hw, out_hw) <= _AUTO_EXPLICIT_FLOPS
    )


def conv2d_linf_to_l2_bound(
    weight: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    input_hw: tuple[int, int],
) -> float:
    """Upper bound of ``max_{||d||_inf <= 1} ||conv(d)||_2`` for a conv (no bias).

    Small operators: the dense bound on the explicit matrix. Otherwise the minimum of the exact
    row-l1 bound (``conv(1, |K|)``), the column-l2 bound (adjoint of ``conv(., K**2)`` at 1) and
    ``sqrt(c_in H W) * conv2d_l2_bound``.
    """
    k, s, p, hw, out_hw = _conv_args(weight, stride, padding, input_hw, "conv2d_linf_to_l2_bound")
    if k.size == 0 or not np.any(k):
        return 0.0
    n_in, n_out = _conv_dims(k, hw, out_hw)
    if n_in * n_out <= _EXPLICIT_MAX_ENTRIES:
        return _linf_to_l2_from_matrix(_conv_matrix(k, s, p, hw))
    c_in, h, w = k.shape[1], hw[0], hw[1]
    budget = _gamma(n_in + n_out + k.size + 8)
    e = _pow2_exponent(float(np.max(np.abs(k))))  # exact rescaling: no under/overflow below
    kt = torch.from_numpy(np.ldexp(k, -e))
    with torch.no_grad():
        ones_in = torch.ones(1, c_in, h, w, dtype=torch.float64)
        row_l1 = F.conv2d(ones_in, kt.abs(), stride=s, padding=p)
        row_bound = math.sqrt(float((row_l1 * row_l1).sum()))
        ones_out = torch.ones(1, k.shape[0], out_hw[0], out_hw[1], dtype=torch.float64)
        col_sq = torch.nn.grad.conv2d_input((1, c_in, h, w), kt * kt, ones_out, stride=s, padding=p)
        col_bound = float(col_sq.clamp(min=0.0).sqrt().sum())
    structural = _inflate(math.ldexp(min(row_bound, col_bound), e), budget)
    spec_bound = _inflate(math.sqrt(n_in) * conv2d_l2_bound(k, s, p, hw), budget)
    return min(structural, spec_bound)


def _collatz_wielandt_bound(
    k_abs: np.ndarray, stride: tuple[int, int], padding: tuple[int, int], input_hw: tuple[int, int]
) -> float:
    """sqrt(max_i (A^T A v)_i / v_i) >= ||A||_2 for the nonnegative conv A = op(k_abs), any v > 0.

    ``v`` is a few power-iteration steps from the all-ones vector, kept strictly positive. The
    kernel is rescaled by a power of two (exact) so that nothing under- or overflows.
    """
    amax = float(np.max(k_abs))
    if amax == 0.0:
        return 0.0
    e = _pow2_exponent(amax)
    kt = torch.from_numpy(np.ldexp(k_abs, -e))
    shape = (1, k_abs.shape[1], input_hw[0], input_hw[1])

    def ata(v: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(v, kt, stride=stride, padding=padding)
        return torch.nn.grad.conv2d_input(shape, kt, y, stride=stride, padding=padding)

    with torch.no_grad():
        v = torch.ones(shape, dtype=torch.float64)
        for _ in range(_CW_STEPS):
            z = ata(v)
            zmax = float(z.max())
            if zmax <= 0.0:
                return 0.0
            v = z / zmax + 1e-3  # strictly positive
        z = ata(v)
        ratio = float((z / v).max())
    # z = fl(A^T fl(A v)) sums nonnegative terms: each entry is within a factor (1 + gamma)^2 of
    # the exact one, covered by the budget.
    budget = 2.0 * _gamma(2 * (k_abs.size + 4)) + 4.0 * _U
    return _inflate(math.ldexp(math.sqrt(max(ratio, 0.0)), e), budget)


def conv2d_abs_l2_bound(
    weight: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    input_hw: tuple[int, int],
) -> float:
    """Upper bound of ``||op(|K|)||_2``, the conv with the entrywise absolute kernel.

    ``op(|K|) = |op(K)|`` entrywise (each matrix entry is one kernel weight or 0). The minimum of
    ``conv2d_l2_bound(|K|)`` (AUTO) and a Collatz-Wielandt (weighted Schur) test.
    """
    k, s, p, hw, _ = _conv_args(weight, stride, padding, input_hw, "conv2d_abs_l2_bound")
    if k.size == 0 or not np.any(k):
        return 0.0
    k_abs = np.abs(k)
    return min(conv2d_l2_bound(k_abs, s, p, hw), _collatz_wielandt_bound(k_abs, s, p, hw))
