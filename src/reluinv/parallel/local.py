"""The ``local`` back end: worker processes on this machine, started from a preloading fork server.

Workers watch the process that started them: when it is gone (killed with SIGKILL, say), they exit
within :data:`PARENT_POLL_S` seconds instead of running on as orphans.  The fork server and the
resource tracker of ``multiprocessing`` end by themselves once the main process and the workers
are gone.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .sample import SampleFunction, evaluate, failure
from .store import SampleKey, SampleResult

#: Seconds between a worker's checks that the process that started it is still alive.
PARENT_POLL_S = 0.5

# Set in each worker process by _start_local_worker.
_worker_fn: SampleFunction | None = None
_worker_shared: Any = None
_worker_started: Any = None  # shared byte array: started[i] = 1 once sample i of the batch began
_worker_thread_limits: Any = None  # keeps threadpoolctl's limits alive

_THREAD_ENVIRONMENT = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

Identity = tuple[int, str | None]


def process_identity(pid: int) -> Identity:
    """``(pid, start time)`` of a process: the start time tells a reused pid from the original.

    The start time is read from ``/proc`` (Linux); elsewhere it is None and only the pid counts.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return pid, None
    return pid, fields[19]  # field 22 of proc(5); fields[0] is field 3, the state


def is_alive(identity: Identity) -> bool:
    """True while the process ``identity`` names runs (a zombie or a reused pid counts as gone)."""
    pid, start = identity
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return fields[0] not in ("Z", "X") and (start is None or fields[19] == start)


def _watch_parent(parent: Identity) -> None:
    while is_alive(parent):
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # the run is gone: nobody would read this worker's results


def _start_local_worker(pickled_work: bytes, started: Any, threads: int, parent: Identity) -> None:
    global _worker_fn, _worker_shared, _worker_started, _worker_thread_limits
    # Ctrl-C reaches the whole process group: the main process alone decides, and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), name="reluinv-parent-watch", daemon=True).start()
    # Environment first, for libraries loaded later (they read it when loaded); threadpoolctl for
    # those already loaded; torch keeps its own count.
    for name in _THREAD_ENVIRONMENT:
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_limits

    _worker_thread_limits = threadpool_limits(limits=threads)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but fn may not need it
        pass
    else:
        torch.set_num_threads(threads)
    _worker_fn, _worker_shared = pickle.loads(pickled_work)
    _worker_started = started


def _run_local_sample(index: int, key: SampleKey, payload: Any) -> SampleResult:
    _worker_started[index] = 1
    assert _worker_fn is not None
    return evaluate(_worker_fn, _worker_shared, key, payload)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _process_context() -> Any:
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Only effective before the fork server starts; later pools fork from the warm server.
    context.set_forkserver_preload(["__main__", "reluinv.parallel", "torch"])
    return context


