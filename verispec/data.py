"""Datasets: the embedded default (scikit-learn's digits) and user files.

Sources (the same strings in spec files and on the command line):

- ``sklearn:digits``: 1,797 8x8 digits scaled to [0, 1]; a fixed stratified split
  (75% train / 25% test, seed 0).
- ``npz:PATH``: arrays ``x`` and ``y`` (split "all"), or
  ``x_train``/``y_train``/``x_test``/``y_test``.
- ``idx:IMAGES,LABELS``: MNIST IDX files (gzip or not); pixels scaled by 1/255.
- ``csv:PATH``: one example per line, pixel values then the label (gzip or not); scaled by 1/255
  when any value exceeds 1.
- ``mnist:DIR``: the MNIST protocol of ``../shared/data/README.md`` (the 60k training split is
  not available): train = ``mnist_train_5k.csv.gz`` plus the first 8,000 images of
  ``t10k-images-idx3-ubyte.gz``; test = the last 2,000 test images; pixels in [0, 1].
"""

from __future__ import annotations

import enum
import gzip
import struct
from pathlib import Path

import attrs
import numpy as np

from verispec.errors import DataError
from verispec.regions import FloatArray, frozen_array


class Split(enum.Enum):
    """Which part of a data source to use."""

    TRAIN = "train"
    TEST = "test"
    ALL = "all"


@attrs.frozen(eq=False)
class Dataset:
    """Inputs ``x`` (n, *shape) float64 and integer labels ``y`` (n,); values in [lo, hi] when
    ``domain`` is set."""

    x: FloatArray = attrs.field(converter=frozen_array)
    y: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.int64))
    name: str = ""
    domain: tuple[float, float] | None = None

    def __attrs_post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.name}: {self.x.shape[0]} inputs but {self.y.shape[0]} labels")
        if not np.all(np.isfinite(self.x)):
            raise DataError(f"{self.name}: inputs contain NaN or infinity")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, limit: int | None) -> Dataset:
        """The first ``limit`` points (all when None)."""
        if limit is None:
            return self
        return attrs.evolve(self, x=self.x[:limit], y=self.y[:limit])

    def shaped(self, input_shape: tuple[int, ...]) -> Dataset:
        """The same data with each input reshaped to ``input_shape``; raises DataError if the
        sizes differ."""
        size = int(np.prod(input_shape))
        per_point = int(np.prod(self.x.shape[1:]))
        if per_point != size:
            raise DataError(
                f"{self.name}: inputs have {per_point} values ({self.x.shape[1:]}), the model "
                f"expects {size} {input_shape}"
            )
        return attrs.evolve(self, x=self.x.reshape((-1, *input_shape)))


def _digits(split: Split) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.reshape(-1, 1, 8, 8) / 16.0
    y = bunch.target
    if split is Split.ALL:
        return Dataset(x, y, "sklearn:digits", (0.0, 1.0))
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    if split is Split.TRAIN:
        return Dataset(x_tr, y_tr, "sklearn:digits[train]", (0.0, 1.0))
    return Dataset(x_te, y_te, "sklearn:digits[test]", (0.0, 1.0))


def _open(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: corrupt gzip data ({err})") from None
    return raw


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (unsigned bytes), as in the MNIST distribution."""
    raw = _open(path)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise DataError(
            f"{path}: IDX header promises {count} values, file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx(spec: str, base: Path, split: Split) -> Dataset:
    parts = spec.split(",")
    if len(parts) != 2:
        raise DataError(f"idx source must be 'idx:IMAGES,LABELS', got 'idx:{spec}'")
    images, labels = (read_idx(base / p.strip()) for p in parts)
    if images.ndim == 3:
        images = images[:, None, :, :]
    _require_all(split, f"idx:{spec}")
    return Dataset(images / 255.0, labels, f"idx:{spec}", (0.0, 1.0))


def _csv(spec: str, base: Path, split: Split) -> Dataset:
    path = base / spec
    text = _open(path).decode()
    try:
        table = np.loadtxt(text.splitlines(), delimiter=",", ndmin=2)
    except ValueError as err:
        raise DataError(f"{path}: not a numeric CSV ({err})") from None
    x, y = table[:, :-1], table[:, -1]
    if x.max() > 1.0:
        x = x / 255.0
    _require_all(split, f"csv:{spec}")
    side = round(np.sqrt(x.shape[1]))
    if side * side == x.shape[1]:
        x = x.reshape(-1, 1, side, side)
    return Dataset(x, y.astype(np.int64), f"csv:{spec}", (0.0, 1.0) if x.min() >= 0 else None)


def _npz(spec: str, base: Path, split: Split) -> Dataset:
    path = base / spec
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    keys = set(arrays.files)
    if split is Split.ALL and {"x", "y"} <= keys:
        return Dataset(arrays["x"], arrays["y"], f"npz:{spec}")
    suffix = {Split.TRAIN: "_train", Split.TEST: "_test"}.get(split)
    if suffix and {"x" + suffix, "y" + suffix} <= keys:
        return Dataset(arrays["x" + suffix], arrays["y" + suffix], f"npz:{spec}[{split.value}]")
    raise DataError(
        f"{path}: split {split.value!r} needs arrays "
        + ("'x' and 'y'" if split is Split.ALL else f"'x{suffix}' and 'y{suffix}'")
        + f"; the file has {sorted(keys)}"
    )


MNIST_TEST_HOLDOUT = 2000


def _mnist(spec: str, base: Path, split: Split) -> Dataset:
    root = base / spec
    t10k = _idx("t10k-images-idx3-ubyte.gz,t10k-labels-idx1-ubyte.gz", root, Split.ALL)
    cut = len(t10k) - MNIST_TEST_HOLDOUT
    name = f"mnist:{spec}"
    if split is Split.TEST:
        return Dataset(t10k.x[cut:], t10k.y[cut:], f"{name}[test]", (0.0, 1.0))
    extra = _csv("mnist_train_5k.csv.gz", root, Split.ALL)
    x = np.concatenate([extra.x, t10k.x[:cut]])
    y = np.concatenate([extra.y, t10k.y[:cut]])
    if split is Split.TRAIN:
        return Dataset(x, y, f"{name}[train]", (0.0, 1.0))
    return Dataset(
        np.concatenate([x, t10k.x[cut:]]), np.concatenate([y, t10k.y[cut:]]), name, (0.0, 1.0)
    )


def _require_all(split: Split, name: str) -> None:
    if split is not Split.ALL:
        raise DataError(f"{name} has no train/test split: use split = 'all'")


def load_data(source: str, split: Split = Split.TEST, base_dir: str | Path = ".") -> Dataset:
    """Load a data source (see the module docstring); relative paths are taken from ``base_dir``."""
    scheme, sep, rest = source.partition(":")
    base = Path(base_dir)
    if not sep:
        raise DataError(f"data source {source!r} has no scheme: use sklearn:, npz:, idx: or csv:")
    if scheme == "sklearn":
        if rest != "digits":
            raise DataError(f"unknown scikit-learn dataset {rest!r}: only 'sklearn:digits'")
        return _digits(split)
    loaders = {"npz": _npz, "idx": _idx, "csv": _csv, "mnist": _mnist}
    if scheme not in loaders:
        raise DataError(
            f"unknown data scheme {scheme!r} in {source!r}: use sklearn, npz, idx or csv"
        )
    return loaders[scheme](rest, base, split)
