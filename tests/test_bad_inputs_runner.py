"""Bad inputs to the runner, as a new user makes them: configs of the wrong type or range, missing images, a wrong
data root, the same run started twice at once, a failed or killed run. Each is refused before any work (or cleaned
up after), with a message naming the culprit, and leaves the run cache and the user's files as they were."""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from layouts import write_chexpert, write_hospital, write_nih

from cxrcore import make_settings
from cxrcore.__main__ import COMMANDS
from cxrcore.cli import dispatch
from cxrcore.experiments import EXPERIMENTS, experiment, transfer
from cxrcore.presets import Preset
from cxrcore.runner import RunConfig, run, run_key

FINDINGS = ["Lung Opacity", "Pleural Effusion"]  # in this sample the test split has no Pleural Effusion positive
TINY = {"image_size": 32, "epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(DATA_ROOT with CheXpert, ChestX-ray14 and hospital trees of real rows, the transfer chapter's CheXpert
    manifest)."""
    root = tmp_path_factory.mktemp("bad_inputs_root")
    write_chexpert(root, n_train_patients=12)  # 70/10/20 of 12 patients leaves each split at least one
    write_nih(root)
    write_hospital(root, n_studies=40)  # the multi-site chapter's third site
    return root, transfer.target_manifest(root, tmp_path_factory.mktemp("bad_inputs_manifests"))


def _config(site: tuple[Path, Path], **changes: object) -> dict:
    root, manifest = site
    config = {"manifest": str(manifest), "data_root": str(root), "findings": FINDINGS, "policy": "u-ones",
              "arch": "resnet18", "channels": 1, "weights": None, "preset": "paper003", "profile": "quick",
              "overrides": dict(TINY), "seed": 0}
    return {**config, **changes}


def _files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file under folder (what a test must find unchanged)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _entries(runs: Path) -> list[str]:
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


def _train_cli(config_file: Path, runs: Path) -> int:
    return dispatch(COMMANDS, "python -m cxrcore", "", ["train", str(config_file), "--runs-dir", str(runs), "--quiet"])


# ---------------------------------------------------------------- configs


def test_zero_epochs_and_no_findings_are_refused_before_any_work(site, tmp_path) -> None:
    """Both used to train and cache a run that every later call failed to read (or a model with no outputs)."""
    runs = tmp_path / "runs"
    for changes, message in (({"overrides": {**TINY, "epochs": 0}}, r"overrides\['epochs'\]=0: expected a whole "
                                                                     r"number >= 1"),
                             ({"findings": []}, r"findings=\[\]: expected a non-empty list of names")):
        with pytest.raises(ValueError, match=message):
            run(_config(site, **changes), runs_dir=runs)
        with pytest.raises(ValueError, match=message):
            run_key(_config(site, **changes), runs_dir=runs)
    assert _entries(runs) == []  # nothing cached, no work folder
    result = run(_config(site), runs_dir=runs)  # the cache still works for a good config
    assert not result.cached and list(result.history["epoch"]) == [1] and _entries(runs) == [result.key]


@pytest.mark.parametrize(("name", "value", "valid"), [
    ("lr", "0.001", "a number > 0"),
    ("lr", 0, "a number > 0"),
    ("image_size", 0, "a whole number >= 32"),
    ("image_size", -5, "a whole number >= 32"),
    ("epochs", "2", "a whole number >= 1"),
    ("epochs", 1.5, "a whole number >= 1"),
    ("batch_size", True, "a whole number >= 1"),
    ("betas", 0.9, r"a pair \[beta1, beta2\]"),
    ("betas", [0.9, 1.0], r"a pair \[beta1, beta2\] of numbers in \[0, 1\)"),
    ("plateau_factor", 1.5, "a number between 0 and 1"),
    ("augment", "flip", "false, true"),
    ("scheduler", "cosine", "one of"),
])
def test_bad_override_values_are_refused_naming_field_value_and_range(site, tmp_path, name, value, valid) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match=rf"overrides\['{name}'\]={re.escape(repr(value))}: expected {valid}"):
        run(_config(site, overrides={**TINY, name: value}), runs_dir=runs)
    assert _entries(runs) == []


def test_every_preset_field_an_override_may_set_is_checked(site, tmp_path) -> None:
    """An object is a bad value for every preset field: a field added to Preset without a check fails here."""
    overridable = [f.name for f in dataclasses.fields(Preset)
                   if f.name not in ("name", "paper", "quick_profile", "gpu_profile", "chosen")]
    assert "lr" in overridable and "image_size" in overridable
    for name in overridable:
        with pytest.raises(ValueError, match=rf"overrides\['{name}'\]=\{{\}}: expected"):
            run_key(_config(site, overrides={name: {}}), runs_dir=tmp_path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"views": "frontal"}, r"views='frontal': expected a non-empty list of names, e.g. \[\"frontal\"\]"),
    ({"views": ["frontal", "upright"]}, r"views=\['frontal', 'upright'\]: expected a list of views out of"),
    ({"findings": "Atelectasis"}, r"findings='Atelectasis': expected a non-empty list of names"),
    ({"findings": ["Lung Opacity", "Lung Opacity"]}, r"\['Lung Opacity'\] listed more than once"),
    ({"findings": ["Effusion"]}, r"unknown finding\(s\) \['Effusion'\] \(harmonized: 'Effusion' is 'Pleural Eff"),
    ({"channels": 2}, r"channels=2: expected one of \[1, 3\]"),
    ({"seed": "0"}, r"seed='0': expected a whole number >= 0"),
    ({"max_train_images": 0}, r"max_train_images=0: expected a whole number >= 1"),
    ({"draws_per_epoch": 0}, r"draws_per_epoch=0: expected a whole number >= 1"),
    ({"normalization": [0.5, 0.25]}, r"normalization=\[0.5, 0.25\]: expected one of \['imagenet', 'dataset', 'none'"),
    ({"normalization": [[0.5], [0]]}, r"std > 0"),
    ({"arch": "resnet19"}, r"arch='resnet19': expected one of \['densenet121'"),
    ({"policy": "u-twos"}, r"policy='u-twos': unknown policy"),
    ({"policy": {"Lung Opacity": "u-ones"}}, r"policy=.*missing findings \['Pleural Effusion'\]"),
    ({"test_split": "testing"}, r"test_split='testing': expected one of \['train', 'valid', 'test'\]"),
    ({"freeze_backbone": "yes"}, r"freeze_backbone='yes': expected true or false"),
    ({"profile": "fast"}, r"profile='fast': expected one of \['quick', 'smoke', 'gpu', 'full'\]"),
    ({"num_workers": -1}, r"num_workers=-1: expected a whole number >= 0"),
    ({"overrides": [["epochs", 2]]}, r"overrides=\[\['epochs', 2\]\]: expected an object of preset fields"),
    ({"weights": {"run": {"manifest": "m.csv", "findings": "Edema"}}}, r"weights\['run'\].*findings='Edema'"),
    ({"head": "multiclass3"}, r"head='multiclass3' and policy 'u-multiclass'.*go together"),
])
def test_bad_config_fields_are_refused_naming_field_value_and_range(site, tmp_path, changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        run_key(_config(site, **changes), runs_dir=tmp_path)
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(_config(site, **changes))
    assert _entries(tmp_path) == []


def test_json_friendly_forms_and_every_experiment_config_still_pass(site, tmp_path) -> None:
    """Tuples for lists, ints for floats, a Path for a path, any letter case of an arch: accepted, same key as the
    plain JSON form; every config the book's experiments build validates in both profiles."""
    plain = _config(site, views=["frontal"], overrides={**TINY, "lr": 1, "betas": [0, 0.99]})
    friendly = _config(site, findings=tuple(FINDINGS), views=("frontal",), manifest=Path(plain["manifest"]),
                       overrides={**TINY, "lr": 1, "betas": (0, 0.99)}, normalization=((0.5,), (0.25,)))
    assert RunConfig.from_dict(friendly).manifest == plain["manifest"]
    assert run_key(friendly, runs_dir=tmp_path) == run_key({**plain, "normalization": [[0.5], [0.25]]},
                                                          runs_dir=tmp_path)
    assert RunConfig.from_dict(_config(site, arch="ResNet18")).arch == "ResNet18"
    root = site[0]
    checked = 0
    for profile in ("quick", "smoke", "gpu", "full"):
        settings = make_settings(profile, root, tmp_path / "runs")
        for name in EXPERIMENTS:
            for stage in experiment(name).stages(settings):
                for config in stage:
                    RunConfig.from_dict(config)
                    checked += 1
    assert checked >= 60