def _pickled_work(fn: SampleFunction, shared: Any) -> bytes:
    try:
        return pickle.dumps((fn, shared), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ValueError(
            f"backend 'local' sends fn and shared to worker processes by pickling, which failed "
            f"({type(exc).__name__}: {exc}); fn must be a module-level function"
        ) from exc


class _Pools:
    """Starts a process pool per batch, all with the same work, context and thread budget."""

    def __init__(self, fn: SampleFunction, shared: Any) -> None:
        self.pickled_work = _pickled_work(fn, shared)
        self.context = _process_context()
        self.cores = available_cores()
        self.parent = process_identity(os.getpid())

    def run(
        self, batch: list[tuple[SampleKey, Any]], size: int, record: Callable[[SampleResult], None]
    ) -> tuple[Any, set[int], BrokenProcessPool | None]:
        """Run ``batch`` on ``size`` workers; return (started flags, finished indices, break)."""
        started = self.context.RawArray("b", len(batch))
        done: set[int] = set()
        broken: BrokenProcessPool | None = None
        pool = ProcessPoolExecutor(
            max_workers=size,
            mp_context=self.context,
            initializer=_start_local_worker,
            initargs=(self.pickled_work, started, max(1, self.cores // size), self.parent),
        )
        try:
            futures = {pool.submit(_run_local_sample, i, key, item): i for i, (key, item) in enumerate(batch)}
            # Keep consuming after a break: results that arrived before it are still good.
            for future in as_completed(futures):
                i = futures[future]
                exc = future.exception()
                if exc is None:
                    record(future.result())
                elif isinstance(exc, BrokenProcessPool):
                    broken = exc
                    continue
                elif isinstance(exc, Exception):  # outside fn, e.g. a payload that cannot be pickled
                    record(failure(batch[i][0], exc))
                else:  # KeyboardInterrupt or SystemExit inside a worker stops the run
                    raise exc
                done.add(i)
        except BaseException:
            stop_now(pool)
            raise
        pool.shutdown(wait=True)
        return started, done, broken


class _Triage:
    """What to run next after a pool broke: the suspects alone, the bystanders again.

    A dead worker breaks the whole pool and every unfinished sample with it, without saying which
    sample killed it.  The samples that had started but not finished are the suspects; they are
    rerun one at a time on a single worker, where a death is unambiguous and is charged to that
    sample.  Only charged deaths count against ``retries``.  The other unfinished samples are
    simply submitted again.
    """

    def __init__(self, pending: list[tuple[SampleKey, Any]], retries: int) -> None:
        self.queue = list(pending)
        self.suspects: list[tuple[SampleKey, Any]] = []
        self.retries = retries
        self.charged_deaths: dict[SampleKey, int] = {}
        self.unexplained_breaks = 0

    def next_batch(self) -> tuple[list[tuple[SampleKey, Any]], bool]:
        """(batch, alone): the suspects, one worker for them, else the queue."""
        return (self.suspects, True) if self.suspects else (self.queue, False)

    def after(
        self,
        batch: list[tuple[SampleKey, Any]],
        alone: bool,
        started: Any,
        done: set[int],
        broken: BrokenProcessPool | None,
        record: Callable[[SampleResult], None],
    ) -> None:
        """Update the queue and the suspects after ``batch`` ran."""
        if broken is None:
            if alone:
                self.suspects = []
            else:
                self.queue = []
            return
        in_flight = [i for i in range(len(batch)) if started[i] and i not in done]
        unfinished = [i for i in range(len(batch)) if i not in done]
        if not in_flight:
            # The pool died without a sample running: e.g. `shared` cannot be unpickled in a worker.
            self.unexplained_breaks += 1
            if self.unexplained_breaks > self.retries:
                raise RuntimeError(
                    f"worker processes died {self.unexplained_breaks} times before running any "
                    f"sample: {broken}"
                ) from broken
        if not alone:
            self.suspects = [batch[i] for i in in_flight]
            self.queue = [batch[i] for i in unfinished if i not in in_flight]
            return
        for i in in_flight:  # exactly one: the pool had one worker
            key = batch[i][0]
            self.charged_deaths[key] = self.charged_deaths.get(key, 0) + 1
            if self.charged_deaths[key] > self.retries:
                record(
                    SampleResult(
                        key=key,
                        status="failed",
                        error=f"WorkerDied: a worker process running only this sample died "
                        f"{self.charged_deaths[key]} times",
                    )
                )
                done.add(i)
        self.suspects = [batch[i] for i in unfinished if i not in done]


def run_local(
    fn: SampleFunction,
    pending: list[tuple[SampleKey, Any]],
    shared: Any,
    record: Callable[[SampleResult], None],
    *,
    workers: int | None,
    retries: int,
) -> None:
    """Run ``pending`` on a process pool, rebuilding it when a worker dies (see :class:`_Triage`)."""
    pools = _Pools(fn, shared)
    width = min(workers or pools.cores, len(pending))
    triage = _Triage(pending, retries)
    while triage.queue or triage.suspects:
        batch, alone = triage.next_batch()
        size = 1 if alone else min(width, len(batch))
        started, done, broken = pools.run(batch, size, record)
        triage.after(batch, alone, started, done, broken, record)


def stop_now(pool: ProcessPoolExecutor) -> None:
    """Stop an interrupted pool without waiting for the samples it is running.

    ``shutdown(cancel_futures=True)`` only drops queued samples; running ones would go on, and
    the interpreter waits for them at exit.
    """
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
