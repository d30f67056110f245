"""Runs that lose nothing: a JSON-lines log of every point as it is decided, read back to
resume, atomic writes of the final files, output paths checked before a run starts, and the
``--points`` selection syntax.

A run log (``--jsonl PATH``) holds one JSON object per line::

    {"kind": "run", "command": "check", "spec_file": str, "options": {...}}   # first line
    {"kind": "point", "property": str, "index": int, "record": {...}}        # one per point
    {"kind": "error", "property": str, "error": str}                          # a property failed
    {"kind": "skipped", "property": str, "reason": str}                       # --engine skips it

``index`` is the point's index in the spec file's data. ``record`` is what the command keeps
per point (``check``: a ``CheckResult.to_dict()``). A killed run leaves at most a partial last
line; ``read_runlog`` ignores it and ``RunLog.resume`` cuts it off before appending.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from verispec.errors import VerispecError

RUNLOG_SCHEMA = "verispec.runlog/1"


class OutputPathError(VerispecError):
    """An output file (``--json``, ``--jsonl``, ``--csv``) that cannot be written."""


class RunLogError(VerispecError):
    """A run log that cannot be resumed: not a run log, another command's, other options, or
    a line that is not JSON before the last one."""


class PointsError(VerispecError):
    """A ``--points`` selection with bad syntax or an index outside the data."""


# -- output paths --------------------------------------------------------------------------------


def ensure_writable(path: str | Path, flag: str) -> Path:
    """``path`` if a file can be written there (its folder exists and takes a new file; it is
    not a folder), else OutputPathError naming ``flag`` and the path. Creates nothing."""
    p = Path(path)
    where = f"{flag} {path}"
    if p.is_dir():
        raise OutputPathError(f"{where}: is a folder; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"{where}: the folder {parent} does not exist; create it first")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{p.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise OutputPathError(f"{where}: cannot write in {parent} ({err.strerror})") from None
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{where}: the file exists and is read-only")
    return p


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` all at once: to a temporary file in the same folder, then
    ``os.replace`` (a reader sees the old file or the new one, never a part)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent if str(p.parent) else ".", prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def csv_text(header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """The rows as CSV text under ``header`` (missing values empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in header})
    return buf.getvalue()


# -- the run log ---------------------------------------------------------------------------------


@attrs.frozen
class RunState:
    """What a run log holds: the header, each property's points by index (their records), and
    the byte length of its complete lines."""

    header: Mapping[str, Any] | None
    points: Mapping[str, Mapping[int, Mapping[str, Any]]]
    complete_bytes: int

    def done(self, prop: str) -> Mapping[int, Mapping[str, Any]]:
        """The points of ``prop`` already decided (index -> record)."""
        return self.points.get(prop, {})


EMPTY_STATE = RunState(None, {}, 0)


