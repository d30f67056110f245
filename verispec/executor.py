"""Where independent tasks run: in this process, or spread over workers (``verispec.cluster``).

``check``, ``audit`` and ``vnnlib --instances`` split their work into tasks (a chunk of
points, one point, one instance) that are independent of each other and of where they run:
engines key their randomness by point index, and the chunks are a function of the selected
indices alone. An ``Executor`` maps a function over the tasks and yields the outcomes *in
task order*, so results stream into a run log and merge into a report exactly as in one
process. A task the executor could not complete (its worker died twice, it ran past its time
limit) yields a ``TaskFailure``, which the caller records as an error for the task's points:
nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

import attrs

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)

TASK_FAILED = "task failed"
"""The start of the detail of every result recorded for a task that could not complete."""


@attrs.frozen
class TaskFailure:
    """A task that could not complete, and why (for its points' results)."""

    reason: str

    @property
    def detail(self) -> str:
        return f"{TASK_FAILED}: {self.reason}"


def is_task_failure(detail: str) -> bool:
    """Whether a result's detail says its task failed (a run log keeps it, and a resumed run
    runs the point again)."""
    return detail.startswith(TASK_FAILED + ":")


class Executor(Protocol):
    """Maps a function over tasks, yielding each outcome in task order."""

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R | TaskFailure]:
        """``fn(task)`` for each task, in order, or a ``TaskFailure`` for a task that could not
        complete. An exception ``fn`` raises propagates, as it would in this process."""
        ...  # pragma: no cover - protocol


@attrs.frozen
class LocalExecutor:
    """Every task in this process, one after the other (the default)."""

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R | TaskFailure]:
        for task in tasks:
            yield fn(task)


LOCAL = LocalExecutor()


def in_order(
    executor: Executor | None,
    fn: Callable[[K], R],
    tasks: Sequence[K],
    known: Mapping[K, R],
    failed: Callable[[K, TaskFailure], R],
) -> Iterator[tuple[K, R, bool]]:
    """``(task, result, new)`` for every task in order: the ``known`` result (a resumed run),
    else ``fn(task)`` run by ``executor`` (this process by default), or ``failed(task, why)``
    for a task it could not complete. Only the tasks not known are run."""
    outcomes = (executor or LOCAL).map(fn, [t for t in tasks if t not in known])
    for task in tasks:
        if task in known:
            yield task, known[task], False
        else:
            outcome = next(outcomes)
            yield task, failed(task, outcome) if isinstance(outcome, TaskFailure) else outcome, True
