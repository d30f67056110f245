"""VNN-LIB parsing, negation into a safe property, writing and round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from verispec.errors import SpecFileError
from verispec.properties import Clause, Predicate, Property
from verispec.regions import Box
from verispec.vnnlib import VnnlibSpec, negate, parse_vnnlib, safe_property, write_vnnlib

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "vnncomp2021"
needs_bench = pytest.mark.skipif(
    not BENCH.is_dir(), reason=f"VNN-COMP 2021 benchmarks not found at {BENCH}"
)

# file, inputs, outputs, boxes, atoms per unsafe clause, atoms per safe clause
FILES = [
    ("test/test_nano.vnnlib", 1, 1, 1, [1], [1]),
    ("test/test_tiny.vnnlib", 1, 1, 1, [1], [1]),
    ("test/test_small.vnnlib", 1, 1, 1, [1], [1]),
    ("test/test_prop.vnnlib", 5, 5, 1, [4], [1, 1, 1, 1]),
    ("acasxu/prop_1.vnnlib", 5, 5, 1, [1], [1]),
    ("acasxu/prop_2.vnnlib", 5, 5, 1, [4], [1, 1, 1, 1]),
    ("acasxu/prop_3.vnnlib", 5, 5, 1, [4], [1, 1, 1, 1]),
    ("acasxu/prop_4.vnnlib", 5, 5, 1, [4], [1, 1, 1, 1]),
    ("acasxu/prop_6.vnnlib", 5, 5, 2, [1, 1, 1, 1], [4]),
    ("acasxu/prop_7.vnnlib", 5, 5, 1, [3, 3], [2] * 9),
    ("mnistfc/prop_0_0.03.vnnlib", 784, 10, 1, [1] * 9, [9]),
]


def _same(a: VnnlibSpec, b: VnnlibSpec) -> bool:
    boxes = len(a.boxes) == len(b.boxes) and all(
        np.array_equal(x.lo, y.lo) and np.array_equal(x.hi, y.hi)
        for x, y in zip(a.boxes, b.boxes, strict=True)
    )
    return boxes and _same_pred(a.unsafe, b.unsafe)


def _same_pred(p: Predicate, q: Predicate) -> bool:
    return len(p.clauses) == len(q.clauses) and all(
        np.array_equal(c.C, e.C) and np.array_equal(c.d, e.d)
        for c, e in zip(p.clauses, q.clauses, strict=True)
    )


def _unsafe_holds(p: Predicate, y: np.ndarray) -> np.ndarray:
    """Non-strict reading of the unsafe DNF (>= 0 atoms)."""
    out = np.zeros(y.shape[0], dtype=bool)
    for c in p.clauses:
        out |= np.all(c.values(y) >= 0, axis=1)
    return out


@needs_bench
@pytest.mark.parametrize(
    ("name", "n_in", "n_out", "n_boxes", "unsafe_sizes", "safe_sizes"),
    FILES,
    ids=[f[0].split("/")[-1] for f in FILES],
)
def test_benchmark_files(
    name: str,
    n_in: int,
    n_out: int,
    n_boxes: int,
    unsafe_sizes: list[int],
    safe_sizes: list[int],
) -> None:
    spec = parse_vnnlib(BENCH / name, n_in, n_out)
    assert len(spec.boxes) == n_boxes
    assert all(b.lo.shape == (n_in,) for b in spec.boxes)
    assert [c.C.shape[0] for c in spec.unsafe.clauses] == unsafe_sizes
    prop = safe_property(spec, spec.boxes[0])
    assert isinstance(prop, Property)
    assert [c.C.shape[0] for c in prop.predicate.clauses] == safe_sizes
    # the safe predicate is exactly the negation of the unsafe one, on random and tied outputs
    rng = np.random.default_rng(0)
    y = rng.normal(size=(400, n_out))
    y[:50, :] = np.round(y[:50, :])
    assert np.array_equal(prop.predicate.holds(y), ~_unsafe_holds(spec.unsafe, y))
    # round trip through text
    again = parse_vnnlib(write_vnnlib(spec.boxes, spec.unsafe, n_out), n_in, n_out)
    assert _same(spec, again)


@needs_bench
def test_acas_prop1_values() -> None:
    spec = parse_vnnlib(BENCH / "acasxu" / "prop_1.vnnlib", 5, 5)
    box = spec.boxes[0]
    np.testing.assert_array_equal(box.lo, [0.6, -0.5, -0.5, 0.45, -0.5])
    np.testing.assert_array_equal(box.hi, [0.679857769, 0.5, 0.5, 0.5, -0.45])
    (clause,) = spec.unsafe.clauses
    np.testing.assert_array_equal(clause.C, [[1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(clause.d, [-3.991125645861615])


def test_mnist_style_text_and_input_disjunction() -> None:
    text = """; a comment