def read_runlog(path: str | Path) -> RunState:
    """The state of the run log at ``path`` (EMPTY_STATE when there is no file). A last line
    without its newline (a run killed while writing it) is ignored."""
    p = Path(path)
    if not p.exists():
        return EMPTY_STATE
    data = p.read_bytes()
    end = data.rfind(b"\n") + 1
    header: dict[str, Any] | None = None
    points: dict[str, dict[int, Mapping[str, Any]]] = {}
    for number, raw in enumerate(data[:end].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunLogError(
                f"{path}: line {number} is not JSON; a run log is only ever cut at its last "
                "line: start a new run without --resume"
            ) from None
        if not isinstance(rec, dict):
            raise RunLogError(f"{path}: line {number} is not a JSON object")
        if number == 1:
            if rec.get("kind") != "run" or rec.get("schema") != RUNLOG_SCHEMA:
                raise RunLogError(
                    f"{path}: not a verispec run log (its first line is no {RUNLOG_SCHEMA} header)"
                )
            header = rec
        elif rec.get("kind") == "point" and not rec.get("failed"):
            try:
                points.setdefault(str(rec["property"]), {})[int(rec["index"])] = rec["record"]
            except (KeyError, TypeError, ValueError):
                raise RunLogError(
                    f"{path}: line {number}: a point needs a property, an index and a record"
                ) from None
    return RunState(header, points, end)


class RunLog:
    """An open run log: ``point``, ``error`` and ``skipped`` append one line each and flush."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._f = handle

    @classmethod
    def start(
        cls, path: str | Path, command: str, spec_file: str, options: Mapping[str, Any]
    ) -> RunLog:
        """A new run log at ``path`` (replacing any file there), its header written."""
        p = Path(path)
        log = cls(p, p.open("w", encoding="utf-8"))
        log._write(_header(command, spec_file, options))
        return log

    @classmethod
    def resume(
        cls, path: str | Path, command: str, spec_file: str, options: Mapping[str, Any]
    ) -> tuple[RunLog, RunState]:
        """The run log at ``path`` opened to append, and what it already holds. A log of
        another command, spec file or options raises RunLogError; no file (or only a partial
        header line) starts a new log."""
        p = Path(path)
        state = read_runlog(p)
        if state.header is None:
            return cls.start(p, command, spec_file, options), EMPTY_STATE
        want = _header(command, spec_file, options)
        for key in ("command", "spec_file", "options"):
            if state.header.get(key) != want[key]:
                raise RunLogError(
                    f"{path}: written by another run ({key} {state.header.get(key)!r}, this run "
                    f"{want[key]!r}): resume with the same command and options, or drop --resume"
                )
        with p.open("r+b") as f:
            f.truncate(state.complete_bytes)
        return cls(p, p.open("a", encoding="utf-8")), state

    def point(self, prop: str, index: int, record: Mapping[str, Any], failed: bool = False) -> None:
        """A decided point; ``failed``: its task could not complete (kept for the record; a
        resumed run runs it again)."""
        line = {"kind": "point", "property": prop, "index": int(index), "record": record}
        self._write({**line, "failed": True} if failed else line)

    def error(self, prop: str, message: str) -> None:
        self._write({"kind": "error", "property": prop, "error": message})

    def skipped(self, prop: str, reason: str) -> None:
        self._write({"kind": "skipped", "property": prop, "reason": reason})

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, rec: Mapping[str, Any]) -> None:
        self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self._f.flush()


def _header(command: str, spec_file: str, options: Mapping[str, Any]) -> dict[str, Any]:
    # through JSON, so the comparison on resume sees what a reader sees (tuples as lists)
    opts = json.loads(json.dumps(dict(options)))
    return {
        "kind": "run",
        "schema": RUNLOG_SCHEMA,
        "command": command,
        "spec_file": spec_file,
        "options": opts,
    }


# -- --points ------------------------------------------------------------------------------------

_PART = re.compile(r"^\s*(\d*)\s*(:)?\s*(\d*)\s*$")


def parse_points(text: str, total: int, flag: str = "--points") -> tuple[int, ...]:
    """The point indices a selection names, ascending and without repeats: comma-separated
    indices and ranges ``a:b`` (a to b - 1; ``a:`` to the end, ``:b`` from 0), e.g.
    ``0:100,250``. ``total`` is how many points there are; PointsError names ``flag``."""
    chosen: set[int] = set()
    parts = text.split(",")
    for part in parts:
        m = _PART.match(part)
        if m is None or not (m.group(1) or m.group(3)) or (m.group(3) and not m.group(2)):
            raise PointsError(
                f"{flag} {text!r}: {part.strip()!r} is neither an index nor a range a:b "
                "(e.g. 0:100,250)"
            )
        lo = int(m.group(1)) if m.group(1) else 0
        end = int(m.group(3)) if m.group(3) else total
        hi = end if m.group(2) else lo + 1
        if hi <= lo:
            raise PointsError(f"{flag} {text!r}: the range {part.strip()!r} is empty")
        if hi > total:
            last = hi - 1 if m.group(2) else lo
            raise PointsError(
                f"{flag} {text!r}: point {last} is out of range: there are {total} points "
                f"(0..{total - 1})"
            )
        chosen.update(range(lo, hi))
    return tuple(sorted(chosen))
