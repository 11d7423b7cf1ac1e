"""Running per-sample work serially, on local worker processes, or on a Dask cluster.

Every per-sample loop in reluinv (the figure experiments, ``reluinv analyze``) goes through
:func:`run_samples` or an :class:`Executor`.  The work is a module-level function
``fn(shared, payload) -> dict`` applied to each sample; ``shared`` (typically the model and its
layer data) is shipped to each worker once, not once per sample.

Back ends:

* ``"serial"``: a plain loop in this process, for debugging (breakpoints and tracebacks work).
* ``"local"`` (default): worker processes on this machine, started with the ``forkserver`` method
  (``spawn`` where that is unavailable).  ``fork`` is not used: forking a process whose torch/OpenMP
  thread pool is already running can deadlock the child.  The fork server preloads torch and
  reluinv once, so a new pool starts in well under a second after the first one (measured on two
  cores: about 4.5 s per pool with ``spawn``, 1.6 s for the first and 0.05 s for later pools with a
  preloading fork server).  Each worker limits BLAS, OpenMP and torch to ``cores // workers``
  threads so that the workers do not oversubscribe the cores.
* ``"dask"``: a Dask distributed cluster, named by ``scheduler``: an address ``tcp://HOST:PORT``
  of a running scheduler, or ``"local-cluster"`` to start a ``distributed.LocalCluster`` of
  single-threaded worker processes on 127.0.0.1 for the duration of the run.  ``shared`` is
  scattered to every worker once (``broadcast=True``).  Dask's nanny sets ``OMP_NUM_THREADS`` and
  friends to 1 in its workers, which torch and the BLAS libraries honour.

Results and guarantees, for every back end:

* One :class:`SampleResult` per sample, **in input order**, and the same list whichever back end
  ran it: ``result`` is the returned dict as it reads back from JSON (numpy and torch values are
  converted with ``tolist()``; dict keys become strings; floats round-trip exactly, NaN and
  infinities included, written as Python's json writes them).
* A sample whose ``fn`` raises is recorded as ``"failed"`` with ``"ExceptionType: message"`` and
  the run goes on.  Such failures are not retried within the run (maths errors are
  deterministic); they are retried by the next run with the same store.
* A worker process that dies (crash, ``os._exit``, out-of-memory kill) loses nothing: its sample
  is run again.  A sample is recorded as failed (``"WorkerDied: ..."``, or Dask's
  ``"KilledWorker: ..."``) only after workers died running it more than ``retries`` times (see
  :func:`run_samples` for how each back end counts).
* With a ``store`` (a :class:`ResultStore` or a path), every result is appended to a JSON-lines
  file as it arrives, flushed and fsync'd.  A run that is killed and restarted with the same store
  skips the samples already stored with status ``"ok"`` and runs the rest, including the failed
  ones.  The store is keyed by sample key only: use one store per analysis and data set.

Example::

    from reluinv.parallel import run_samples

    def layer_rank(model, seed):              # module level, so worker processes can import it
        ...
        return {"rank": 3, "condition": 12.5}

    results = run_samples(layer_rank, range(100), shared=model, backend="local", workers=4,
                          store="out/layer-rank.jsonl")
    ranks = [r.result["rank"] for r in results if r.ok]

Scripts that use the ``local`` back end need the usual ``if __name__ == "__main__":`` guard,
because worker processes import the main module.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import traceback as traceback_module
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, Union
from urllib.parse import urlsplit

try:  # POSIX only; elsewhere the store simply is not locked against a second writer.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BACKENDS",
    "LOCAL_CLUSTER",
    "Executor",
    "ResultStore",
    "SampleResult",
    "add_executor_options",
    "run_samples",
]

#: The back ends :class:`Executor` accepts.
BACKENDS = ("serial", "local", "dask")
#: The ``scheduler`` value that starts a Dask ``LocalCluster`` for the run.
LOCAL_CLUSTER = "local-cluster"

#: Seconds to wait for a TCP connection to a Dask scheduler before declaring that nothing listens.
SCHEDULER_PROBE_TIMEOUT_S = 3.0
#: Seconds to wait for the Dask handshake once the TCP port answers, and for the client to connect.
SCHEDULER_CONNECT_TIMEOUT_S = 10.0
#: Seconds to wait for a running scheduler to have at least one worker.
WORKER_WAIT_TIMEOUT_S = 30.0

SampleKey = Union[str, int]
SampleFunction = Callable[[Any, Any], Mapping[str, Any]]


@dataclass(frozen=True)
class SampleResult:
    """The outcome of one sample.

    Attributes:
        key: the sample's key (its position for sequence input, its mapping key otherwise).
        status: ``"ok"`` or ``"failed"``.
        result: what ``fn`` returned, as read back from JSON (``None`` when failed).
        error: ``"ExceptionType: message"`` when failed, else ``None``.
        traceback: the formatted traceback of a failure, for debugging; not part of equality.
    """

    key: SampleKey
    status: Literal["ok", "failed"]
    result: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when ``fn`` returned normally."""
        return self.status == "ok"


