"""Tests for verispec.opnorm: each bound must be >= the exact norm (soundness) and close to it.

Exact references are computed independently of the module: ``np.linalg.svd`` of the matrix, the
conv operator as the Jacobian of ``torch.nn.functional.conv2d`` (autograd), and exhaustive
enumeration of sign vectors for linf -> l2 norms.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from verispec import opnorm
from verispec.opnorm import ConvBoundMethod

# VERISPEC_SLOW=1 (or OPNORM_HYP_EXAMPLES=N) for a soundness stress run; the default keeps the
# file at a few seconds.
_EXAMPLES = 1000 if os.environ.get("VERISPEC_SLOW") else 40
HYP = settings(
    max_examples=int(os.environ.get("OPNORM_HYP_EXAMPLES", str(_EXAMPLES))),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SCALES = [1e-200, 1e-6, 1.0, 1e6, 1e200]  # extremes: under/overflow of squares
# The bounds are exact up to ROUNDING_ALLOWANCE (plus ~1e-10 of provable float error).
EXACT_TOL = 1.0 + 2 * opnorm.ROUNDING_ALLOWANCE + 1e-9


@pytest.fixture(autouse=True, scope="module")
def _single_threaded() -> Iterator[None]:
    """The operators here are tiny: run BLAS and torch on one thread (restored afterwards).

    Multi-threaded BLAS/OpenMP on tiny problems is slower, and on a loaded machine it can be
    100x slower (spin-waiting threads).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=1))
        except ImportError:  # pragma: no cover - optional
            pass
        try:
            yield
        finally:
            torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# references


def svd_norm(a: np.ndarray) -> float:
    return float(np.linalg.svd(a, compute_uv=False)[0]) if a.size else 0.0


def frobenius(a: np.ndarray) -> float:
    if not np.any(a):
        return 0.0
    e = math.frexp(float(np.max(np.abs(a))))[1]  # exact power-of-two rescaling
    return math.ldexp(float(np.linalg.norm(np.ldexp(a, -e))), e)


def conv_operator(
    k: np.ndarray, stride: tuple[int, int], padding: tuple[int, int], hw: tuple[int, int]
) -> np.ndarray:
    """(out_dim, in_dim) matrix of the conv, as the autograd Jacobian of F.conv2d at 0."""
    kt = torch.from_numpy(k)
    c_in = k.shape[1]

    def f(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.reshape(1, c_in, *hw), kt, stride=stride, padding=padding).reshape(-1)

    x0 = torch.zeros(c_in * hw[0] * hw[1], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(f, x0, vectorize=True)
    assert isinstance(jac, torch.Tensor)
    return jac.numpy()


def linf_to_l2_exact(a: np.ndarray) -> float:
    """max over sign vectors d in {-1, 1}^n of ||A d||_2 (the maximum over the box, a vertex)."""
    n = a.shape[1]
    if not np.any(a):
        return 0.0
    e = math.frexp(float(np.max(np.abs(a))))[1]  # exact power-of-two rescaling
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=n)))
    return math.ldexp(float(np.max(np.linalg.norm(signs @ np.ldexp(a, -e).T, axis=1))), e)


# ------------------------------------------------------------------------------------------------
# strategies


@st.composite
def dense_weights(draw: st.DrawFn) -> np.ndarray:
    m = draw(st.integers(1, 12))
    n = draw(st.integers(1, 12))
    kind = draw(st.sampled_from(["values", "gauss", "zero_rows", "dup_rows", "rank1"]))
    if kind == "values":
        vals = draw(
            st.lists(
                st.floats(-4.0, 4.0, allow_nan=False, allow_subnormal=False),
                min_size=m * n,
                max_size=m * n,
            )
        )
        w = np.array(vals, dtype=np.float64).reshape(m, n)
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        w = rng.standard_normal((m, n))
        if kind == "zero_rows":
            w[rng.random(m) < 0.5] = 0.0
        elif kind == "dup_rows":
            w[rng.integers(0, m, size=m)] = w[0]
        elif kind == "rank1":
            w = np.outer(rng.standard_normal(m), rng.standard_normal(n))
    return w * draw(st.sampled_from(SCALES))


