"""Readers of the real layouts, manifest validation, file checks, atomic writing and the CLI."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layouts import CheXpertTree, NIHTree

from cxrcore.cli import dispatch
from cxrcore.findings import CHEXPERT_FINDINGS, HOSPITAL_FINDINGS, NIH_FINDINGS, harmonize
from cxrcore.manifest import (
    RAW_SPLITS,
    assert_patient_disjoint,
    copies,
    finding_columns,
    load_manifest,
    validate_manifest,
    write_manifest,
)
from data_prep.__main__ import COMMANDS
from data_prep.manifests import assign_splits, check_files, read_chexpert, read_hospital, read_nih


def test_read_chexpert(chexpert_tree: CheXpertTree) -> None:
    manifest = read_chexpert(chexpert_tree.root)
    train, valid = chexpert_tree.train, chexpert_tree.valid
    assert len(manifest) == len(train) + len(valid)
    assert list(manifest["path"]) == [*train["Path"], *valid["Path"]]
    assert list(manifest["split"]) == ["trainval"] * len(train) + ["test"] * len(valid)
    source = pd.concat([train, valid], ignore_index=True)
    np.testing.assert_array_equal(manifest[CHEXPERT_FINDINGS].to_numpy(), source[CHEXPERT_FINDINGS].to_numpy())
    assert (manifest["patient_id"] == source["Path"].str.split("/").str[2]).all()
    assert (manifest["view"] == source["Frontal/Lateral"].str.lower()).all()
    assert set(manifest.loc[manifest["view"] == "lateral", "projection"]) <= {"LAT", "LL", "RL"}
    assert (manifest["sex"] == source["Sex"].str[0]).all()
    validate_manifest(manifest, RAW_SPLITS)
    check_files(manifest, chexpert_tree.root)
    final = assign_splits(manifest, "chexpert", seed=0)
    validate_manifest(final)
    assert (final["split"][manifest["split"] == "test"] == "test").all()


def test_read_nih(nih_tree: NIHTree) -> None:
    manifest = read_nih(nih_tree.root)
    table = nih_tree.table
    assert len(manifest) == len(table)
    assert {p.split("/")[1] for p in manifest["path"]} == {"images_001", "images_002"}
    assert (manifest["split"] == np.where(table["Image Index"].isin(nih_tree.test_images), "test", "trainval")).all()
    for raw in NIH_FINDINGS:
        expected = table["Finding Labels"].str.split("|").apply(lambda labels, r=raw: r in labels).astype(float)
        np.testing.assert_array_equal(manifest[harmonize(raw)].to_numpy(), expected.to_numpy())
    assert (manifest["No Finding"] == (table["Finding Labels"] == "No Finding")).all()
    assert manifest["patient_id"].str.fullmatch(r"\d{8}").all()
    assert (manifest["projection"] == table["View Position"]).all()
    check_files(manifest, nih_tree.root)
    final = assign_splits(manifest, "nih", seed=0)
    validate_manifest(final)
    assert (final.loc[manifest["split"] == "test", "split"] == "test").all()


def test_read_nih_missing_images(nih_tree: NIHTree, tmp_path: Path) -> None:
    shutil.copytree(nih_tree.root / "ChestX-ray14", tmp_path / "ChestX-ray14")
    shutil.rmtree(tmp_path / "ChestX-ray14" / "images_002")  # one archive not downloaded
    with pytest.raises(FileNotFoundError, match=r"image\(s\) of Data_Entry_2017_v2020.csv are in no"):
        read_nih(tmp_path)
    kept = read_nih(tmp_path, on_missing="skip")
    assert len(kept) == len(nih_tree.table) // 2 and kept["path"].str.contains("images_001").all()


def test_read_hospital(hospital_root: Path) -> None:
    from data_prep.report_labeler import label_reports

    reports = pd.read_csv(hospital_root / "hospital" / "reports.csv")
    manifest = read_hospital(hospital_root)
    expected = label_reports(reports["Report"].tolist())
    np.testing.assert_array_equal(manifest[HOSPITAL_FINDINGS].to_numpy(), expected[HOSPITAL_FINDINGS].to_numpy())
    assert (manifest["path"] == "hospital/" + reports["Path"]).all()
    assert (manifest["view"] == np.where(reports["View"] == "LL", "lateral", "frontal")).all()
    check_files(manifest, hospital_root)
    final = assign_splits(manifest, "hospital", seed=0)
    validate_manifest(final)
    assert_patient_disjoint(final)


def test_reader_errors(chexpert_tree: CheXpertTree, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.csv not found"):
        read_chexpert(tmp_path)
    folder = tmp_path / "CheXpert-v1.0-small"
    folder.mkdir()
    chexpert_tree.train.drop(columns="Edema").to_csv(folder / "train.csv", index=False)
    chexpert_tree.valid.to_csv(folder / "valid.csv", index=False)
    with pytest.raises(ValueError, match=r"missing columns \['Edema'\]"):
        read_chexpert(tmp_path)
    bad = chexpert_tree.train.copy()
    bad.loc[2, "Edema"] = 2.0
    bad.to_csv(folder / "train.csv", index=False)
    with pytest.raises(ValueError, match=f"'Edema' at row 2 \\({bad.loc[2, 'Path']}\\)"):
        read_chexpert(tmp_path)


@pytest.fixture
def manifest(chexpert_tree: CheXpertTree) -> pd.DataFrame:
    """A final CheXpert manifest of the session tree."""
    return assign_splits(read_chexpert(chexpert_tree.root), "chexpert", seed=0)


def test_validate_manifest_errors(manifest: pd.DataFrame) -> None:
    validate_manifest(manifest)
    with pytest.raises(ValueError, match=r"missing columns \['sex'\]"):
        validate_manifest(manifest.drop(columns="sex"))
    with pytest.raises(ValueError, match=r"unknown columns \['Effusion'\]"):
        validate_manifest(manifest.rename(columns={"Pleural Effusion": "Effusion"}))
    duplicated = pd.concat([manifest, manifest.iloc[[3]]], ignore_index=True)
    with pytest.raises(ValueError, match=f"duplicate path '{manifest['path'].iloc[3]}' at rows \\[3, "):
        validate_manifest(duplicated)
    leaky = manifest.copy()
    leaky.loc[0, "split"] = "valid" if leaky.loc[0, "split"] != "valid" else "train"
    with pytest.raises(ValueError, match=f"patient '{manifest['patient_id'].iloc[0]}'"):
        validate_manifest(leaky)
    unknown_site = manifest.copy()
    unknown_site.loc[4, "site"] = "stanford"
    with pytest.raises(ValueError, match="'stanford' at row 4"):
        validate_manifest(unknown_site)
    bad_label = manifest.copy()
    bad_label.loc[1, "Fracture"] = 0.5
    with pytest.raises(ValueError, match="'Fracture' at row 1"):
        validate_manifest(bad_label)
    with pytest.raises(ValueError, match="'trainval' at row"):
        validate_manifest(read_chexpert_unsplit(manifest))


def test_copies_are_whole_numbers_and_only_training_images_repeat(manifest: pd.DataFrame, tmp_path: Path) -> None:
    train = manifest.index[manifest["split"] == "train"]
    repeated = manifest.assign(copies=1)
    repeated.loc[train[0], "copies"] = 3
    assert copies(validate_manifest(repeated)).sum() == len(manifest) + 2
    assert finding_columns(repeated) == finding_columns(manifest)  # copies is not a finding
    assert (copies(manifest) == 1).all()  # no column: every image once
    loaded = load_manifest(write_manifest(repeated, tmp_path / "repeated.csv"))
    assert loaded["copies"].tolist() == repeated["copies"].tolist()
    for value in (0, 1.5, "two"):
        bad = repeated.astype({"copies": object})
        bad.loc[train[1], "copies"] = value
        with pytest.raises(ValueError, match=f"'copies': {value!r} at row {train[1]} .* whole number >= 1"):
            validate_manifest(bad)
    test_row = manifest.index[manifest["split"] != "train"][0]
    scored_twice = manifest.assign(copies=1)
    scored_twice.loc[test_row, "copies"] = 2
    with pytest.raises(ValueError, match=f"copies=2 at row {test_row} .* only training images"):
        validate_manifest(scored_twice)


def read_chexpert_unsplit(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with its train rows back to 'trainval' (as the reader gives them)."""
    return manifest.assign(split=manifest["split"].replace({"train": "trainval", "valid": "trainval"}))