def test_cli_refuses_a_bad_config_naming_the_file_and_field(site, tmp_path) -> None:
    runs = tmp_path / "runs"
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(_config(site, overrides={**TINY, "lr": "0.001"})))
    with pytest.raises(SystemExit, match=rf"{re.escape(str(config_file))}: run config overrides\['lr'\]='0.001'"):
        _train_cli(config_file, runs)
    config_file.write_text(json.dumps([_config(site)]))
    with pytest.raises(SystemExit, match="expected a JSON object of run config fields, got list"):
        _train_cli(config_file, runs)
    assert _entries(runs) == []


# ---------------------------------------------------------------- images and data root


def _copy_site(site: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the CheXpert tree a test may damage (the module's tree stays whole for the other tests)."""
    root = tmp_path / "data"
    shutil.copytree(site[0] / "CheXpert-v1.0-small", root / "CheXpert-v1.0-small")
    return root


def test_missing_images_of_any_split_are_reported_before_the_first_epoch(site, tmp_path) -> None:
    root = _copy_site(site, tmp_path)
    table = pd.read_csv(site[1])
    gone = [table.loc[table["split"] == "test", "path"].iloc[-1], table.loc[table["split"] == "valid", "path"].iloc[0]]
    for path in gone:
        (root / path).unlink()
    kept = _files(root)
    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError) as caught:
        run(_config(site, data_root=str(root)), runs_dir=runs)
    message = str(caught.value)
    assert message.startswith(f"2 of {len(table)} image files of manifest {site[1]} are missing under data root "
                              f"{root} (valid: 1 of {(table['split'] == 'valid').sum()}")
    assert all(str(root / path) in message for path in gone)
    assert _entries(runs) == []  # refused before any work: no run, no work folder, no lock file
    assert _files(root) == kept


def test_a_wrong_data_root_is_named_as_wrong(site, tmp_path, monkeypatch) -> None:
    root, manifest = site
    runs = tmp_path / "runs"
    inside = root / "CheXpert-v1.0-small"  # exists, but the manifest's paths are relative to its parent
    with pytest.raises(FileNotFoundError, match=rf"data root {re.escape(str(inside))} holds none of the "
                                                rf"{len(pd.read_csv(manifest))} image files of manifest .*: the data "
                                                r"root is wrong; .*\$CXR_DATA_ROOT"):
        run(_config(site, data_root=str(inside)), runs_dir=runs)
    monkeypatch.setenv("CXR_DATA_ROOT", str(tmp_path / "no-such-folder"))  # the CLI's data root
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({k: v for k, v in _config(site).items() if k != "data_root"}))
    with pytest.raises(FileNotFoundError, match=rf"data root {re.escape(str(tmp_path / 'no-such-folder'))} is not a "
                                                r"folder: the data root is wrong; .*\$CXR_DATA_ROOT"):
        _train_cli(config_file, runs)
    assert _entries(runs) == []