@st.composite
def conv_cases(
    draw: st.DrawFn, max_c: int = 4, max_k: int = 4, hw_range: tuple[int, int] = (4, 10)
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], tuple[int, int]]:
    c_out, c_in = draw(st.integers(1, max_c)), draw(st.integers(1, max_c))
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    hw = (draw(st.integers(*hw_range)), draw(st.integers(*hw_range)))
    assume(hw[0] + 2 * padding[0] >= kh and hw[1] + 2 * padding[1] >= kw)
    kind = draw(st.sampled_from(["gauss", "gauss", "ones", "positive", "sparse"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (c_out, c_in, kh, kw)
    if kind == "ones":
        k = np.ones(shape)
    elif kind == "positive":
        k = rng.uniform(0.0, 1.0, shape)
    else:
        k = rng.standard_normal(shape)
        if kind == "sparse":
            k[rng.random(shape) < 0.7] = 0.0
    return k * draw(st.sampled_from(SCALES)), stride, padding, hw


# ------------------------------------------------------------------------------------------------
# dense


@HYP
@given(dense_weights())
def test_dense_l2_bound_is_sound_and_exact(w: np.ndarray) -> None:
    exact = svd_norm(w)
    bound = opnorm.dense_l2_bound(w)
    assert bound >= exact
    if exact == 0.0:
        assert bound == 0.0
    else:
        assert bound <= exact * EXACT_TOL


def test_dense_l2_bound_known_values() -> None:
    assert opnorm.dense_l2_bound(np.diag([3.0, -4.0])) == pytest.approx(4.0, rel=2e-6)
    assert opnorm.dense_l2_bound(np.diag([3.0, -4.0])) >= 4.0
    assert opnorm.dense_l2_bound(np.ones((1, 4))) == pytest.approx(2.0, rel=2e-6)
    assert opnorm.dense_l2_bound(np.zeros((3, 5))) == 0.0
    # a torch tensor is accepted as well
    assert opnorm.dense_l2_bound(torch.eye(3)) >= 1.0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        np.array([1.0, 2.0]),
        np.zeros((2, 2, 2)),
        np.array([[1.0, np.nan]]),
        np.array([[np.inf]]),
        np.array([[1.0 + 1.0j]]),
        [["a"]],
    ],
)
def test_dense_rejects_bad_weights(bad: np.ndarray) -> None:
    for fn in (opnorm.dense_l2_bound, opnorm.dense_abs_l2_bound, opnorm.dense_linf_to_l2_bound):
        with pytest.raises(ValueError):
            fn(bad)


@HYP
@given(dense_weights())
def test_dense_abs_l2_bound(w: np.ndarray) -> None:
    exact = svd_norm(np.abs(w))
    bound = opnorm.dense_abs_l2_bound(w)
    assert bound >= exact
    assert bound <= exact * EXACT_TOL
    assert bound <= frobenius(w) * EXACT_TOL  # never worse than Frobenius


@HYP
@given(dense_weights().filter(lambda w: w.shape[1] <= 10))
def test_dense_linf_to_l2_bound(w: np.ndarray) -> None:
    exact = linf_to_l2_exact(w)
    bound = opnorm.dense_linf_to_l2_bound(w)
    assert bound >= exact
    # it is the minimum of the three stated bounds, each of which is at most sqrt(n) * exact
    assert bound <= math.sqrt(w.shape[1]) * exact * EXACT_TOL


def test_dense_linf_to_l2_bound_exact_cases() -> None:
    # a single row: max ||W d|| = ||row||_1 (row bound exact)
    assert opnorm.dense_linf_to_l2_bound(np.array([[1.0, -2.0, 3.0]])) == pytest.approx(
        6.0, rel=3e-6
    )
    # a single column: max = ||col||_2 (column bound exact)
    assert opnorm.dense_linf_to_l2_bound(np.array([[3.0], [4.0]])) == pytest.approx(5.0, rel=3e-6)
    # orthogonal rows of +-1 (Hadamard): ||W d|| = 2 * ||d|| <= 4, attained at d = e.g. (1,1,1,1)
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=float)
    assert opnorm.dense_linf_to_l2_bound(h) == pytest.approx(linf_to_l2_exact(h), rel=3e-6)


# ------------------------------------------------------------------------------------------------
# conv2d l2


