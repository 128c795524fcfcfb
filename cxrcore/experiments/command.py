"""`python -m cxrcore experiment NAME [--format table|csv] [--jobs N] [--estimate]`: run a chapter's experiment (or
read it from the run cache) and print its results table; `NAME` may be `all` (every experiment, trained only);
`--estimate` trains nothing and prints each run's estimated seconds on one GPU (`cxrcore.experiments.estimate`)."""
from __future__ import annotations

import argparse
import sys
import time

from cxrcore.experiments import BOOK_EXPERIMENTS, EXPERIMENTS, experiment
from cxrcore.experiments.training import evaluate_all, train_stages
from cxrcore.settings import settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m cxrcore experiment`."""
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"],
                        help="the experiment (all: train every one the book's chapters read)")
    parser.add_argument("--format", choices=("table", "csv"), default="table", help="how to print the results")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, each in its own process with cores/jobs threads (default 1)")
    parser.add_argument("--estimate", action="store_true",
                        help="train nothing: print each run's estimated seconds on one GPU (from FLOPs), and totals")


def main(args: argparse.Namespace) -> int:
    """Train what is missing from the run cache, test the runs on the other test sets the chapter reads, then print
    the results table (settings from the environment)."""
    context = settings()
    names = list(BOOK_EXPERIMENTS) if args.name == "all" else [args.name]
    if args.estimate:
        return _print_estimate(names, context)
    start = time.perf_counter()
    print(f"==> experiment {', '.join(names)} ({context.profile} profile, runs in {context.runs_dir})",
          file=sys.stderr, flush=True)
    # stage k of every experiment together: runs that several experiments share are trained once, and a stage
    # holds enough runs to keep every job busy
    stages = [experiment(name).stages(context) for name in names]
    merged = [[config for parts in stages if k < len(parts) for config in parts[k]]
              for k in range(max(map(len, stages)))]
    train_stages(merged, context.runs_dir, jobs=args.jobs)
    evaluations = [getattr(experiment(name), "evaluations", lambda _: [])(context) for name in names]
    evaluate_all([pair for pairs in evaluations for pair in pairs], context.runs_dir, jobs=args.jobs)
    print(f"==> experiment {', '.join(names)}: trained in {time.perf_counter() - start:.0f} s", file=sys.stderr,
          flush=True)
    if args.name == "all":
        return 0
    table = experiment(args.name).results(context)
    if args.format == "csv":
        print(table.to_csv(index=False, float_format="%.4f"), end="")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _print_estimate(names: list[str], context) -> int:
    """Each run's estimated GPU seconds, then the totals per experiment."""
    from cxrcore.experiments.estimate import estimate, summary

    print(f"==> estimated training time on one GPU ({context.profile} profile, data {context.data_root})",
          file=sys.stderr, flush=True)
    table = estimate(names, context)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print()
    print(summary(table).to_string())
    return 0
