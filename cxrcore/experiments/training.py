"""Train experiments' runs, several at once (one process per run, threads split), each as soon as the runs it
starts from are done, the longest first; then test finished runs on other manifests (`evaluate_all`), as many at
once."""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from cxrcore.experiments.evaluation import evaluate, evaluation_file
from cxrcore.runner import run, run_key

# relative cost of one training image at the quick profile's size on a CPU (the benchmarks appendix): only the
# order in which runs start depends on it
ARCH_COST = {"resnet18": 0.7, "densenet121": 1.0, "resnet38": 1.0, "resnet50": 1.4, "resnet101": 2.4, "vgg16": 4.3}
FEATURE_CACHE_COST = 0.1  # a frozen backbone's arm: one forward pass, then the head on cached features


def _use_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_one(config: dict, runs_dir: str) -> tuple[str, float, bool]:
    result = run(config, runs_dir=runs_dir)
    return result.key, result.elapsed, result.cached


def estimated_cost(config: dict) -> float:
    """A rough training cost (image passes, weighted by architecture) used to start long runs first."""
    images = config.get("max_train_images") or 2000
    epochs = (config.get("overrides") or {}).get("epochs", 10)
    cost = ARCH_COST.get(config.get("arch", ""), 1.0) * images * epochs
    return cost * FEATURE_CACHE_COST if config.get("feature_cache") else cost


def dependencies(pending: dict[str, dict], runs_dir: Path) -> dict[str, set[str]]:
    """Run key -> keys of the pending runs it starts from (`weights` given as {"run": config})."""
    sources = {key: config.get("weights") for key, config in pending.items()}
    return {key: {run_key(source["run"], runs_dir=runs_dir)} & pending.keys() if isinstance(source, dict) else set()
            for key, source in sources.items()}


def run_order(pending: dict[str, dict], needed: dict[str, set[str]]) -> list[str]:
    """Keys in the order to start them: the longest chain of runs (a run, then the runs that start from it) first."""
    def chain(key: str) -> float:
        later = [chain(other) for other, needs in needed.items() if key in needs]
        return estimated_cost(pending[key]) + max(later, default=0.0)
    return sorted(pending, key=lambda key: -chain(key))


def _report(key: str, elapsed: float) -> None:
    print(f"  run {key}: {elapsed:.0f} s", file=sys.stderr, flush=True)


def train_stages(stages: list[list[dict]], runs_dir: Path, jobs: int = 1) -> None:
    """Run every config not yet in the run cache; with jobs > 1, that many at once, each run starting as soon as
    the runs of earlier stages it starts from are finished.

    On a CPU, two one-thread processes train more images per second in all than one two-thread process (see the
    benchmarks appendix).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    keyed = {run_key(config, runs_dir=runs_dir): config for stage in stages for config in stage}  # shared runs once
    pending = {key: config for key, config in keyed.items() if not (runs_dir / key).is_dir()}
    if not pending:
        return
    start = time.perf_counter()
    needed = dependencies(pending, runs_dir)
    order = run_order(pending, needed)
    if jobs == 1 or len(pending) == 1:
        for key in order:  # every run's dependencies come first in `order`
            _report(*_train_one(pending[key], str(runs_dir))[:2])
    else:
        _train_parallel(pending, order, needed, runs_dir, jobs)
    print(f"  trained {len(pending)} runs: {time.perf_counter() - start:.0f} s wall", file=sys.stderr, flush=True)


def _train_parallel(pending: dict[str, dict], order: list[str], needed: dict[str, set[str]], runs_dir: Path,
                    jobs: int) -> None:
    waiting, done, running = list(order), set(), {}
    with _process_pool(jobs, len(pending)) as pool:
        while waiting or running:
            for key in [k for k in waiting if needed[k] <= done][:jobs - len(running)]:
                waiting.remove(key)
                running[pool.submit(_train_one, pending[key], str(runs_dir))] = key
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done.add(running.pop(future))
                _report(*future.result()[:2])  # re-raises a failed run's error


def _process_pool(jobs: int, tasks: int) -> ProcessPoolExecutor:
    """Up to `jobs` processes, spawned (no forked torch thread pools), each with cores/jobs threads."""
    return ProcessPoolExecutor(max_workers=min(jobs, tasks), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_use_threads, initargs=(max(1, (os.cpu_count() or 1) // jobs),))


def _evaluate_one(config: dict, manifest: str, runs_dir: str) -> None:
    evaluate(run(config, runs_dir=runs_dir), manifest)


def evaluate_all(evaluations: list[tuple[dict, Path]], runs_dir: Path, jobs: int = 1) -> None:
    """Test each finished run on its manifest's test split (`evaluation.evaluate`, cached), those not yet cached,
    `jobs` at once: inference only, so the chapters read every table back."""
    files = {evaluation_file(run(config, runs_dir=runs_dir), manifest): (config, str(manifest))
             for config, manifest in evaluations}  # an evaluation asked for twice is done once
    pending = [task for path, task in files.items() if not path.is_file()]
    if not pending:
        return
    start = time.perf_counter()
    if jobs == 1 or len(pending) == 1:
        for config, manifest in pending:
            _evaluate_one(config, manifest, str(runs_dir))
    else:
        with _process_pool(jobs, len(pending)) as pool:
            for future in [pool.submit(_evaluate_one, config, manifest, str(runs_dir)) for config, manifest in pending]:
                future.result()  # re-raises a failed evaluation's error
    print(f"  tested {len(pending)} runs on other test sets: {time.perf_counter() - start:.0f} s wall",
          file=sys.stderr, flush=True)