def test_conv2d_output_hw_matches_torch() -> None:
    for hw, k, s, p in [((28, 28), (3, 3), (1, 1), (1, 1)), ((7, 9), (4, 2), (3, 2), (2, 0))]:
        x = torch.zeros(1, 1, *hw)
        y = F.conv2d(x, torch.zeros(1, 1, *k), stride=s, padding=p)
        assert opnorm.conv2d_output_hw(hw, k, s, p) == tuple(y.shape[2:])
    with pytest.raises(ValueError):
        opnorm.conv2d_output_hw((2, 2), (5, 5), (1, 1), (1, 1))


@pytest.mark.parametrize(
    ("stride", "padding", "hw"),
    [((0, 1), (0, 0), (5, 5)), ((1, 1), (-1, 0), (5, 5)), ((1, 1), (0, 0), (2, 5))],
)
def test_conv_rejects_bad_geometry(
    stride: tuple[int, int], padding: tuple[int, int], hw: tuple[int, int]
) -> None:
    k = np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError):
        opnorm.conv2d_l2_bound(k, stride, padding, hw)
    with pytest.raises(ValueError):
        opnorm.conv2d_linf_to_l2_bound(k, stride, padding, hw)


def test_conv_rejects_bad_weights() -> None:
    with pytest.raises(ValueError):
        opnorm.conv2d_l2_bound(np.ones((2, 3, 3)), (1, 1), (0, 0), (5, 5))
    k = np.ones((1, 1, 3, 3))
    k[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError):
        opnorm.conv2d_l2_bound(k, (1, 1), (0, 0), (5, 5))
    with pytest.raises(ValueError):
        opnorm.conv2d_l2_bound(np.ones((1, 1, 3, 3)), (1, 1), (0, 0), (5, 5), "fft")  # type: ignore[arg-type]


@HYP
@given(conv_cases())
def test_conv2d_l2_explicit_is_sound_and_exact(case: tuple) -> None:
    k, stride, padding, hw = case
    exact = svd_norm(conv_operator(k, stride, padding, hw))
    bound = opnorm.conv2d_l2_bound(k, stride, padding, hw, ConvBoundMethod.EXPLICIT)
    assert exact <= bound <= exact * EXACT_TOL
    assert opnorm.conv2d_l2_bound(k, stride, padding, hw) == bound  # AUTO is explicit here


@HYP
@given(conv_cases())
def test_conv2d_l2_fft_is_sound(case: tuple) -> None:
    """FFT with the default folding of cheap axes: measured gap <= ~3% on these small inputs."""
    k, stride, padding, hw = case
    exact = svd_norm(conv_operator(k, stride, padding, hw))
    bound = opnorm.conv2d_l2_bound(k, stride, padding, hw, ConvBoundMethod.FFT)
    assert bound >= exact
    assert bound <= 1.10 * exact


@HYP
@given(conv_cases())
def test_conv2d_l2_pure_circulant_is_sound(case: tuple) -> None:
    """The circulant + polyphase + Gram iteration path alone (no axis folded).

    Measured on these tiny inputs (zero padding, few output rows): median gap ~0.7%, 99th
    percentile ~25-30%, worst seen 1.84x (an exhaustive sweep of 4-5 pixel inputs with 4-tap
    kernels and a single output row). 2.5 is that empirical envelope; the provable envelope is
    ``sum_taps ||K[:, :, a, b]||_2`` (triangle inequality on every frequency block), which the
    exact norm is at least ``max_taps ||K[:, :, a, b]||_2``.
    """
    k, stride, padding, hw = case
    exact = svd_norm(conv_operator(k, stride, padding, hw))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(opnorm, "_FOLD_MAX_SIDE", 0)
        bound = opnorm.conv2d_l2_bound(k, stride, padding, hw, ConvBoundMethod.FFT)
    assert bound >= exact
    tap_sum = sum(svd_norm(k[:, :, a, b]) for a in range(k.shape[2]) for b in range(k.shape[3]))
    assert bound <= tap_sum * EXACT_TOL
    assert bound <= 2.5 * exact


@pytest.mark.parametrize(
    ("c_out", "c_in", "k", "s", "p", "hw", "tol"),
    [
        (3, 2, 3, 1, 1, 16, 1.01),
        (4, 3, 4, 2, 1, 16, 1.01),
        (2, 1, 3, 1, 1, 28, 1.005),
        (3, 2, 4, 2, 1, 28, 1.005),
        (2, 2, 5, 3, 2, 28, 1.01),
    ],
)
def test_conv2d_l2_fft_tight_on_larger_inputs(
    c_out: int, c_in: int, k: int, s: int, p: int, hw: int, tol: float
) -> None:
    rng = np.random.default_rng(c_out * 100 + k * 10 + hw)
    kernel = rng.standard_normal((c_out, c_in, k, k))
    exact = svd_norm(conv_operator(kernel, (s, s), (p, p), (hw, hw)))
    bound = opnorm.conv2d_l2_bound(kernel, (s, s), (p, p), (hw, hw), ConvBoundMethod.FFT)
    assert exact <= bound <= tol * exact


