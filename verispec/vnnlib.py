"""VNN-LIB <-> input boxes and output predicates.

A VNN-LIB file asserts the *unsafe* set: inputs X_i in a box (or a disjunction of boxes) and a
DNF over the outputs Y_j. VNN-LIB ``<=``/``>=`` are non-strict, so ``VnnlibSpec.unsafe`` stores
each atom ``C @ y + d >= 0`` as a ``Clause(C, d)`` read *non-strictly* (``Predicate.holds``
tests ``> 0``, which misses the boundary of the unsafe set; use ``safe_property`` to decide).
``safe_property`` negates that DNF: the negation of non-strict atoms is a CNF of strict atoms,
distributed back into a DNF, i.e. an ordinary strict ``Predicate``. Strict ``<``/``>`` in a file
are read like ``<=``/``>=`` (the difference is a measure-zero boundary).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
import numpy as np

from verispec.errors import SpecError, SpecFileError, VnnlibTimeout
from verispec.properties import Clause, Predicate, Property
from verispec.regions import Box

MAX_CLAUSES = 100_000
"""The largest DNF ``negate`` builds before giving up."""

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_IGNORED = frozenset({"check-sat", "get-model", "set-logic", "set-info", "set-option", "exit"})
_VAR = re.compile(r"^([XY])_(\d+)$")

# An S-expression: a (token, line) leaf or a list of S-expressions with its opening line.
_Sexp = tuple[str, int] | tuple[list["_Sexp"], int]
# A linear atom sum(coef * var) + const >= 0 over one kind of variable ("X", "Y", or "" if none).
_Atom = tuple[str, dict[int, float], float]


def _with_boxes(value: Sequence[Box]) -> tuple[Box, ...]:
    return tuple(value)


@attrs.frozen(eq=False)
class VnnlibSpec:
    """The unsafe set of a VNN-LIB file: x in any of ``boxes`` and ``unsafe`` holds at f(x).

    Boxes are over the flattened input, shape (num_inputs,). ``unsafe`` atoms are non-strict.
    """

    boxes: tuple[Box, ...] = attrs.field(converter=_with_boxes)
    unsafe: Predicate


MAX_NESTING = 100
"""The deepest nesting of different operators (``(and (or (and ...)))``) a formula or term may
have; nested applications of one associative operator (``(or a (or b (or c ...)))``, ``and``,
``+``) are flattened and do not count."""

_CHECK_EVERY = 4096
"""Lines (tokens, clauses) between two looks at the deadline."""


class _Clock:
    """The parse's deadline (a ``time.perf_counter`` value, or None for no limit)."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.ticks = 0

    def tick(self, line: int = 0) -> None:
        """Count one step; every ``_CHECK_EVERY`` steps, look at the deadline."""
        self.ticks += 1
        if self.deadline is not None and not self.ticks % _CHECK_EVERY:
            self.check(line)

    def check(self, line: int = 0) -> None:
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            at = f" (at line {line})" if line else ""
            raise VnnlibTimeout(f"reading the VNN-LIB file took longer than its time limit{at}")


_LONG_LINE = 1 << 16
"""Characters from which a line is tokenised match by match (watching the deadline)."""


def _tokens(text: str, clock: _Clock | None = None) -> Iterator[tuple[str, int]]:
    clock = clock or _Clock(None)
    for lineno, line in enumerate(text.splitlines(), start=1):
        clock.tick(lineno)
        code = line.split(";", 1)[0]
        if len(code) < _LONG_LINE:
            for tok in _TOKEN.findall(code):
                yield tok, lineno
            continue
        for m in _TOKEN.finditer(code):
            clock.tick(lineno)
            yield m.group(0), lineno


def _parse_sexps(text: str, clock: _Clock | None = None) -> list[_Sexp]:
    clock = clock or _Clock(None)
    stack: list[tuple[list[_Sexp], int]] = []
    top: list[_Sexp] = []
    for tok, line in _tokens(text, clock):
        clock.tick(line)
        if tok == "(":
            stack.append(([], line))
        elif tok == ")":
            if not stack:
                raise SpecFileError(f"line {line}: unbalanced ')'")
            items, start = stack.pop()
            (stack[-1][0] if stack else top).append((items, start))
        elif stack:
            stack[-1][0].append((tok, line))
        else:
            raise SpecFileError(f"line {line}: {tok!r} outside parentheses")
    if stack:
        raise SpecFileError(f"line {stack[-1][1]}: '(' is never closed")
    return top


