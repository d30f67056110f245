import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from verispec.data import Dataset, Split, load_data, read_idx
from verispec.errors import DataError


def test_digits_split_is_fixed_stratified_and_scaled():
    train, test = load_data("sklearn:digits", Split.TRAIN), load_data("sklearn:digits", Split.TEST)
    assert len(train) + len(test) == 1797
    assert test.x.shape[1:] == (1, 8, 8)
    assert test.x.min() >= 0 and test.x.max() <= 1
    assert np.bincount(test.y).min() >= 43 and np.bincount(test.y).max() <= 46
    again = load_data("sklearn:digits", Split.TEST)
    assert np.array_equal(again.x, test.x)


def _idx(path, arr, gz):
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files(tmp_path, gz):
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    _idx(tmp_path / "i", images, gz)
    _idx(tmp_path / "l", np.array([4, 7], dtype=np.uint8), gz)
    ds = load_data("idx:i,l", Split.ALL, tmp_path)
    assert ds.x.shape == (2, 1, 3, 3) and ds.y.tolist() == [4, 7]
    assert np.isclose(ds.x.max(), 17 / 255)
    (tmp_path / "t").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(DataError, match="promises 5"):
        read_idx(tmp_path / "t")


def test_npz_and_errors(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.array([0, 1, 0]))
    assert len(load_data("npz:d.npz", Split.ALL, tmp_path)) == 3
    with pytest.raises(DataError, match="x_test"):
        load_data("npz:d.npz", Split.TEST, tmp_path)
    with pytest.raises(DataError, match="unknown data scheme"):
        load_data("hdf5:x", Split.ALL)
    with pytest.raises(DataError, match="does not exist"):
        load_data("npz:missing.npz", Split.ALL, tmp_path)
    np.savez(tmp_path / "n.npz", x=np.array([[np.nan]]), y=np.array([0]))
    with pytest.raises(DataError, match="NaN"):
        load_data("npz:n.npz", Split.ALL, tmp_path)


def test_shaped_checks_sizes():
    ds = load_data("sklearn:digits", Split.TEST)
    assert ds.shaped((64,)).x.shape == (len(ds), 64)
    with pytest.raises(DataError, match="expects 65"):
        ds.shaped((65,))


MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.mark.skipif(not MNIST.is_dir(), reason="the shared MNIST files are not present")
def test_mnist_protocol_split():
    train = load_data(f"mnist:{MNIST}", Split.TRAIN)
    test = load_data(f"mnist:{MNIST}", Split.TEST)
    assert len(train) == 13000 and len(test) == 2000
    assert train.x.shape[1:] == (1, 28, 28) and train.x.min() >= 0 and train.x.max() <= 1
    raw = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")
    assert np.array_equal(test.y, raw[-2000:]) and np.array_equal(train.y[5000:], raw[:8000])


def test_the_data_domain_fits_the_specs() -> None:
    import verispec as vs

    data = load_data("sklearn:digits")
    box = data.domain_box()
    assert box is not None and box.lo.shape == (1, 8, 8) and float(box.hi.max()) == 1.0
    x, logits = data.x[0], np.arange(10.0)
    goal = vs.LocalRobustness(0.1, vs.Norm.L2).at(x, logits, data.domain)
    region = goal.alternatives[0].region
    assert isinstance(region, vs.Ball) and region.domain is not None
    assert np.array_equal(region.domain.lo, box.lo)


@pytest.mark.parametrize(
    ("y", "fragment"),
    [
        (np.array([0, 1, -2]), "negative"),
        (np.array([0.0, 1.0, 2.5]), "not an integer"),
        (np.eye(3), "one-hot"),
        (np.array([True, False, True]), "integer class indices"),
        (np.array(["a", "b", "c"]), "integer class indices"),
        (np.zeros((3, 2, 2)), "one class index per point"),
    ],
)
def test_labels_must_be_class_indices(y: np.ndarray, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment) as info:
        Dataset(np.zeros((3, 4)), y, "mine")
    assert "mine" in str(info.value)


def test_integral_float_labels_and_class_checks() -> None:
    data = Dataset(np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), "mine")
    assert data.y.dtype == np.int64
    data.check_classes(3)
    with pytest.raises(DataError, match=r"mine: label 2 of point 2 .* 2 classes"):
        data.check_classes(2)
    with pytest.raises(DataError, match="no points"):
        data.take(0)