# ----------------------------------------------------------------------------------------------
# The store


class ResultStore:
    """Append-only JSON-lines file of sample results; the basis for resuming an interrupted run.

    One line per finished sample: ``{"key", "status", "fn", "result" | "error", "traceback"}``.
    Each line is written with a single ``write``, then flushed and fsync'd, so a killed run leaves
    at most one torn line at the end.  Only newline-terminated lines count: a torn last line is
    ignored by :meth:`load` and cut off by :meth:`open` before anything is appended.  When a key
    appears more than once (a failed sample that a later run retried) the last line wins.

    While open, the file is locked (``flock``) so that two runs cannot interleave their lines.

    Example::

        store = ResultStore("out/ranks.jsonl")
        done = store.load()                      # {key: SampleResult}
        with store.open():
            store.append(SampleResult(key=7, status="ok", result={"rank": 3}), fn_name="m.f")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: TextIO | None = None

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    def load(self, *, fn_name: str | None = None) -> dict[SampleKey, SampleResult]:
        """Return the latest result per key.

        Args:
            fn_name: when given, a stored ``"ok"`` result written by another function is an error
                (the same file was given to two different analyses).

        Raises:
            ValueError: a complete line that is not a valid record, or a function mismatch.
        """
        if not self.path.exists():
            return {}
        text = self.path.read_text(encoding="utf-8")
        complete_lines = text.split("\n")[:-1]  # the piece after the last newline is torn or empty
        latest: dict[SampleKey, SampleResult] = {}
        for number, line in enumerate(complete_lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                sample = SampleResult(
                    key=_check_key(record["key"]),
                    status=record["status"],
                    result=record.get("result"),
                    error=record.get("error"),
                    traceback=record.get("traceback"),
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path}, line {number}: not a reluinv result record ({exc})") from exc
            if sample.status not in ("ok", "failed"):
                raise ValueError(f"{self.path}, line {number}: unknown status {sample.status!r}")
            stored_fn = record.get("fn")
            if fn_name is not None and sample.ok and stored_fn is not None and stored_fn != fn_name:
                raise ValueError(
                    f"{self.path} holds results of {stored_fn}, not of {fn_name}; "
                    "use a separate store per analysis or delete this one"
                )
            latest[sample.key] = sample
        return latest

    def open(self) -> ResultStore:
        """Open for appending (usable as a context manager); cuts off a torn last line first."""
        if self._handle is not None:
            raise RuntimeError(f"{self} is already open")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RuntimeError(f"{self.path} is in use by another reluinv run") from None
            self._cut_torn_tail(handle)
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return self

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._handle is not None

    def append(self, sample: SampleResult, *, fn_name: str | None = None) -> None:
        """Write one record and make it durable before returning."""
        if self._handle is None:
            raise RuntimeError(f"{self} is not open; use `with store.open():`")
        record: dict[str, Any] = {"key": sample.key, "status": sample.status, "fn": fn_name}
        if sample.ok:
            record["result"] = sample.result
        else:
            record["error"] = sample.error
            record["traceback"] = sample.traceback
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file and release the lock (closing the descriptor releases ``flock``)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ResultStore:
        if self._handle is None:
            self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _cut_torn_tail(handle: TextIO) -> None:
        # Work on bytes: text-mode seek offsets are opaque and a torn UTF-8 sequence may not decode.
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        if size == 0:
            return
        with open(fd, "rb", closefd=False) as raw:  # "a+" starts at the end: seek explicitly
            raw.seek(size - 1)
            if raw.read(1) == b"\n":
                return
            raw.seek(0)
            keep = raw.read().rfind(b"\n") + 1
        os.ftruncate(fd, keep)
        os.fsync(fd)
        handle.seek(0, os.SEEK_END)


# ----------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Executor:
    """Where and how :meth:`run` executes per-sample work.  Options are checked on construction.

    Args:
        backend: ``"serial"``, ``"local"`` or ``"dask"``.
        workers: number of worker processes (``local``, or ``dask`` with ``"local-cluster"``);
            ``None`` means one per available core.  ``serial`` accepts only ``None`` or 1.
        scheduler: ``dask`` only, and required there: ``"tcp://HOST:PORT"`` of a running Dask
            scheduler, or ``"local-cluster"``.

    Example::

        executor = Executor(backend="dask", scheduler="local-cluster", workers=2)
        results = executor.run(fn, payloads, shared=model, store="out/run.jsonl")
    """

    backend: str = "local"
    workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if self.workers is not None:
            if isinstance(self.workers, bool) or not isinstance(self.workers, int):
                raise ValueError(f"workers must be a positive integer or None, got {self.workers!r}")
            if self.workers < 1:
                raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.backend != "dask":
            if self.scheduler is not None:
                raise ValueError(
                    f"scheduler={self.scheduler!r} needs backend 'dask' (backend is {self.backend!r})"
                )
            if self.backend == "serial" and self.workers not in (None, 1):
                raise ValueError(f"backend 'serial' runs one sample at a time; got workers={self.workers}")
            return
        if self.scheduler is None:
            raise ValueError(
                f"backend 'dask' needs a scheduler: an address tcp://HOST:PORT or {LOCAL_CLUSTER!r}"
            )
        if self.scheduler != LOCAL_CLUSTER:
            _split_address(self.scheduler)  # raises ValueError when malformed
            if self.workers is not None:
                raise ValueError(
                    "workers applies to the local back end and to scheduler 'local-cluster'; "
                    f"the cluster at {self.scheduler} has the workers it was started with"
                )

    @classmethod
    def from_options(
        cls,
        *,
        backend: str | None = None,
        scheduler: str | None = None,
        workers: int | str | None = None,
    ) -> Executor:
        """Build an executor from command-line style options.

        ``backend=None`` means ``"dask"`` when a scheduler is given and ``"local"`` otherwise;
        ``workers`` may be a decimal string.  See :func:`add_executor_options`.

        Example::

            Executor.from_options(scheduler="tcp://10.0.0.5:8786")   # backend "dask"
            Executor.from_options(backend="local", workers="4")
        """
        if isinstance(workers, str):
            try:
                workers = int(workers)
            except ValueError:
                raise ValueError(f"workers must be a positive integer, got {workers!r}") from None
        if scheduler is not None and not scheduler.strip():
            scheduler = None
        if backend is None:
            backend = "dask" if scheduler is not None else "local"
        return cls(backend=backend, workers=workers, scheduler=scheduler)

    def run(
        self,
        fn: SampleFunction,
        items: Mapping[SampleKey, Any] | Iterable[Any],
        *,
        shared: Any = None,
        store: ResultStore | str | os.PathLike[str] | None = None,
        progress: bool = True,
        desc: str | None = None,
        retries: int = 2,
    ) -> list[SampleResult]:
        """Apply ``fn(shared, payload)`` to every sample; see :func:`run_samples`."""
        if not callable(fn):
            raise ValueError(f"fn must be callable, got {type(fn).__name__}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        samples = _as_samples(items)
        fn_name = _qualified_name(fn)
        if store is not None and not isinstance(store, ResultStore):
            store = ResultStore(store)

        # Lock the store before reading it, so that a concurrent run cannot append in between.
        close_store = store is not None and not store.is_open
        if close_store:
            store.open()
        try:
            finished: dict[SampleKey, SampleResult] = {}
            if store is not None:
                stored = store.load(fn_name=fn_name)
                finished = {key: stored[key] for key, _ in samples if key in stored and stored[key].ok}
            pending = [(key, payload) for key, payload in samples if key not in finished]
            bar = _progress_bar(total=len(samples), initial=len(finished), enabled=progress,
                                desc=desc or getattr(fn, "__name__", "samples"))
        except BaseException:
            if close_store:
                store.close()
            raise
        failures = 0

        def record(sample: SampleResult) -> None:
            nonlocal failures
            if store is not None:
                store.append(sample, fn_name=fn_name)
            finished[sample.key] = sample
            if not sample.ok:
                failures += 1
                bar.set_postfix(failed=failures, refresh=False)
            bar.update(1)

        try:
            if pending:
                if self.backend == "serial":
                    _run_serial(fn, pending, shared, record)
                elif self.backend == "local":
                    _run_local(fn, pending, shared, record, workers=self.workers, retries=retries)
                else:
                    _run_dask(fn, pending, shared, record, scheduler=self.scheduler or LOCAL_CLUSTER,
                              workers=self.workers, retries=retries)
        finally:
            bar.close()
            if close_store:
                store.close()
        return [finished[key] for key, _ in samples]


def run_samples(
    fn: SampleFunction,
    items: Mapping[SampleKey, Any] | Iterable[Any],
    *,
    shared: Any = None,
    backend: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    store: ResultStore | str | os.PathLike[str] | None = None,
    progress: bool = True,
    desc: str | None = None,
    retries: int = 2,
) -> list[SampleResult]:
    """Apply ``fn(shared, payload)`` to every sample and return the results in input order.

    Args:
        fn: a module-level function (worker processes import it by name) returning a
            JSON-serialisable dict.  ``numpy``/``torch`` values are converted with ``tolist()``.
        items: a mapping ``{key: payload}`` (keys are ``str`` or ``int``, order is input order) or
            an iterable of payloads, whose keys are then their positions 0, 1, 2, ...
        shared: data every sample needs (model, layer matrices); sent to each worker once.
        backend, workers, scheduler: see :class:`Executor`.
        store: a :class:`ResultStore` or a path.  Results are appended as they arrive; samples
            already stored as ``"ok"`` are not run again, samples stored as ``"failed"`` are.
            ``None``: keep nothing on disk.
        progress: show a tqdm progress bar on stderr.
        desc: label of the progress bar (default: the function's name).
        retries: how often a sample is run again after a worker process died while running it
            (an exception in ``fn`` is not retried within the run).  ``local``: deaths of a worker
            that ran only this sample count (samples in flight when a worker dies are rerun one
            at a time to find the culprit).  ``dask``: with ``"local-cluster"`` this is the
            scheduler's ``allowed_failures``; a running scheduler keeps its own setting (Dask's
            default is 3).  Also, for ``dask``, how often samples are resubmitted after every
            worker holding the scattered ``shared`` died, and Dask's ``retries=`` for errors
            raised outside ``fn`` (e.g. unpickling a payload on a worker).

    Returns:
        One :class:`SampleResult` per sample, in input order.

    Raises:
        ValueError: bad options, keys or items; ``fn``/``shared`` not picklable (``local``).
        ConnectionError: no Dask scheduler answers at ``scheduler``.
        RuntimeError: the store is in use by another run; worker processes keep dying before
            running any sample.

    Example::

        >>> from reluinv.parallel import run_samples
        >>> def scaled(factor, x):
        ...     return {"value": factor * x}
        >>> [r.result["value"] for r in run_samples(scaled, [1, 2, 3], shared=10,
        ...                                         backend="serial", progress=False)]
        [10, 20, 30]
    """
    executor = Executor(backend=backend, workers=workers, scheduler=scheduler)
    return executor.run(fn, items, shared=shared, store=store, progress=progress, desc=desc,
                        retries=retries)


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend``, ``--scheduler`` and ``--workers`` to a command-line parser.

    Pass the parsed values to :meth:`Executor.from_options`.

    Example::

        parser = argparse.ArgumentParser()
        add_executor_options(parser)
        args = parser.parse_args(["--scheduler", "local-cluster", "--workers", "2"])
        executor = Executor.from_options(backend=args.backend, scheduler=args.scheduler,
                                         workers=args.workers)
    """
    group = parser.add_argument_group("execution")
    group.add_argument("--backend", choices=BACKENDS, default=None,
                       help="where per-sample work runs (default: dask if --scheduler is given, else local)")
    group.add_argument("--scheduler", default=None, metavar="ADDR",
                       help=f"Dask scheduler tcp://HOST:PORT, or {LOCAL_CLUSTER} to start one here")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes (local back end or local-cluster; default: one per core)")


