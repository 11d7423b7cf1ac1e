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

The package holds one module per concern: :mod:`.store` (results and the resumable store),
:mod:`.sample` (running one sample), :mod:`.executor` (options and dispatch), and one per back end:
:mod:`.serial`, :mod:`.local`, :mod:`.dask_backend`.
"""

from __future__ import annotations

from .dask_backend import (
    LOCAL_CLUSTER,
    SCHEDULER_CONNECT_TIMEOUT_S,
    SCHEDULER_PROBE_TIMEOUT_S,
    WORKER_WAIT_TIMEOUT_S,
    SchedulerLost,
)
from .executor import (
    BACKENDS,
    Executor,
    RunInterrupted,
    add_executor_options,
    run_samples,
)
from .sample import SampleFunction
from .store import ResultStore, SampleKey, SampleResult

__all__ = [
    "BACKENDS",
    "LOCAL_CLUSTER",
    "SCHEDULER_CONNECT_TIMEOUT_S",
    "SCHEDULER_PROBE_TIMEOUT_S",
    "WORKER_WAIT_TIMEOUT_S",
    "Executor",
    "ResultStore",
    "RunInterrupted",
    "SampleFunction",
    "SampleKey",
    "SampleResult",
    "SchedulerLost",
    "add_executor_options",
    "run_samples",
]