def test_a_failed_run_leaves_no_work_folder(site, tmp_path) -> None:
    """A corrupt training image fails the first epoch: the error names it and nothing is left in the run cache."""
    root = _copy_site(site, tmp_path)
    table = pd.read_csv(site[1])
    broken = root / table.loc[table["split"] == "train", "path"].iloc[0]
    broken.write_bytes(b"not a JPEG")
    runs = tmp_path / "runs"
    with pytest.raises(OSError, match=rf"cannot decode image file {re.escape(str(broken))}"):
        run(_config(site, data_root=str(root)), runs_dir=runs)
    assert _entries(runs) == []


# ---------------------------------------------------------------- the same run twice, a killed run


def test_the_same_run_started_twice_at_once_trains_once(site, tmp_path) -> None:
    runs = tmp_path / "runs"
    results, errors = [], []

    def start() -> None:
        try:
            results.append(run(_config(site), runs_dir=runs))
        except Exception as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sorted(r.cached for r in results) == [False, True]
    assert results[0].key == results[1].key
    pd.testing.assert_frame_equal(results[0].predictions, results[1].predictions)
    assert _entries(runs) == [results[0].key]  # no work folder, no lock file


def test_a_second_run_of_a_key_waits_for_the_lock_holder(site, tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    key = run_key(_config(site), runs_dir=runs)
    results = []
    with open(runs / f".work-{key}.lock", "a") as holder:  # another process computing this key
        fcntl.flock(holder, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: results.append(run(_config(site), runs_dir=runs)))
        waiting.start()
        time.sleep(1.0)
        assert waiting.is_alive() and not (runs / f".work-{key}").exists()  # it waits, touching nothing
    waiting.join(timeout=60)
    assert f"run {key}: another process is computing it" in capsys.readouterr().err
    assert results[0].key == key and not results[0].cached
    assert _entries(runs) == [key]


@pytest.mark.slow  # a real process to kill: its start (importing torch) takes most of the time
def test_a_killed_run_resumes_and_its_stale_temporary_files_go(site, tmp_path) -> None:
    """A run killed after its first epoch keeps its work folder; the next run resumes from the checkpoint, removes
    what the dead writer left (an atomic write's temporary file, a forced rerun's trash) and leaves no lock."""
    runs = tmp_path / "runs"
    config = _config(site, overrides={**TINY, "epochs": 3})
    key = run_key(config, runs_dir=runs)
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps(config))
    checkpoint = runs / f".work-{key}" / "checkpoints" / "last.pt"
    process = subprocess.Popen([sys.executable, "-m", "cxrcore", "train", str(config_file), "--runs-dir", str(runs),
                                "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine starts Python and torch slowly
        while not checkpoint.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert checkpoint.is_file() and not (runs / key).exists(), "the run was not killed between its epochs"
    killed_history = torch.load(checkpoint, weights_only=True)["history"]
    stale = [checkpoint.parent / ".last.pt.k1ll3d00.tmp", runs / f".trash-{key}-999999999" / "model.pt"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1024)
    result = run(config, runs_dir=runs)
    assert result.key == key and list(result.history["epoch"]) == [1, 2, 3] and 1 <= len(killed_history) < 3
    # the epochs the killed run finished are its own records (their timings too), not trained again
    pd.testing.assert_frame_equal(result.history.iloc[:len(killed_history)], pd.DataFrame(killed_history),
                                  check_dtype=False, check_exact=True)
    assert _entries(runs) == [key]  # work folder renamed into place; no trash, no lock file
    assert not any(p.name.endswith(".tmp") for p in result.run_dir.rglob("*"))


# ---------------------------------------------------------------- undefined AUROC


def test_cli_prints_undefined_for_a_finding_without_test_positives(site, tmp_path, capsys) -> None:
    table = pd.read_csv(site[1])
    test_rows = table[table["split"] == "test"]
    assert (test_rows["Pleural Effusion"] != 1).all() and (test_rows["Lung Opacity"] == 1).any()
    runs = tmp_path / "runs"
    outputs = []
    for findings in (FINDINGS, ["Pleural Effusion"]):
        config_file = tmp_path / "run.json"
        config_file.write_text(json.dumps(_config(site, findings=findings)))
        assert _train_cli(config_file, runs) == 0
        outputs.append(capsys.readouterr().out)
    assert all("test AUROC Pleural Effusion: undefined" in out for out in outputs)
    assert re.search(r"test AUROC Lung Opacity: \d\.\d{3}\ntest AUROC Pleural Effusion: undefined\n"
                     r"test mean AUROC: \d\.\d{3}\n", outputs[0])
    assert outputs[1].endswith("test AUROC Pleural Effusion: undefined\ntest mean AUROC: undefined\n")