def test_conv2d_l2_pure_circulant_tight_on_larger_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opnorm, "_FOLD_MAX_SIDE", 0)
    rng = np.random.default_rng(7)
    for c_out, c_in, k, s, p, hw in [(4, 4, 3, 1, 1, 16), (4, 3, 4, 2, 1, 28)]:
        kernel = rng.standard_normal((c_out, c_in, k, k))
        exact = svd_norm(conv_operator(kernel, (s, s), (p, p), (hw, hw)))
        bound = opnorm.conv2d_l2_bound(kernel, (s, s), (p, p), (hw, hw), ConvBoundMethod.FFT)
        assert exact <= bound <= 1.015 * exact


def test_conv2d_l2_gram_route_for_large_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """EXPLICIT above the materialisation threshold goes through the conv/adjoint Gram matrix."""
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((3, 2, 3, 3))
    exact = svd_norm(conv_operator(kernel, (2, 1), (1, 0), (9, 8)))
    monkeypatch.setattr(opnorm, "_EXPLICIT_MAX_ENTRIES", 0)
    bound = opnorm.conv2d_l2_bound(kernel, (2, 1), (1, 0), (9, 8), ConvBoundMethod.EXPLICIT)
    assert exact <= bound <= exact * EXACT_TOL


def test_conv2d_l2_special_kernels() -> None:
    assert opnorm.conv2d_l2_bound(np.zeros((2, 3, 3, 3)), (1, 1), (1, 1), (8, 8)) == 0.0
    for method in ConvBoundMethod:
        # 1x1 conv = the channel-mixing matrix at every pixel: norm = ||K[:, :, 0, 0]||_2
        k = np.arange(6.0).reshape(3, 2, 1, 1)
        bound = opnorm.conv2d_l2_bound(k, (1, 1), (0, 0), (6, 5), method)
        assert bound == pytest.approx(svd_norm(k[:, :, 0, 0]), rel=2e-6)
        assert bound >= svd_norm(k[:, :, 0, 0])


def test_gram_iteration_bound_is_an_upper_bound() -> None:
    rng = np.random.default_rng(0)
    b = rng.standard_normal((20, 6, 9)) + 1j * rng.standard_normal((20, 6, 9))
    blocks = b @ np.conj(b.transpose(0, 2, 1))
    lam = opnorm._gram_iteration_bound(blocks)
    exact = float(np.max(np.linalg.eigvalsh(blocks)[:, -1]))
    # a theorem in exact arithmetic; in float64 it converges to lambda_max up to a few ulps (the
    # public functions cover that with ROUNDING_ALLOWANCE)
    assert exact * (1 - 1e-12) <= lam <= exact * (1 + 1e-9)
    # few Gram steps: still an upper bound, just looser
    b = rng.standard_normal((5, 8, 8)) + 1j * rng.standard_normal((5, 8, 8))
    blocks = b @ np.conj(b.transpose(0, 2, 1))
    exact = float(np.max(np.linalg.eigvalsh(blocks)[:, -1]))
    for steps in (1, 2, 3):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(opnorm, "_GRAM_MIN_STEPS", steps)
            mp.setattr(opnorm, "_GRAM_MAX_STEPS", steps)
            assert opnorm._gram_iteration_bound(blocks) >= exact * (1 - 1e-12)


# ------------------------------------------------------------------------------------------------
# avgpool


