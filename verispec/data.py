"""Datasets: the embedded default (scikit-learn's digits) and user files.

Sources (the same strings in spec files and on the command line):

- ``sklearn:digits``: 1,797 8x8 digits scaled to [0, 1]; a fixed stratified split
  (75% train / 25% test, seed 0).
- ``npz:PATH``: arrays ``x`` and ``y`` (split "all"), or
  ``x_train``/``y_train``/``x_test``/``y_test``.
- ``idx:IMAGES,LABELS``: MNIST IDX files (gzip or not); pixels scaled by 1/255.
- ``csv:PATH``: one example per line, pixel values then the label (gzip or not); scaled by 1/255
  when any value exceeds 1.
- ``mnist:DIR``: verispec's MNIST protocol (the 60k training split is
  not available): train = ``mnist_train_5k.csv.gz`` plus the first 8,000 images of
  ``t10k-images-idx3-ubyte.gz``; test = the last 2,000 test images; pixels in [0, 1].
"""

from __future__ import annotations

import enum
import gzip
import struct
import zipfile
from pathlib import Path

import attrs
import numpy as np

from verispec.errors import DataError
from verispec.regions import Box, FloatArray, frozen_array


class Split(enum.Enum):
    """Which part of a data source to use."""

    TRAIN = "train"
    TEST = "test"
    ALL = "all"


def _array(value: object) -> np.ndarray:
    try:
        return np.asarray(value)
    except ValueError as err:
        raise DataError(f"data arrays must be rectangular numeric arrays ({err})") from None


@attrs.frozen(eq=False)
class Dataset:
    """Inputs ``x`` (n, *shape) float64 and integer labels ``y`` (n,); values in [lo, hi] when
    ``domain`` is set. At least one point; every label a class index (an integer >= 0; one-hot
    rows are refused: give ``y.argmax(axis=1)``). Anything else raises ``DataError`` naming
    the data source."""

    x: FloatArray = attrs.field(converter=_array)
    y: np.ndarray = attrs.field(converter=_array)
    name: str = ""
    domain: tuple[float, float] | None = None

    def __attrs_post_init__(self) -> None:
        where = self.name or "the data"
        x, y = self.x, self.y
        if x.dtype.kind not in "fiu":
            raise DataError(
                f"{where}: inputs x must be a numeric array, got dtype {x.dtype} "
                "(save plain float arrays)"
            )
        if x.ndim < 2:
            raise DataError(
                f"{where}: inputs x have shape {x.shape}; they must be (points, features...), "
                "one row per point"
            )
        if x.shape[0] == 0:
            raise DataError(f"{where}: the data holds no points (x has shape {x.shape})")
        object.__setattr__(self, "x", frozen_array(x))
        if not np.all(np.isfinite(self.x)):
            raise DataError(f"{where}: inputs contain NaN or infinity")
        object.__setattr__(self, "y", _labels(where, y))
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{where}: {self.x.shape[0]} inputs but {self.y.shape[0]} labels")
        if self.domain is not None:
            lo, hi = _domain(where, self.domain)
            if self.x.min() < lo or self.x.max() > hi:
                raise DataError(
                    f"{where}: inputs range over [{self.x.min():g}, {self.x.max():g}], outside "
                    f"the domain [{lo:g}, {hi:g}]"
                )
            object.__setattr__(self, "domain", (lo, hi))

    def domain_box(self, shape: tuple[int, ...] | None = None) -> Box | None:
        """The domain as a ``Box`` over inputs of ``shape`` (default: the data's own input
        shape), the region type specs and engines take; None when the data has no domain."""
        if self.domain is None:
            return None
        return Box.uniform(self.domain[0], self.domain[1], shape or tuple(self.x.shape[1:]))

    def check_classes(self, num_classes: int) -> None:
        """Raise ``DataError`` naming the data and the first offending point if a label is not
        a class of a model with ``num_classes`` outputs."""
        bad = np.flatnonzero(self.y >= num_classes)
        if bad.size:
            raise DataError(
                f"{self.name or 'the data'}: label {int(self.y[bad[0]])} of point {int(bad[0])} "
                f"({bad.size} label(s) in all) is not a class of the model, which has "
                f"{num_classes} classes (0..{num_classes - 1})"
            )

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


