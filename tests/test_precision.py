"""The arithmetic of certified passes (verispec/precision.py): inside ``certified_arithmetic``
no TF32 or bfloat16 matmul and no cuDNN convolution is allowed, every flag is restored
afterwards (after an error too), and every engine's ``check`` runs inside it whatever the user
set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_cluster import ROOT
from verispec.engines.lipschitz import LipschitzEngine
from verispec.errors import DeviceError
from verispec.modelfile import load_network
from verispec.precision import arithmetic_flags, certified_arithmetic
from verispec.regions import Norm
from verispec.specs import LocalRobustness


def _pinned(flags: dict) -> bool:
    """IEEE matmuls, every fp32 precision flag "ieee" (torch >= 2.9) and cuDNN off."""
    precisions = [v for k, v in flags.items() if k.startswith("fp32_precision")]
    legacy = [flags.get("cuda_matmul_allow_tf32", False), flags.get("cudnn_allow_tf32", False)]
    return (
        flags["float32_matmuls"] == "ieee"
        and not flags["cudnn_enabled"]
        and all(v == "ieee" for v in precisions)
        and not any(legacy)
    )


@pytest.fixture
def user_allows_tf32():
    """The user's process asks for TF32 matmuls and convolutions, with the legacy flags (as
    most training scripts do)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    yield arithmetic_flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_the_flags_are_pinned_inside_and_restored_after(user_allows_tf32):
    assert user_allows_tf32["float32_matmuls"] == "tf32"
    with certified_arithmetic():
        assert _pinned(arithmetic_flags())
    assert arithmetic_flags() == user_allows_tf32
    with pytest.raises(RuntimeError), certified_arithmetic():
        raise RuntimeError("a failing pass")
    assert arithmetic_flags() == user_allows_tf32


def test_every_engine_check_runs_in_certified_arithmetic(user_allows_tf32, monkeypatch):
    seen = []
    real = LipschitzEngine._decide_points

    def spy(self, *args, **kwargs):
        seen.append(arithmetic_flags())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LipschitzEngine, "_decide_points", spy)
    net = load_network(ROOT / "specs/models/digits_mlp.pt")
    xs = np.random.default_rng(0).uniform(0, 1, (4, *net.input_shape))
    LipschitzEngine().check(net, LocalRobustness(eps=0.3, norm=Norm.L2), xs)
    assert len(seen) == 1 and _pinned(seen[0])
    assert arithmetic_flags() == user_allows_tf32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_training_on_cuda_without_it_is_a_clear_error():
    from verispec.data import load_data
    from verispec.train.architectures import Arch, ArchConfig
    from verispec.train.loop import TrainConfig, train

    data = load_data("sklearn:digits")
    config = TrainConfig(ArchConfig(Arch.MINMAX_MLP), device="cuda", epochs=1)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        train(config, data, data)
