"""Train an experiment's runs, stage by stage, optionally several at once (one process per run, threads split)."""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from cxrcore.runner import run, run_key


def _use_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_one(config: dict, runs_dir: str) -> tuple[str, float, bool]:
    result = run(config, runs_dir=runs_dir)
    return result.key, result.elapsed, result.cached


def train_stages(stages: list[list[dict]], runs_dir: Path, jobs: int = 1) -> None:
    """Run every config not yet in the run cache; a stage's runs in parallel processes when jobs > 1.

    On a CPU, two one-thread processes train more images per second in all than one two-thread process (see the
    benchmarks appendix), and runs of one stage never depend on each other (a later stage may start from them).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    for stage in stages:
        keyed = {run_key(config, runs_dir=runs_dir): config for config in stage}  # a shared run appears once
        pending = [config for key, config in keyed.items() if not (runs_dir / key).is_dir()]
        if not pending:
            continue
        start = time.perf_counter()
        if jobs == 1 or len(pending) == 1:
            done = [_train_one(config, str(runs_dir)) for config in pending]
        else:
            context = multiprocessing.get_context("spawn")  # no forked torch thread pools
            with ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=context,
                                     initializer=_use_threads, initargs=(threads,)) as pool:
                done = list(pool.map(_train_one, pending, [str(runs_dir)] * len(pending)))
        for key, elapsed, _ in done:
            print(f"  run {key}: {elapsed:.0f} s", file=sys.stderr, flush=True)
        print(f"  stage of {len(pending)} runs: {time.perf_counter() - start:.0f} s wall", file=sys.stderr, flush=True)