def _labels(where: str, y: np.ndarray) -> np.ndarray:
    """Labels as read-only int64 class indices, or DataError saying what they look like."""
    if y.ndim == 2 and y.shape[1] > 1:
        hot = y.dtype.kind in "biuf" and np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)
        if hot:
            raise DataError(
                f"{where}: labels are one-hot rows (shape {y.shape}); give one class index per "
                "point instead, e.g. y.argmax(axis=1)"
            )
    if y.ndim != 1:
        raise DataError(f"{where}: labels have shape {y.shape}; give one class index per point")
    if y.dtype.kind == "b" or y.dtype.kind not in "fiu":
        raise DataError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            raise DataError(
                f"{where}: label {y[bad[0]]!r} of point {int(bad[0])} is not an integer class "
                f"index ({bad.size} such label(s))"
            )
    neg = np.flatnonzero(y < 0)
    if neg.size:
        raise DataError(
            f"{where}: label {y[neg[0]]} of point {int(neg[0])} is negative; class indices "
            "start at 0"
        )
    if y.size and float(y.max()) > 2**31:
        raise DataError(f"{where}: label {y.max()} is too large to be a class index")
    out = y.astype(np.int64)
    out.setflags(write=False)
    return out


def _domain(where: str, domain: object) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in domain)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise DataError(f"{where}: the domain must be a pair (lo, hi), got {domain!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise DataError(f"{where}: the domain must be finite with lo < hi, got {domain!r}")
    return lo, hi


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
    try:
        text = _open(path).decode()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text CSV file (byte {err.start} is not UTF-8)") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path}: the CSV file holds no rows")
    try:
        table = np.loadtxt(lines, delimiter=",", ndmin=2)
    except ValueError as err:
        raise DataError(f"{path}: not a numeric CSV ({err})") from None
    if table.shape[1] < 2:
        raise DataError(f"{path}: each row needs the pixel values and then the label")
    x, y = table[:, :-1], table[:, -1]
    if not np.all(np.isfinite(x)):
        raise DataError(f"{path}: the pixel values contain NaN or infinity")
    if x.max() > 1.0:
        x = x / 255.0
    _require_all(split, f"csv:{spec}")
    side = round(np.sqrt(x.shape[1]))
    if side * side == x.shape[1]:
        x = x.reshape(-1, 1, side, side)
    domain = (0.0, 1.0) if x.min() >= 0 and x.max() <= 1 else None
    return Dataset(x, y, f"csv:{spec}", domain)


def _npz(spec: str, base: Path, split: Split) -> Dataset:
    path = base / spec
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: holds a single array, not an .npz archive: save the inputs and labels "
            "with np.savez(path, x=x, y=y)"
        )
    keys = set(arrays.files)

    def read(key: str) -> np.ndarray:
        try:
            return np.asarray(arrays[key])
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            if "object arrays" in str(err).lower():
                raise DataError(
                    f"{path}: array {key!r} holds Python objects (dtype object), which are "
                    "never unpickled: save numeric arrays, e.g. np.savez(path, x=x.astype("
                    "np.float32), y=y.astype(np.int64))"
                ) from None
            raise DataError(f"{path}: array {key!r} cannot be read ({err})") from None

    def dataset(xk: str, yk: str, name: str) -> Dataset:
        try:
            return Dataset(read(xk), read(yk), name)
        except DataError as err:
            raise DataError(f"{path} (arrays {xk!r}, {yk!r}): {err}") from None

    if split is Split.ALL and {"x", "y"} <= keys:
        return dataset("x", "y", f"npz:{spec}")
    suffix = {Split.TRAIN: "_train", Split.TEST: "_test"}.get(split)
    if suffix and {"x" + suffix, "y" + suffix} <= keys:
        return dataset("x" + suffix, "y" + suffix, f"npz:{spec}[{split.value}]")
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