def _flat_args(sexp: _Sexp, op: str) -> list[_Sexp]:
    """The arguments of ``(op a b ...)``, nested ``(op ...)`` arguments spliced in (without
    recursion: any depth of one associative operator)."""
    body = sexp[0]
    assert isinstance(body, list)
    out: list[_Sexp] = []
    todo = list(reversed(body[1:]))
    while todo:
        item = todo.pop()
        inner = item[0]
        if isinstance(inner, list) and _head(item) == op:
            todo.extend(reversed(inner[1:]))
        else:
            out.append(item)
    return out


def _too_deep(line: int) -> SpecFileError:
    return SpecFileError(
        f"line {line}: the expression nests more than {MAX_NESTING} levels of different "
        "operators; flatten it (nested or/and/+ of one kind are fine)"
    )


def _head(sexp: _Sexp) -> str:
    body = sexp[0]
    if isinstance(body, list) and body and isinstance(body[0][0], str):
        return body[0][0]
    return ""


class _Parser:
    def __init__(self, num_inputs: int, num_outputs: int, clock: _Clock | None = None):
        self.sizes = {"X": num_inputs, "Y": num_outputs}
        self.declared: set[tuple[str, int]] = set()
        self.clock = clock or _Clock(None)

    def var(self, name: str, line: int) -> tuple[str, int] | None:
        m = _VAR.match(name)
        if m is None:
            return None
        kind, idx = m.group(1), int(m.group(2))
        if idx >= self.sizes[kind]:
            raise SpecFileError(f"line {line}: {name} out of range (there are {self.sizes[kind]})")
        return kind, idx

    def linear(self, sexp: _Sexp, depth: int = 0) -> tuple[dict[tuple[str, int], float], float]:
        """A linear term -> (coefficients, constant)."""
        body, line = sexp
        if depth > MAX_NESTING:
            raise _too_deep(line)
        if isinstance(body, str):
            v = self.var(body, line)
            if v is not None:
                if v not in self.declared:
                    raise SpecFileError(f"line {line}: {body} is not declared")
                return {v: 1.0}, 0.0
            try:
                value = float(body)
            except ValueError:
                value = float("nan")
            if not np.isfinite(value):
                raise SpecFileError(f"line {line}: expected a number or variable, got {body!r}")
            return {}, value
        if not body:
            raise SpecFileError(f"line {line}: empty term '()'")
        op = _head(sexp)
        parts = _flat_args(sexp, "+") if op == "+" else body[1:]
        args = [self.linear(a, depth + 1) for a in parts]
        if not args:
            raise SpecFileError(f"line {line}: {op or '()'!r} needs arguments")
        if op == "+" or (op == "-" and len(args) > 1):
            coef, const = dict(args[0][0]), args[0][1]
            sign = -1.0 if op == "-" else 1.0
            for c, k in args[1:]:
                for key, val in c.items():
                    coef[key] = coef.get(key, 0.0) + sign * val
                const += sign * k
            return coef, const
        if op == "-" and len(args) == 1:
            return {k: -v for k, v in args[0][0].items()}, -args[0][1]
        if op == "*" and len(args) == 2:
            (c1, k1), (c2, k2) = args
            if c1 and c2:
                raise SpecFileError(f"line {line}: product of two variables is not linear")
            coef, k = (c2, k1) if not c1 else (c1, k2)
            return {key: k * v for key, v in coef.items()}, k1 * k2
        raise SpecFileError(f"line {line}: unsupported term {op!r}")

    def atom(self, sexp: _Sexp) -> _Atom:
        body, line = sexp
        op = _head(sexp)
        if not isinstance(body, list) or len(body) != 3:
            raise SpecFileError(f"line {line}: a comparison takes two terms")
        (ca, ka), (cb, kb) = self.linear(body[1]), self.linear(body[2])
        if op in ("<=", "<"):  # b - a >= 0
            ca, ka, cb, kb = cb, kb, ca, ka
        coef = dict(ca)
        for key, val in cb.items():
            coef[key] = coef.get(key, 0.0) - val
        coef = {k: v for k, v in coef.items() if v != 0.0}
        kinds = {k[0] for k in coef}
        if len(kinds) > 1:
            raise SpecFileError(f"line {line}: a constraint mixes inputs and outputs")
        kind = kinds.pop() if kinds else ""
        return kind, {k[1]: v for k, v in coef.items()}, ka - kb

    def dnf(self, sexp: _Sexp, depth: int = 0) -> list[list[_Atom]]:
        body, line = sexp
        if depth > MAX_NESTING:
            raise _too_deep(line)
        self.clock.tick(line)
        op = _head(sexp)
        if not isinstance(body, list):
            if body == "true":
                return [[]]
            if body == "false":
                return []
            raise SpecFileError(f"line {line}: expected a formula, got {body!r}")
        if op in ("<=", ">=", "<", ">"):
            return [[self.atom(sexp)]]
        if op == "and":
            out: list[list[_Atom]] = [[]]
            for part in _flat_args(sexp, "and"):
                sub = self.dnf(part, depth + 1)
                out = [a + b for a in out for b in sub]
                if len(out) > MAX_CLAUSES:
                    raise SpecFileError(f"line {line}: the formula's DNF is too large")
            return out
        if op == "or":
            return [c for part in _flat_args(sexp, "or") for c in self.dnf(part, depth + 1)]
        raise SpecFileError(f"line {line}: unsupported formula {op!r}")