(declare-const X_0 Real) (declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))
            (and (>= X_0 2) (<= X_0 3) (>= X_1 -1) (<= X_1 0))))
(assert (or (and (<= Y_0 Y_1)) (and (>= (+ Y_0 (* 2 Y_1)) 3.5))))
"""
    spec = parse_vnnlib(text, 2, 2)
    assert len(spec.boxes) == 2
    np.testing.assert_array_equal(spec.boxes[1].lo, [2, -1])
    assert len(spec.unsafe.clauses) == 2
    np.testing.assert_array_equal(spec.unsafe.clauses[0].C, [[-1, 1]])
    np.testing.assert_array_equal(spec.unsafe.clauses[1].C, [[1, 2]])
    np.testing.assert_array_equal(spec.unsafe.clauses[1].d, [-3.5])
    assert _same(spec, parse_vnnlib(write_vnnlib(spec.boxes, spec.unsafe, 2), 2, 2))


def test_write_property_negates_back() -> None:
    box = Box([0.0, 0.0], [1.0, 1.0])
    safe = Predicate((Clause.orderings([(0, 1), (0, 2)], 3),))
    text = write_vnnlib(box, Property(box, safe), 3, comment="robust at class 0")
    spec = parse_vnnlib(text, 2, 3)
    assert len(spec.unsafe.clauses) == 2
    assert _same_pred(safe_property(spec, spec.boxes[0]).predicate, safe)


def test_negate_edge_cases() -> None:
    true = Predicate((Clause(np.zeros((0, 2)), np.zeros(0)),))
    assert negate(true).clauses == ()
    assert len(negate(Predicate(()), 2).clauses) == 1


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1)\n", 3),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n\n(assert (<= X_0 abc))\n", 4),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_7 1))\n", 3),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (max X_0 1))\n", 3),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(check-sat)\n)\n", 4),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(define-fun f () Real 1)\n", 3),
        ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 Y_0))\n", 3),
    ],
)
def test_malformed_gives_line(text: str, line: int) -> None:
    with pytest.raises(SpecFileError, match=rf"line {line}\b"):
        parse_vnnlib(text, 1, 1)


def test_unbounded_input_rejected() -> None:
    text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))\n"
    with pytest.raises(SpecFileError, match="X_0"):
        parse_vnnlib(text, 1, 1)


def test_missing_file() -> None:
    with pytest.raises(SpecFileError, match="cannot read"):
        parse_vnnlib(Path("/nonexistent/prop.vnnlib"), 1, 1)


def test_deeply_nested_or_of_one_kind_is_flattened() -> None:
    from verispec.vnnlib import parse_vnnlib as parse

    decl = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "Y_0", "Y_1"))
    box = "(assert (>= X_0 0.0))\n(assert (<= X_0 1.0))\n"
    atoms = [f"(>= Y_0 {float(k)!r})" for k in range(3000)]
    nested = "".join(f"(or {a} " for a in atoms[:-1]) + atoms[-1] + ")" * (len(atoms) - 1)
    spec = parse(decl + box + f"(assert {nested})\n", 1, 2)
    assert len(spec.unsafe.clauses) == 3000


def test_the_parse_honours_its_deadline() -> None:
    import time

    from verispec.errors import VnnlibTimeout
    from verispec.vnnlib import parse_vnnlib as parse

    decl = "".join(f"(declare-const {v} Real)\n" for v in ("X_0", "Y_0", "Y_1"))
    lines = "\n".join(f"(and (>= Y_0 Y_1) (<= X_0 {k + 1}) (>= X_0 0))" for k in range(40_000))
    text = decl + f"(assert (or {lines}))\n"
    start = time.perf_counter()
    with pytest.raises(VnnlibTimeout, match="time limit"):
        parse(text, 1, 2, deadline=start + 0.05)
    assert time.perf_counter() - start < 5.0
    assert len(parse(text, 1, 2).boxes) == 40_000  # no deadline: the same text parses


def test_binary_and_missing_files_name_the_file(tmp_path) -> None:
    from verispec.errors import SpecFileError
    from verispec.vnnlib import parse_vnnlib as parse

    path = tmp_path / "p.vnnlib"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SpecFileError, match=r"p\.vnnlib is not a text file"):
        parse(path, 1, 2)
    with pytest.raises(SpecFileError, match=r"cannot read VNN-LIB file .*nope\.vnnlib"):
        parse(tmp_path / "nope.vnnlib", 1, 2)
