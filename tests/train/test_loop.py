import attrs
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
    # every figure but the wall-clock seconds repeats exactly
    assert [attrs.evolve(e, seconds=0.0) for e in log1] == [
        attrs.evolve(e, seconds=0.0) for e in log2
    ]
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


def test_unit_init_gives_body_layers_operator_norm_one():
    from verispec.engines.lipschitz import layer_bounds
    from verispec.network import Network
    from verispec.train.lipschitz import PowerIteration

    torch.manual_seed(0)
    shape = (1, 12, 12)
    model = build(ArchConfig(Arch.C2F2), shape, 10)
    PowerIteration(model, shape).normalise_body(iterations=500)
    net = Network.from_torch(model.eval(), shape)
    body = [b.l2 for b in layer_bounds(net, len(net.layers)) if b.linear][:-1]
    assert len(body) == 3
    # power iteration approaches each norm from below, so the sound bound is >= 1
    assert all(1.0 - 1e-6 <= k <= 1.05 for k in body), body


def test_more_power_iterations_track_the_moving_spectral_norm():
    """After Adam steps the estimate lags the true norm; more iterations a step close the gap."""
    from verispec.train import losses
    from verispec.train.lipschitz import PowerIteration, sound_constant

    shape = (1, 12, 12)
    x = torch.rand(64, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(64) % 10
    gaps = []
    for iterations in (1, 5):
        torch.manual_seed(0)
        model = build(ArchConfig(Arch.C2F2), shape, 10)
        est = PowerIteration(model, shape)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(8):
            k = est.body_constant(iterations)
            loss = losses.gloro_loss(model(x), y, est.pairwise(k), 0.3)
            opt.zero_grad()
            loss.backward()
            opt.step()
        estimate = float(est.body_constant(iterations).detach())
        gaps.append(sound_constant(model, shape) / estimate)
    assert gaps[0] >= 1.0 and gaps[1] >= 1.0
    assert gaps[1] < gaps[0]


def test_power_iterations_and_unit_init_are_recorded_and_validated(digits):
    cfg = TrainConfig(
        ArchConfig(Arch.MINMAX_MLP, width=16, depth=1),
        eps=EpsSchedule(0.3, warmup=0.0),
        epochs=1,
        batch_size=64,
        power_iterations=3,
        unit_init=True,
    )
    assert cfg.to_dict()["power_iterations"] == 3 and cfg.to_dict()["unit_init"] is True
    _, log = train(cfg, *digits)
    assert log[0].k_sound > 0
    with pytest.raises(ValueError):
        TrainConfig(ArchConfig(Arch.MINMAX_MLP), power_iterations=0)
