"""The book's experiments, one module per chapter experiment, each runnable as `python -m cxrcore experiment NAME`.

Layers (each imports only the layers below it):

* the chapters (book/): read the tables and runs these modules define;
* `cxrcore.experiments`: configs, runs and results tables of each experiment; the one place that joins the engine
  and `data_prep` (manifests are built from the real layouts here);
* `data_prep`: layout readers, statistics, labelers, the synthetic sites;
* the `cxrcore` engine: datasets, models, train, metrics, cam, runner; it never imports `data_prep`.

An experiment module defines `stages(settings)` (lists of run configs; a stage's runs are independent, so they may
train in parallel, and a later stage may start from an earlier stage's runs) and `results(settings)` (its table, one
row per model and arm). A chapter and the command call the same two functions, so they read the same cached runs.
A module may also define `evaluations(settings)`: (run config, manifest) pairs, finished runs to test on another
manifest's test split (`evaluation.evaluate`), which the command computes after training, as many at once as runs.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# experiment name -> module (each defines stages(settings) and results(settings))
EXPERIMENTS = {  # in the order `experiment all` starts them: the longest runs first
    "source-models": "cxrcore.experiments.source_models",
    "transfer": "cxrcore.experiments.transfer",
    "transfer-sizes": "cxrcore.experiments.transfer_sizes",
    "leakage": "cxrcore.experiments.leakage",
    "paper002": "cxrcore.experiments.paper002",
    "paper003": "cxrcore.experiments.paper003",
    "multisite": "cxrcore.experiments.multisite",
    "paper001": "cxrcore.experiments.paper001",
    "resampling": "cxrcore.experiments.resampling",
    "shortcut": "cxrcore.experiments.shortcut",
}
# what `experiment all` trains: the experiments the book's chapters read
BOOK_EXPERIMENTS = ("source-models", "transfer", "transfer-sizes", "leakage", "paper002", "paper003", "multisite",
                    "paper001", "resampling", "shortcut")


def experiment(name: str) -> ModuleType:
    """The module of a named experiment (ValueError lists the names)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