def _box(atoms: list[_Atom], lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = lo.copy(), hi.copy()
    for kind, coef, const in atoms:
        if kind != "X":
            continue
        if len(coef) != 1:
            raise SpecError("input constraints must bound one variable (boxes only)")
        ((i, c),) = coef.items()
        if c > 0:
            lo[i] = max(lo[i], -const / c)
        else:
            hi[i] = min(hi[i], -const / c)
    return lo, hi


def _clause(atoms: list[_Atom], num_outputs: int) -> Clause | None:
    rows, ds = [], []
    for kind, coef, const in atoms:
        if kind == "X":
            continue
        if kind == "" and const < 0:
            return None  # a false constant constraint: the disjunct is empty
        if kind == "":
            continue
        row = np.zeros(num_outputs)
        for j, v in coef.items():
            row[j] = v
        rows.append(row)
        ds.append(const)
    return Clause(np.array(rows).reshape(len(rows), num_outputs), np.array(ds))


def _key(c: Clause) -> bytes:
    return c.C.tobytes() + b"|" + c.d.tobytes()


def _read_text(path: Path) -> str:
    """A VNN-LIB file's text; a missing, unreadable or binary file raises SpecFileError."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SpecFileError(f"cannot read VNN-LIB file {path}: {err.strerror or err}") from None
    if raw[:2] == b"\x1f\x8b":
        raise SpecFileError(f"VNN-LIB file {path} is gzip-compressed: decompress it first")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecFileError(
            f"VNN-LIB file {path} is not a text file (byte {err.start} is not UTF-8)"
        ) from None
    if "\x00" in text:
        raise SpecFileError(f"VNN-LIB file {path} is not a text file (it holds NUL bytes)")
    return text


def parse_vnnlib(
    path_or_text: str | Path,
    num_inputs: int,
    num_outputs: int,
    deadline: float | None = None,
) -> VnnlibSpec:
    """Parse a VNN-LIB file (a path, or the text itself if it contains a parenthesis).

    Errors are ``SpecFileError`` naming the file and the line. With ``deadline`` (a
    ``time.perf_counter()`` value) a parse still running then raises ``VnnlibTimeout``."""
    clock = _Clock(deadline)
    clock.check()
    if isinstance(path_or_text, Path) or "(" not in path_or_text:
        name = str(path_or_text)
        text = _read_text(Path(path_or_text))
    else:
        name, text = "VNN-LIB text", path_or_text
    try:
        return _parse(text, num_inputs, num_outputs, clock)
    except (SpecFileError, SpecError) as err:
        raise SpecFileError(f"{name}: {err}") from None
    except RecursionError:
        raise SpecFileError(f"{name}: the expressions nest too deeply to read") from None


def _parse(text: str, num_inputs: int, num_outputs: int, clock: _Clock) -> VnnlibSpec:
    p = _Parser(num_inputs, num_outputs, clock)
    common: list[_Atom] = []
    dnfs: list[list[list[_Atom]]] = []
    for sexp in _parse_sexps(text, clock):
        body, line = sexp
        op = _head(sexp)
        if op == "declare-const":
            if not isinstance(body, list) or len(body) != 3 or not isinstance(body[1][0], str):
                raise SpecFileError(f"line {line}: expected (declare-const NAME Real)")
            name = body[1][0]
            v = p.var(name, line)
            if v is None or body[2][0] != "Real":
                raise SpecFileError(f"line {line}: expected X_i or Y_j of sort Real, got {name}")
            p.declared.add(v)
        elif op == "assert":
            if not isinstance(body, list) or len(body) != 2:
                raise SpecFileError(f"line {line}: assert takes one formula")
            sub = p.dnf(body[1])
            if len(sub) == 1:
                common.extend(sub[0])
            else:
                dnfs.append(sub)
        elif op in _IGNORED:
            continue
        else:
            raise SpecFileError(f"line {line}: unsupported command {op or body!r}")
    for kind in ("X", "Y"):
        missing = [i for i in range(p.sizes[kind]) if (kind, i) not in p.declared]
        if missing:
            raise SpecFileError(f"{kind}_{missing[0]} is not declared ({len(missing)} missing)")
    inf = np.full(num_inputs, np.inf)
    try:
        lo0, hi0 = _box(common, -inf, inf)
    except SpecError as err:
        raise SpecFileError(str(err)) from None
    if any(not d for d in dnfs):  # an assertion of false: the unsafe set is empty
        if not (np.all(np.isfinite(lo0)) and np.all(np.isfinite(hi0))):
            raise SpecFileError("every X_i needs a lower and an upper bound")
        return VnnlibSpec((Box(lo0, hi0),), Predicate(()))
    order: list[bytes] = []
    groups: dict[bytes, tuple[Box, dict[bytes, Clause]]] = {}
    total = 1
    for d in dnfs:
        total *= len(d)
    if total > MAX_CLAUSES:
        raise SpecFileError(f"the file's DNF has {total} disjuncts, more than {MAX_CLAUSES}")
    for choice in itertools.product(*dnfs):
        clock.tick()
        extra = [a for part in choice for a in part]
        try:
            lo, hi = _box(extra, lo0, hi0)
        except SpecError as err:
            raise SpecFileError(str(err)) from None
        if np.any(lo > hi):
            continue
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            i = int(np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi)))[0])
            raise SpecFileError(f"X_{i} needs both a lower and an upper bound")
        clause = _clause(common + extra, num_outputs)
        if clause is None:
            continue
        key = lo.tobytes() + hi.tobytes()
        if key not in groups:
            groups[key] = (Box(lo, hi), {})
            order.append(key)
        groups[key][1].setdefault(_key(clause), clause)
    if not order:
        raise SpecFileError("the input constraints are unsatisfiable (every box is empty)")
    sets = [tuple(groups[k][1]) for k in order]
    if any(set(s) != set(sets[0]) for s in sets[1:]):
        raise SpecFileError(
            "the output constraints differ between input boxes; only (boxes) x (output DNF) "
            "specs are supported"
        )
    return VnnlibSpec(
        tuple(groups[k][0] for k in order), Predicate(tuple(groups[order[0]][1].values()))
    )


def negate(predicate: Predicate, num_outputs: int | None = None) -> Predicate:
    """The negation of a DNF, as a DNF: atoms ``c y + d > 0`` become ``-c y - d >= 0`` (and back;
    strictness is implied by the reader). ``num_outputs`` is needed for an empty predicate."""
    if not predicate.clauses:
        if num_outputs is None:
            raise SpecError("negate: give num_outputs to negate the empty predicate")
        return Predicate((Clause(np.zeros((0, num_outputs)), np.zeros(0)),))
    m = predicate.clauses[0].num_classes
    total = 1
    for c in predicate.clauses:
        total *= c.C.shape[0]
    if total > MAX_CLAUSES:
        raise SpecError(f"negate: the negated DNF would have {total} clauses (> {MAX_CLAUSES})")
    out: dict[bytes, Clause] = {}
    rows = [[(-c.C[i], -c.d[i]) for i in range(c.C.shape[0])] for c in predicate.clauses]
    for choice in itertools.product(*rows):
        seen: dict[bytes, tuple[np.ndarray, float]] = {}
        for r, d in choice:
            seen.setdefault(r.tobytes() + np.float64(d).tobytes(), (r, d))
        C = np.array([r for r, _ in seen.values()]).reshape(len(seen), m)
        clause = Clause(C, np.array([d for _, d in seen.values()]))
        out.setdefault(_key(clause), clause)
    return Predicate(tuple(out.values()))


def safe_property(spec: VnnlibSpec, box: Box) -> Property:
    """The property the file states holds: for x in ``box``, f(x) avoids the unsafe set
    (the negated DNF, with strict atoms)."""
    m = spec.unsafe.clauses[0].num_classes if spec.unsafe.clauses else None
    if m is None:
        raise SpecError("the unsafe predicate is empty (false): the property holds trivially")
    return Property(box, negate(spec.unsafe, m))


def _num(v: float) -> str:
    return repr(float(v))


def _term(row: np.ndarray) -> str:
    parts = [
        f"Y_{j}" if v == 1.0 else f"(* {_num(v)} Y_{j})" for j, v in enumerate(row) if v != 0.0
    ]
    if not parts:
        return "0.0"
    return parts[0] if len(parts) == 1 else f"(+ {' '.join(parts)})"


def _atom_text(row: np.ndarray, d: float) -> str:
    """``row @ y + d >= 0`` as VNN-LIB."""
    pos = [j for j, v in enumerate(row) if v == 1.0]
    neg = [j for j, v in enumerate(row) if v == -1.0]
    if d == 0.0 and len(pos) == 1 and len(neg) == 1 and np.count_nonzero(row) == 2:
        return f"(>= Y_{pos[0]} Y_{neg[0]})"
    return f"(>= {_term(row)} {_num(-d)})"


def write_vnnlib(
    boxes: Box | Sequence[Box],
    unsafe: Predicate | Property,
    num_outputs: int,
    comment: str = "",
) -> str:
    """VNN-LIB text for x in any of ``boxes`` and ``unsafe`` at f(x). A ``Property`` is taken as
    the *safe* predicate and negated (its region is ignored; give the boxes)."""
    box_list = [boxes] if isinstance(boxes, Box) else list(boxes)
    if not box_list:
        raise SpecError("write_vnnlib: no input box")
    pred = negate(unsafe.predicate, num_outputs) if isinstance(unsafe, Property) else unsafe
    n = box_list[0].lo.size
    lines = [f"; {line}" for line in comment.splitlines()]
    lines += [f"(declare-const X_{i} Real)" for i in range(n)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_outputs)]

    def bounds(b: Box) -> list[str]:
        lo, hi = b.lo.ravel(), b.hi.ravel()
        out: list[str] = []
        for i in range(n):
            out += [f"(<= X_{i} {_num(hi[i])})", f"(>= X_{i} {_num(lo[i])})"]
        return out

    if len(box_list) == 1:
        lines += [f"(assert {a})" for a in bounds(box_list[0])]
    else:
        lines.append("(assert (or")
        lines += [f"    (and {' '.join(bounds(b))})" for b in box_list]
        lines.append("))")
    clauses = [
        " ".join(_atom_text(c.C[i], float(c.d[i])) for i in range(c.C.shape[0]))
        for c in pred.clauses
    ]
    lines.append("(assert (or")
    lines += [f"    (and {c})" for c in clauses]
    lines.append("))")
    return "\n".join(lines) + "\n"


def result_text(answer: str, x: np.ndarray | None = None, y: np.ndarray | None = None) -> str:
    """A VNN-COMP result file: the answer on the first line (sat, unsat, timeout, unknown,
    error) and, for sat, the counterexample as ((X_i value) ... (Y_j value))."""
    if answer != "sat":
        return answer + "\n"
    if x is None or y is None:
        raise SpecError("a sat result needs the counterexample's inputs and outputs")
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.ravel(x))]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.ravel(y))]
    return "sat\n(" + "\n ".join(pairs) + ")\n"