@pytest.mark.parametrize(
    ("kernel", "stride", "hw"),
    [
        ((2, 2), (2, 2), (8, 8)),
        ((3, 3), (1, 1), (7, 6)),
        ((3, 2), (2, 3), (9, 8)),
        ((1, 1), (2, 2), (5, 5)),
        ((4, 4), (3, 3), (10, 11)),
    ],
)
def test_avgpool2d_l2_bound(
    kernel: tuple[int, int], stride: tuple[int, int], hw: tuple[int, int]
) -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.reshape(1, 1, *hw), kernel, stride).reshape(-1)

    x0 = torch.zeros(hw[0] * hw[1], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(f, x0, vectorize=True)
    assert isinstance(jac, torch.Tensor)
    exact = svd_norm(jac.numpy())
    bound = opnorm.avgpool2d_l2_bound(kernel, stride)
    assert bound >= exact
    if kernel == stride:  # non-overlapping windows: the Schur test is exact
        assert bound <= exact * EXACT_TOL


def test_avgpool2d_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        opnorm.avgpool2d_l2_bound((0, 2), (1, 1))
    with pytest.raises(ValueError):
        opnorm.avgpool2d_l2_bound((2, 2), (1, 0))


# ------------------------------------------------------------------------------------------------
# conv linf -> l2 and abs


@HYP
@given(conv_cases(max_c=2, max_k=3, hw_range=(2, 4)))
def test_conv2d_linf_to_l2_bound(case: tuple) -> None:
    k, stride, padding, hw = case
    a = conv_operator(k, stride, padding, hw)
    assume(a.shape[1] <= 10)
    exact = linf_to_l2_exact(a)
    explicit = opnorm.conv2d_linf_to_l2_bound(k, stride, padding, hw)
    assert explicit >= exact
    assert explicit == pytest.approx(opnorm.dense_linf_to_l2_bound(a), rel=1e-12)
    # the structural route (used for large operators) must be sound as well
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(opnorm, "_EXPLICIT_MAX_ENTRIES", 0)
        mp.setattr(opnorm, "_AUTO_EXPLICIT_FLOPS", 0.0)
        structural = opnorm.conv2d_linf_to_l2_bound(k, stride, padding, hw)
    assert structural >= exact
    assert structural >= explicit * (1 - 1e-12)


def test_conv2d_linf_to_l2_structural_on_larger_input(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    k = rng.standard_normal((4, 2, 3, 3))
    a = conv_operator(k, (2, 1), (1, 1), (12, 10))
    # lower bounds of the true value: random and greedy sign vectors
    signs = rng.choice([-1.0, 1.0], size=(4000, a.shape[1]))
    lower = float(np.max(np.linalg.norm(signs @ a.T, axis=1)))
    explicit = opnorm.conv2d_linf_to_l2_bound(k, (2, 1), (1, 1), (12, 10))
    monkeypatch.setattr(opnorm, "_EXPLICIT_MAX_ENTRIES", 0)
    structural = opnorm.conv2d_linf_to_l2_bound(k, (2, 1), (1, 1), (12, 10))
    assert structural >= explicit * (1 - 1e-12) >= lower
    assert structural == pytest.approx(explicit, rel=1e-9)  # same three candidates


@HYP
@given(conv_cases())
def test_conv2d_abs_l2_bound(case: tuple) -> None:
    k, stride, padding, hw = case
    exact = svd_norm(np.abs(conv_operator(k, stride, padding, hw)))
    bound = opnorm.conv2d_abs_l2_bound(k, stride, padding, hw)
    assert bound >= exact
    assert bound <= exact * EXACT_TOL  # small: AUTO is explicit


@pytest.mark.parametrize("scale", [1e-200, 1.0, 1e200])
def test_collatz_wielandt_bound_extreme_scales(scale: float) -> None:
    rng = np.random.default_rng(2)
    k = rng.uniform(0.0, 1.0, (2, 3, 3, 2)) * scale
    exact = svd_norm(conv_operator(k, (2, 1), (1, 0), (7, 6)))
    cw = opnorm._collatz_wielandt_bound(k, (2, 1), (1, 0), (7, 6))
    assert exact <= cw <= 1.2 * exact


def test_conv2d_abs_l2_bound_large_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    k = rng.standard_normal((3, 2, 3, 3))
    exact = svd_norm(np.abs(conv_operator(k, (1, 1), (1, 1), (14, 12))))
    monkeypatch.setattr(opnorm, "_EXPLICIT_MAX_ENTRIES", 0)
    monkeypatch.setattr(opnorm, "_AUTO_EXPLICIT_FLOPS", 0.0)
    cw = opnorm._collatz_wielandt_bound(np.abs(k), (1, 1), (1, 1), (14, 12))
    bound = opnorm.conv2d_abs_l2_bound(k, (1, 1), (1, 1), (14, 12))
    assert cw >= exact
    assert bound >= exact
    assert bound <= 1.02 * exact
