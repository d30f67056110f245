import pickle

import numpy as np
import pytest
import torch
from torch import nn

from verispec.errors import ModelFileError
from verispec.layers import MinMax
from verispec.modelfile import load_model, save_model
from verispec.network import Network


def _net() -> Network:
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), MinMax(), nn.Flatten(), nn.Linear(32, 3))
    return Network.from_torch(seq, (1, 4, 4))


def test_round_trip_is_exact(tmp_path):
    net = _net()
    save_model(net, tmp_path / "m.pt", {"note": "x"})
    back, meta = load_model(tmp_path / "m.pt")
    assert meta == {"note": "x"}
    assert back.fingerprint() == net.fingerprint()
    x = np.random.default_rng(0).uniform(size=(3, 1, 4, 4))
    assert np.array_equal(back.forward64(x), net.forward64(x))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="not a verispec model"):
        load_model(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2), "epoch": 3}, other)
    with pytest.raises(ModelFileError, match="no format tag"):
        load_model(other)
    state = tmp_path / "state.pt"
    torch.save({"weights": torch.zeros(2)}, state)
    with pytest.raises(ModelFileError, match="state_dict") as info:
        load_model(state)
    assert "vs.Network.from_torch(module, input_shape)" in str(info.value)
    assert "vs.save_model(network" in str(info.value)


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(ModelFileError):
        load_model(path)
    torch.save({"format": "verispec-model", "evil": _Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "evil2.pt")
    assert not (tmp_path / "PWNED").exists()


def test_config_mismatch_is_reported(tmp_path):
    net = _net()
    path = tmp_path / "m.pt"
    save_model(net, path)
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["3.weight"] = torch.zeros(3, 31, dtype=torch.float64)
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match=r"3\.weight"):
        load_model(path)
