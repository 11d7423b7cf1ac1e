"""The ``reluinv`` command.

One rule for every failure the user can cause (a bad option, file, folder, data, an unreachable or
lost scheduler): exit status 2 and one line ``reluinv: error: ...`` on stderr naming what is at
fault; the traceback only with ``--debug``.  Ctrl-C and SIGTERM stop a run cleanly (worker
processes included) with one line saying how many samples are kept, and exit status 130; the
same command resumes.  Anything else is a bug: one line ``reluinv: internal error: ...`` and exit
status 1 (the traceback with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .parallel import add_executor_options

if TYPE_CHECKING:
    from .experiments.common import RunConfig

#: Exit status of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: Exit status of every failure the user can cause.
EXIT_USER_FAULT = 2
#: Exceptions that mean "the input, the options or the environment is at fault".
USER_FAULTS = (ValueError, OSError, RuntimeError)
#: Libraries whose log records would add lines to a one-line error (shown with ``--debug``).
_NOISY_LOGGERS = ("distributed", "tornado", "asyncio")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors follow the one-line rule."""

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        self.exit(EXIT_USER_FAULT, f"reluinv: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _demo(args: argparse.Namespace) -> int:
    from .experiments.preimage_table import format_table, preimage_table

    result = preimage_table(samples=args.samples, progress=not args.no_progress)
    print(format_table(result))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    """``reluinv reproduce``: each figure computed (or reused when stored with the same setting),
    plotted, then stored in ``OUT/results/<figure>.json``; ``results.json`` (with the paper's
    claims evaluated on it) and ``index.html`` merged from all stored figures under a lock, so
    that two runs into one ``--out`` keep both their results."""
    from .experiments import FIGURES
    from .experiments.common import RunConfig, check_output_folder
    from .network import checked_device
    from .parallel import Executor

    figures = args.figures or list(FIGURES)
    for key in figures:
        if key not in FIGURES:
            raise ValueError(f"unknown figure {key!r}; choose from {', '.join(FIGURES)}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {args.data_dir!r} is not a folder")
    device = str(checked_device(args.device))
    executor = Executor.from_options(backend=args.backend, scheduler=args.scheduler, workers=args.workers)
    out = check_output_folder(Path(args.out))
    executor.check_reachable()
    config = RunConfig(
        quick=not args.full,
        data_dir=args.data_dir,
        out=out,
        executor=executor,
        progress=not args.no_progress,
        limit=args.limit,
        epochs=args.epochs,
        device=device,
        algorithm1_samples=args.algorithm1_samples,
    )
    for key in figures:
        _figure(key, config, force=args.force)
    print(f"report: {_write_report(out, config)}")
    return 0


def _figure(key: str, config: RunConfig, *, force: bool) -> None:
    """Reuse or compute figure ``key``; store it only once its plot has been written."""
    import time

    from . import report
    from .experiments import runner
    from .experiments.common import Setting, figure_path, load_figure, save_figure

    setting = Setting.of(config)
    stored = None if force else load_figure(config.out, key, setting)
    if stored is not None:
        try:
            report.write_figure(key, stored, config.out)
        except Exception as exc:  # noqa: BLE001 - a stored result that cannot be plotted is redone
            print(
                f"{key}: the stored result cannot be plotted ({type(exc).__name__}: {exc}); recomputing",
                file=sys.stderr,
            )
        else:
            print(f"{key}: already in {figure_path(config.out, key)}, kept (use --force to recompute)")
            return
    start = time.perf_counter()
    result = runner(key)(config)
    result["seconds"] = time.perf_counter() - start
    try:
        report.write_figure(key, result, config.out)
    except Exception as exc:
        raise RuntimeError(
            f"{key}: computed, but its plot failed ({type(exc).__name__}: {exc}); the result was not stored"
        ) from exc
    save_figure(config.out, key, setting, result)
    print(f"{key}: computed in {result['seconds']:.1f} s")


def _write_report(out: Path, config: RunConfig) -> Path:
    """results.json and index.html from every stored figure of this run's mode and data."""
    from . import report
    from .experiments.claims import evaluate as evaluate_claims
    from .experiments.common import Setting, load_results, merged_results, results_lock, save_results

    with results_lock(out):
        load_results(out / "results.json")  # a corrupt file is reported and kept aside
        results = merged_results(out, Setting.of(config))
        results["claims"] = evaluate_claims(results)
        save_results(out / "results.json", results)
        return report.write_index(results, out)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reluinv",
        description="Invariance and inverse stability of ReLU networks, through their inverse.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error (and library log messages)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="preimage analysis of a small trained network (a table)")
    demo.add_argument("--samples", type=_positive_int, default=60, help="test digits to analyse (default 60)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(run=_demo)

    rep = sub.add_parser("reproduce", help="reproduce the paper's figures into an HTML report")
    rep.add_argument("figures", nargs="*", metavar="FIGURE", help="figure keys (default: all)")
    budget = rep.add_mutually_exclusive_group()
    budget.add_argument(
        "--quick",
        action="store_true",
        default=True,
        help="small sample counts and epochs, stated on every figure (default)",
    )
    budget.add_argument("--full", action="store_true", help="the paper's sample counts and epochs")
    rep.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder with MNIST/Fashion-MNIST IDX files or CIFAR-10 python batches",
    )
    rep.add_argument("--out", default="reluinv-out", metavar="DIR", help="output folder")
    rep.add_argument("--force", action="store_true", help="recompute figures already stored")
    rep.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="cap every sample count at N >= 1 (a smoke run; its results are recomputed by a run without it)",
    )
    rep.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="cap every training at N >= 1 epochs (a smoke run, like --limit)",
    )
    rep.add_argument(
        "--algorithm1-samples",
        type=_positive_int,
        default=None,
        metavar="N",
        help="Figure 4: how many scanned samples the paper's literal Algorithm 1 also decides, a "
        "seeded random subset (default: all in quick mode, 200 in full mode)",
    )
    rep.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where the per-sample spectra (Figures 5, 6, 8, 10, 11) and Figure 4's factorisations "
        "run (default cpu)",
    )
    rep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_executor_options(rep)
    rep.set_defaults(run=_reproduce)

    from .experiments.analyze import add_analyze_parser

    add_analyze_parser(sub)
    for command in sub.choices.values():
        # `reluinv reproduce ... --debug` works too; absent there, the top-level value stands.
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def _run_environment(args: argparse.Namespace) -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does; library log records are hidden unless ``--debug``."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    if not args.debug and (getattr(args, "scheduler", None) or getattr(args, "backend", None) == "dask"):
        import distributed  # noqa: F401 - it sets its loggers' levels on import; ours must come after
    names = [
        name
        for name in [*_NOISY_LOGGERS, *logging.root.manager.loggerDict]
        if name.split(".")[0] in _NOISY_LOGGERS
    ]  # children may carry levels of their own
    levels = {name: logging.getLogger(name).level for name in names}
    if not args.debug:
        for name in levels:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _run_environment(args):
            return int(args.run(args))
    except KeyboardInterrupt as exc:
        if args.debug:
            raise
        detail = f"; {_one_line(exc)}" if str(exc) else ""
        print(f"reluinv: interrupted{detail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_FAULTS as exc:
        if args.debug:
            raise
        print(f"reluinv: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_FAULT
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if args.debug:
            raise
        print(
            f"reluinv: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
