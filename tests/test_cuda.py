"""On a CUDA device (``pytest -m cuda``; skipped without one, run by ``bench/gpu_check.sh``):
the float32 rounding-error bound holds on the GPU against float64 logits computed on the CPU,
with TF32 requested by the user; every engine, the shipped spec files (ensembles and the
self-correcting layer included) and training run on CUDA; and the deterministic engines
never contradict their CPU verdicts."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.strategies import hard_networks, small_networks
from verispec.cli import main
from verispec.engines.base import engine_class
from verispec.engines.lipschitz_bounds import layer_bounds
from verispec.engines.roundoff import RoundoffForward
from verispec.errors import UnsupportedError
from verispec.modelfile import load_network
from verispec.regions import Norm
from verispec.results import Verdict
from verispec.specs import LocalRobustness

DEVICE = os.environ.get("VERISPEC_TEST_DEVICE", "cuda")
"""The device under test: CUDA, or another for a dry run (``bench/gpu_check.sh --device cpu``)."""

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.startswith("cuda") and not torch.cuda.is_available(),
        reason="needs a CUDA device (bench/gpu_check.sh runs these on a GPU)",
    ),
]

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _user_tf32():
    """The process asks for TF32 everywhere, as many training scripts do."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@settings(deadline=None, max_examples=200)
@given(small_networks() | hard_networks(), st.integers(0, 2**32 - 1))
def test_the_float32_bound_on_cuda_covers_the_cpu_float64_logits(network, seed):
    lips = [b.l2 for b in layer_bounds(network, len(network.layers), fold=False)]
    try:
        forward = RoundoffForward(network, lips, torch.float32, torch.device(DEVICE))
    except UnsupportedError:
        assume(False)  # a constant float32 cannot hold: the engine refuses, as it should
    xs = np.random.default_rng(seed).uniform(0, 1, (64, *network.input_shape))
    with _user_tf32():
        logits, err = forward(xs)
    reference = network.forward64(xs)
    actual = np.linalg.norm(logits - reference, axis=1)
    finite = np.isfinite(err)  # an infinite bound (overflow) certifies nothing
    assert np.all(actual[finite] <= err[finite]), (actual - err)[finite].max()


def _digits() -> tuple:
    from verispec.data import load_data

    data = load_data("sklearn:digits").take(40)
    return data.x, data.y


@pytest.mark.parametrize("name", ["lipschitz", "crown", "projections", "smoothing"])
def test_every_engine_runs_on_cuda_and_agrees_with_the_cpu(name):
    model = "digits_noise.pt" if name == "smoothing" else "digits_mlp.pt"
    network = load_network(ROOT / "specs/models" / model)
    xs, ys = _digits()
    spec = LocalRobustness(eps=0.3, norm=Norm.L2)
    cls = engine_class(name)
    on = {}
    for device in ("cpu", DEVICE):
        engine = cls(attrs.evolve(cls.Config(), device=device))
        on[device] = engine.numbered(0).check(network, spec, xs, ys)
    assert len(on[DEVICE]) == len(xs)
    if name == "smoothing":
        return  # another noise stream on the GPU: other counts, each sound
    for a, b in zip(on["cpu"].results(), on[DEVICE].results(), strict=True):
        assert {a.verdict, b.verdict} != {Verdict.CERTIFIED, Verdict.FALSIFIED}, (a, b)


@pytest.mark.parametrize("spec", sorted(p.name for p in (ROOT / "specs").glob("*.toml")))
def test_the_shipped_spec_files_run_on_cuda(spec):
    if "milp" in (ROOT / "specs" / spec).read_text():
        pytest.importorskip("highspy")  # the device machine may lack the CPU solvers
    got = CliRunner().invoke(
        main, ["check", str(ROOT / "specs" / spec), "--device", DEVICE, "--limit", "10"]
    )
    assert got.exit_code == 0, got.output


def test_training_runs_an_epoch_on_cuda():
    from verispec.data import load_data
    from verispec.train.architectures import Arch, ArchConfig
    from verispec.train.loop import TrainConfig, train

    data = load_data("sklearn:digits")
    model, log = train(
        TrainConfig(ArchConfig(Arch.MINMAX_MLP), device=DEVICE, epochs=1), data, data
    )
    assert next(model.parameters()).device.type == torch.device(DEVICE).type and len(log) == 1
