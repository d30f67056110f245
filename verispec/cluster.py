"""Tasks spread over Ray workers: a local Ray with N workers, or an existing cluster.

``RayExecutor`` is an ``Executor`` (``verispec.executor``): the function and what it closes
over (the network, the engine, the data) go to the object store once; each task is one Ray
task taking one CPU (and one GPU when ``gpus_per_task`` is set, for engines on CUDA). At most
``workers`` tasks are in flight, so a task starts when it is submitted and its time limit
(``task_timeout``) counts from then, a worker's start-up (a few seconds: it imports torch and
verispec) included; one that passes it is cancelled and recorded as failed.
A task whose worker dies is retried once by Ray (``max_retries=1``); a second death records
it as failed. Exceptions raised by the function are re-raised here, as in one process.
Outcomes are yielded in task order; later tasks run meanwhile.

Ray is the optional extra ``verispec[cluster]``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs

from verispec.errors import VerispecError
from verispec.executor import TaskFailure

T = TypeVar("T")
R = TypeVar("R")

POLL_S = 0.5
"""How often the driver looks at the clock while waiting for tasks (timeouts)."""


class ClusterError(VerispecError):
    """Ray is missing, or the cluster cannot be reached or started."""


def import_ray() -> Any:
    """The ``ray`` module, or a ClusterError that says which extra to install."""
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "--workers and --address need Ray: pip install 'verispec[cluster]'"
        ) from None
    return ray


_SHIPPED: dict[str, Any] = {}
"""In a worker process: the function last shipped to it, by object id (a map's tasks share
one function and what it closes over: the network, the engine, the data; deserialising them
per task would cost more than a short task)."""


def _call(boxed: list[Any], task: Any) -> Any:
    ray = import_ray()
    ref = boxed[0]  # in a list, so Ray passes the reference instead of the value
    key = ref.hex()
    fn = _SHIPPED.get(key)
    if fn is None:
        _SHIPPED.clear()
        fn = _SHIPPED[key] = ray.get(ref)
    return fn(task)


@attrs.define
class RayExecutor:
    """Runs tasks as Ray tasks on an initialised Ray (``ray_cluster``)."""

    workers: int
    task_timeout: float | None = None
    gpus_per_task: float = 0.0
    _remote: Any = attrs.field(default=None, init=False)

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[R | TaskFailure]:
        ray = import_ray()
        if self._remote is None:
            self._remote = ray.remote(_call)
        remote = self._remote.options(
            num_cpus=1, num_gpus=self.gpus_per_task, max_retries=1, retry_exceptions=False
        )
        fn_ref = ray.put(fn)
        pending: dict[Any, tuple[int, float]] = {}  # ref -> (task position, submitted at)
        outcomes: dict[int, Any] = {}
        submitted = emitted = 0
        while emitted < len(tasks):
            while submitted < len(tasks) and len(pending) < max(1, self.workers):
                pending[remote.remote([fn_ref], tasks[submitted])] = (submitted, time.monotonic())
                submitted += 1
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in ready:
                position, _ = pending.pop(ref)
                outcomes[position] = self._outcome(ray, ref)
            self._expire(ray, pending, outcomes)
            while emitted in outcomes:
                yield outcomes.pop(emitted)
                emitted += 1

    def _outcome(self, ray: Any, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as err:
            return TaskFailure(f"its worker died twice (retried once): {type(err).__name__}")
        except ray.exceptions.TaskCancelledError:
            return TaskFailure(f"cancelled after its {self.task_timeout:g} s time limit")
        except ray.exceptions.RayError as err:
            return TaskFailure(f"{type(err).__name__}: {str(err).splitlines()[0]}")

    def _expire(self, ray: Any, pending: dict[Any, tuple[int, float]], outcomes: dict) -> None:
        """Cancel the tasks past their time limit and record them as failed."""
        if self.task_timeout is None:
            return
        now = time.monotonic()
        for ref, (position, started) in list(pending.items()):
            if now - started > self.task_timeout:
                ray.cancel(ref, force=True)
                del pending[ref]
                outcomes[position] = TaskFailure(
                    f"ran past its {self.task_timeout:g} s time limit (cancelled)"
                )


@contextlib.contextmanager
def ray_cluster(
    workers: int | None,
    address: str | None,
    task_timeout: float | None = None,
    gpus_per_task: float = 0.0,
) -> Iterator[RayExecutor]:
    """A ``RayExecutor`` on a local Ray with ``workers`` CPUs (started here and shut down on
    exit), or on the cluster at ``address`` (``workers`` tasks in flight; by default as many as
    the cluster has CPUs). A Ray already initialised in this process is used as it is."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            if address is None:
                ray.init(
                    num_cpus=workers or 1,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as err:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ClusterError(f"cannot start {where}: {type(err).__name__}: {err}") from None
        started = True
    try:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        yield RayExecutor(count, task_timeout, gpus_per_task)
    finally:
        if started:
            ray.shutdown()
