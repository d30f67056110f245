import numpy as np
import pytest
import torch

from verispec.data import Split, load_data
from verispec.errors import UnsupportedError
from verispec.regions import Norm
from verispec.train import (
    Arch,
    ArchConfig,
    EpsSchedule,
    LossKind,
    LrSchedule,
    TrainConfig,
    build,
    train,
)


@pytest.fixture(scope="module")
def digits():
    return load_data("sklearn:digits", Split.TRAIN).take(400), load_data(
        "sklearn:digits", Split.TEST
    ).take(100)


@pytest.mark.parametrize("loss", [LossKind.GLORO, LossKind.TRADES, LossKind.EMMA])
def test_three_epochs_are_deterministic_and_lower_the_loss(digits, loss):
    cfg = TrainConfig(
        ArchConfig(Arch.MINMAX_MLP, width=32, depth=1),
        loss=loss,
        eps=EpsSchedule(0.3, warmup=0.0),
        lr=LrSchedule(3e-3),
        epochs=3,
        batch_size=64,
    )
    m1, log1 = train(cfg, *digits)
    m2, log2 = train(cfg, *digits)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert log1[-1].loss < log1[0].loss
    assert log1 == log2 or [e.loss for e in log1] == [e.loss for e in log2]
    assert all(e.k_sound > 0 for e in log1)


@pytest.mark.parametrize("arch", list(Arch))
def test_architectures_export_to_the_ir(arch):
    torch.manual_seed(0)
    shape = (1, 28, 28)
    model = build(ArchConfig(arch, width=8, depth=2, cholesky_head=True), shape, 10).eval()
    from verispec.network import Network

    net = Network.from_torch(model, shape)
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape))
    with torch.no_grad():
        ref = model(torch.tensor(x, dtype=torch.float32)).numpy()
    assert np.allclose(net.forward64(x), ref, atol=1e-4)


def test_unsupported_settings_are_refused():
    with pytest.raises(UnsupportedError, match="l2"):
        TrainConfig(ArchConfig(Arch.MINMAX_MLP), norm=Norm.LINF)
    with pytest.raises(UnsupportedError, match="GloRo"):
        TrainConfig(ArchConfig(Arch.MINMAX_MLP), loss=LossKind.EMMA, top_k=2)
