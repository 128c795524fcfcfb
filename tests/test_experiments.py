"""`python -m cxrcore experiment NAME`: the registry, parallel training of a stage, and the printed results table
is the table the chapters read (real layouts, real training steps on tiny data)."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from layouts import write_chexpert

from cxrcore import make_settings
from cxrcore.__main__ import COMMANDS
from cxrcore.cli import dispatch
from cxrcore.experiments import EXPERIMENTS, experiment, leakage
from cxrcore.experiments.tables import RESULT_COLUMNS


def test_every_registered_experiment_defines_stages_and_results() -> None:
    for name in EXPERIMENTS:
        module = experiment(name)
        assert callable(module.stages) and callable(module.results) and module.NAME == name
    with pytest.raises(ValueError, match="unknown experiment .nope.; experiments: source-models"):
        experiment("nope")


@pytest.mark.slow
def test_experiment_command_prints_the_chapter_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    write_chexpert(root, n_train_patients=30)  # enough certain test positives to score (leakage scores no -1)
    runs = tmp_path / "runs"
    for name, value in {"CXR_PROFILE": "quick", "CXR_DATA_ROOT": str(root), "CXR_RUNS_DIR": str(runs)}.items():
        monkeypatch.setenv(name, value)
    assert dispatch(COMMANDS, "cxrcore", "", ["experiment", "leakage", "--jobs", "2"]) == 0  # two processes
    printed = capsys.readouterr()
    assert "==> experiment leakage" in printed.err and "trained 2 runs" in printed.err  # progress: stderr
    assert "patient-wise" in printed.out and "image-wise" in printed.out  # the table: stdout
    assert dispatch(COMMANDS, "cxrcore", "", ["experiment", "leakage", "--format", "csv"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out))  # nothing but the CSV on stdout
    assert list(printed.columns) == RESULT_COLUMNS and list(printed["arm"]) == list(leakage.SPLITS)
    chapter = leakage.results(make_settings("quick", root, runs))  # what the data chapter shows
    pd.testing.assert_frame_equal(printed[["train_images", "test_images"]], chapter[["train_images", "test_images"]])
    assert printed["mean_auroc"].round(4).tolist() == chapter["mean_auroc"].round(4).tolist()


def test_leakage_counts_test_images_with_a_sibling_in_training(tmp_path: Path) -> None:
    """Image-wise, a real patient's images land on both sides; patient-wise, never."""
    root = tmp_path / "data"
    write_chexpert(root, n_train_patients=12)
    tables = leakage.split_tables(root)
    assert leakage.sibling_share(tables["patient-wise"]) == 0.0
    image_wise = tables["image-wise"]
    test = image_wise[image_wise["split"] == "test"]
    expected = test["real_patient"].isin(image_wise.loc[image_wise["split"] == "train", "real_patient"]).mean()
    assert leakage.sibling_share(image_wise) == expected