# ----------------------------------------------------------------------------------------------
# Running one sample (in whichever process executes it)


def _evaluate(fn: SampleFunction, shared: Any, key: SampleKey, payload: Any) -> SampleResult:
    # Converting to JSON and back here, in the worker, makes every back end and a resumed run
    # return the very same values, and turns an unserialisable result into this sample's failure.
    try:
        value = fn(shared, payload)
        if not isinstance(value, Mapping):
            raise TypeError(f"{_qualified_name(fn)} must return a dict, got {type(value).__name__}")
        result = json.loads(json.dumps(dict(value), default=_json_value))
    except Exception as exc:  # noqa: BLE001 - any error of one sample is that sample's result
        return _failure(key, exc)
    return SampleResult(key=key, status="ok", result=result)


def _failure(key: SampleKey, exc: BaseException) -> SampleResult:
    return SampleResult(
        key=key,
        status="failed",
        error=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback_module.format_exception(exc)),
    )


def _json_value(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    raise TypeError(f"a result value of type {type(value).__name__} is not JSON-serialisable")


# ----------------------------------------------------------------------------------------------
# serial


def _run_serial(fn: SampleFunction, pending: list[tuple[SampleKey, Any]], shared: Any,
                record: Callable[[SampleResult], None]) -> None:
    for key, payload in pending:
        record(_evaluate(fn, shared, key, payload))


# ----------------------------------------------------------------------------------------------
# local: worker processes on this machine

# Set in each worker process by _start_local_worker.
_worker_fn: SampleFunction | None = None
_worker_shared: Any = None
_worker_started: Any = None  # shared byte array: started[i] = 1 once sample i of the batch began
_worker_thread_limits: Any = None  # keeps threadpoolctl's limits alive

_THREAD_ENVIRONMENT = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                       "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def _start_local_worker(pickled_work: bytes, started: Any, threads: int) -> None:
    global _worker_fn, _worker_shared, _worker_started, _worker_thread_limits
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
    return _evaluate(_worker_fn, _worker_shared, key, payload)


def _available_cores() -> int:
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


def _run_local(fn: SampleFunction, pending: list[tuple[SampleKey, Any]], shared: Any,
               record: Callable[[SampleResult], None], *, workers: int | None, retries: int) -> None:
    """Run ``pending`` on a process pool, rebuilding it when a worker dies.

    A dead worker breaks the whole pool and every unfinished sample with it, without saying which
    sample killed it.  The samples that had started but not finished are the suspects; they are
    rerun one at a time on a single worker, where a death is unambiguous and is charged to that
    sample.  Only charged deaths count against ``retries``.  The other unfinished samples are
    simply submitted again.
    """
    try:
        pickled_work = pickle.dumps((fn, shared), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ValueError(
            f"backend 'local' sends fn and shared to worker processes by pickling, which failed "
            f"({type(exc).__name__}: {exc}); fn must be a module-level function"
        ) from exc
    context = _process_context()
    cores = _available_cores()
    width = min(workers or cores, len(pending))
    queue = list(pending)
    suspects: list[tuple[SampleKey, Any]] = []
    charged_deaths: dict[SampleKey, int] = {}
    unexplained_breaks = 0

    while queue or suspects:
        alone = bool(suspects)
        batch = suspects if alone else queue
        pool_size = 1 if alone else min(width, len(batch))
        started = context.RawArray("b", len(batch))
        done: set[int] = set()
        broken: BrokenProcessPool | None = None
        pool = ProcessPoolExecutor(max_workers=pool_size, mp_context=context,
                                   initializer=_start_local_worker,
                                   initargs=(pickled_work, started, max(1, cores // pool_size)))
        try:
            futures = {pool.submit(_run_local_sample, i, key, item): i
                       for i, (key, item) in enumerate(batch)}
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
                    record(_failure(batch[i][0], exc))
                else:  # KeyboardInterrupt or SystemExit inside a worker stops the run
                    raise exc
                done.add(i)
        except BaseException:
            _stop_now(pool)
            raise
        pool.shutdown(wait=True)

        if broken is None:
            if alone:
                suspects = []
            else:
                queue = []
            continue
        in_flight = [i for i in range(len(batch)) if started[i] and i not in done]
        unfinished = [i for i in range(len(batch)) if i not in done]
        if not in_flight:
            # The pool died without a sample running: e.g. `shared` cannot be unpickled in a worker.
            unexplained_breaks += 1
            if unexplained_breaks > retries:
                raise RuntimeError(
                    f"worker processes died {unexplained_breaks} times before running any sample: "
                    f"{broken}"
                ) from broken
        if alone:
            for i in in_flight:  # exactly one: the pool had one worker
                key = batch[i][0]
                charged_deaths[key] = charged_deaths.get(key, 0) + 1
                if charged_deaths[key] > retries:
                    record(SampleResult(
                        key=key, status="failed",
                        error=f"WorkerDied: a worker process running only this sample died "
                              f"{charged_deaths[key]} times",
                    ))
                    done.add(i)
            suspects = [batch[i] for i in unfinished if i not in done]
        else:
            suspects = [batch[i] for i in in_flight]
            queue = [batch[i] for i in unfinished if i not in in_flight]


def _stop_now(pool: ProcessPoolExecutor) -> None:
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


# ----------------------------------------------------------------------------------------------
# dask


def _split_address(address: str) -> tuple[str, int]:
    parts = urlsplit(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path:
        raise ValueError(f"scheduler must be tcp://HOST:PORT or {LOCAL_CLUSTER!r}, got {address!r}")
    return parts.hostname, port


def _connect_dask(scheduler: str, *, workers: int | None, retries: int) -> tuple[Any, Any]:
    """Return ``(client, cluster)``; ``cluster`` is None for a running scheduler."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if scheduler == LOCAL_CLUSTER:
        # Saturation 1.0: a worker holds only the task it runs, so when it dies only that task is
        # charged a failure (by default a queued bystander would be charged too).
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            cluster = LocalCluster(
                n_workers=workers or _available_cores(),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,  # no dashboard, hence no bokeh needed
                silence_logs=logging.ERROR,
                # The scheduler's small HTTP server (health, metrics) would try port 8787, which
                # another cluster may hold; any free loopback port will do.
                scheduler_kwargs={"allowed_failures": retries, "dashboard_address": "127.0.0.1:0"},
            )
        try:
            return Client(cluster, set_as_default=False), cluster
        except BaseException:
            cluster.close()
            raise

    # Dask's own connect retries for 30 s or more, and then waits for the scheduler's handshake
    # without any time limit.  A plain TCP probe tells in milliseconds (refused) or a few seconds
    # (unreachable host) that nothing listens; a handshake with a deadline, that what listens is
    # not a Dask scheduler.
    host, port = _split_address(scheduler)
    hint = f"start one with `dask scheduler` or use --scheduler {LOCAL_CLUSTER}"
    try:
        with socket.create_connection((host, port), timeout=SCHEDULER_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConnectionError(f"no Dask scheduler at {scheduler} ({exc}); {hint}") from None
    try:
        _dask_handshake(scheduler, timeout=SCHEDULER_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(
            f"something listens at {scheduler} but did not answer as a Dask scheduler within "
            f"{SCHEDULER_CONNECT_TIMEOUT_S:g} s ({exc or type(exc).__name__}); {hint}"
        ) from None
    client = Client(scheduler, timeout=SCHEDULER_CONNECT_TIMEOUT_S, set_as_default=False)
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_TIMEOUT_S)
    except (OSError, TimeoutError):
        client.close()
        raise RuntimeError(
            f"the Dask scheduler at {scheduler} has had no workers for {WORKER_WAIT_TIMEOUT_S:g} s; "
            f"start some with `dask worker {scheduler}`"
        ) from None
    return client, None


def _dask_handshake(address: str, *, timeout: float) -> None:
    """Connect to ``address`` and exchange Dask's handshake, within ``timeout`` seconds."""
    import asyncio

    from distributed.comm import connect

    async def handshake() -> None:
        comm = await asyncio.wait_for(connect(address, timeout=timeout), timeout)
        await comm.close()

    # In a thread of its own, because the caller may already be running an event loop (Jupyter).
    with ThreadPoolExecutor(max_workers=1) as runner:
        runner.submit(asyncio.run, handshake()).result()


def _run_dask_sample(key: SampleKey, payload: Any, *, fn: SampleFunction, shared: Any) -> SampleResult:
    return _evaluate(fn, shared, key, payload)


def _run_dask(fn: SampleFunction, pending: list[tuple[SampleKey, Any]], shared: Any,
              record: Callable[[SampleResult], None], *, scheduler: str, workers: int | None,
              retries: int) -> None:
    """Run ``pending`` on a Dask cluster.

    A worker that dies while running a task is handled by the scheduler, which runs the task
    elsewhere (``allowed_failures``; then the task errs with ``KilledWorker``).  Scattered data,
    however, cannot be recomputed: once every worker that held ``shared`` has died, the tasks that
    need it are cancelled.  Those samples are collected and submitted again with a fresh scatter,
    at most ``retries`` times.
    """
    from concurrent.futures import CancelledError

    from distributed import as_completed as dask_as_completed

    client, cluster = _connect_dask(scheduler, workers=workers, retries=retries)
    run_id = uuid.uuid4().hex[:8]
    name = getattr(fn, "__name__", "sample")
    remaining = pending
    futures: list[Any] = []
    try:
        for round_number in range(retries + 1):
            # A one-element list, so that a list or dict `shared` is scattered as one object.
            [shared_future] = client.scatter([shared], broadcast=True, hash=False)
            futures = client.map(
                _run_dask_sample,
                [key for key, _ in remaining],
                [payload for _, payload in remaining],
                fn=fn,
                shared=shared_future,
                key=[f"reluinv-{name}-{run_id}-{round_number}-{i}" for i in range(len(remaining))],
                retries=retries,  # for errors raised outside fn, e.g. while unpickling a payload
                pure=False,
            )
            sample_of = {future.key: sample for future, sample in zip(futures, remaining)}
            lost: list[tuple[SampleKey, Any]] = []
            for future in dask_as_completed(futures, loop=client.loop):
                sample = sample_of[future.key]
                try:
                    if future.status == "error":  # outside fn: KilledWorker, unpicklable payload, ...
                        record(_failure(sample[0], future.exception()))
                    elif future.status == "finished":
                        record(future.result())
                    else:  # cancelled: the scattered `shared` was lost with its workers
                        lost.append(sample)
                except CancelledError:  # finished, but the result was lost with its worker
                    lost.append(sample)
            client.cancel([*futures, shared_future])
            futures = []
            remaining = [sample for sample in pending if sample in lost]  # input order
            if not remaining:
                return
        for key, _ in remaining:
            record(SampleResult(
                key=key, status="failed",
                error=f"WorkerDied: the workers holding this sample's data died {retries + 1} times",
            ))
    finally:
        if futures:
            client.cancel(futures)
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------------------------
# helpers


def _check_key(key: Any) -> SampleKey:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise ValueError(f"sample keys must be str or int, got {key!r} ({type(key).__name__})")
    return key


def _as_samples(items: Mapping[SampleKey, Any] | Iterable[Any]) -> list[tuple[SampleKey, Any]]:
    if isinstance(items, (str, bytes)):
        raise ValueError("items must be a mapping {key: payload} or an iterable of payloads, got a string")
    if isinstance(items, Mapping):
        return [(_check_key(key), payload) for key, payload in items.items()]
    try:
        return list(enumerate(items))
    except TypeError:
        raise ValueError(
            f"items must be a mapping {{key: payload}} or an iterable of payloads, got {type(items).__name__}"
        ) from None


def _qualified_name(fn: Callable[..., Any]) -> str:
    target = getattr(fn, "func", fn)  # functools.partial
    module = getattr(target, "__module__", None) or "?"
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{name}"


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(*, total: int, initial: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="sample", dynamic_ncols=True)