def test_check_files(manifest: pd.DataFrame, chexpert_tree: CheXpertTree) -> None:
    gone = manifest.assign(path=manifest["path"].where(manifest.index != 2, "CheXpert-v1.0-small/train/none.jpg"))
    with pytest.raises(FileNotFoundError, match="none.jpg not found"):
        check_files(gone, chexpert_tree.root)
    kept = check_files(gone, chexpert_tree.root, on_missing="skip")
    assert len(kept) == len(manifest) - 1 and 2 not in kept.index


def test_write_and_load_manifest(tmp_path: Path, nih_tree: NIHTree) -> None:
    manifest = assign_splits(read_nih(nih_tree.root), "nih", seed=0)
    out = write_manifest(manifest, tmp_path / "nih.csv")
    loaded = load_manifest(out)
    pd.testing.assert_frame_equal(loaded, manifest, check_dtype=False)
    assert loaded["patient_id"].str.fullmatch(r"0\d{7}").all()  # ids stay text: leading zeros kept
    with pytest.raises(FileExistsError, match="force"):
        write_manifest(manifest, out)
    write_manifest(manifest.head(3), out, force=True)
    assert len(load_manifest(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nih.csv"]  # no temporary file left behind
    text = out.read_text().splitlines()
    text[2] = text[2].replace(",0.0,", ",yes,", 1)
    out.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"unknown label value 'yes' for finding '.+' at row 1"):
        load_manifest(out)


def test_cli(tmp_path: Path, chexpert_tree: CheXpertTree, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "chexpert.csv"
    argv = ["manifest", "chexpert", "--root", str(chexpert_tree.root), "--out", str(out), "--split-seed", "1"]
    assert dispatch(COMMANDS, "python -m data_prep", "", argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert len(load_manifest(out)) == len(chexpert_tree.train) + len(chexpert_tree.valid)
    with pytest.raises(SystemExit, match="--force"):
        dispatch(COMMANDS, "python -m data_prep", "", argv)
    assert dispatch(COMMANDS, "python -m data_prep", "", [*argv, "--force"]) == 0
