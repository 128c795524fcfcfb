"""Bad inputs a new user hits in `python -m data_prep` (issue 18): each stops with an error naming the culprit,
and nothing of the user's is lost or overwritten."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
from layouts import write_hospital
from pydicom.data import get_testdata_file

from cxrcore.cli import dispatch
from data_prep.__main__ import COMMANDS
from data_prep.report_labeler import CLASSES, label_reports
from data_prep.synth import add_arguments as synth_arguments
from data_prep.synth import main as synth_main
from data_prep.synth.write import RECORD, fixed_files, mask_path, prepare_root, write_record

ACCENTED = "Café patient: bilateral pleural effusion."  # é is one byte (0xe9) in cp1252, two in UTF-8


def run(*argv: str) -> int:
    """`python -m data_prep ARGV...` in this process (the dispatcher __main__ runs)."""
    return dispatch(COMMANDS, "python -m data_prep", "", list(argv))


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path: what the user has there."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ non-UTF-8 reports
@pytest.fixture
def cp1252_reports(tmp_path: Path) -> Path:
    """A reports CSV saved by Excel on Windows: cp1252 bytes, the accented report in row 1."""
    table = pd.DataFrame({"id": ["r1", "r2", "r3"], "Report": ["Normal study.", ACCENTED, "Zone infiltrates."]})
    path = tmp_path / "reports.csv"
    path.write_bytes(table.to_csv(index=False).encode("cp1252"))
    return path


def test_label_reports_non_utf8_names_file_line_row_and_byte(cp1252_reports: Path, tmp_path: Path) -> None:
    before = cp1252_reports.read_bytes()
    out = tmp_path / "labeled.csv"
    with pytest.raises(SystemExit) as stop:
        run("label-reports", "--in", str(cp1252_reports), "--text-column", "Report", "--out", str(out))
    message = str(stop.value)
    byte = before.index(b"\xe9")
    assert str(cp1252_reports) in message and f"byte 0xe9 at byte {byte} of the file" in message
    assert "line 3" in message and "row 1 (id='r2'), column 'Report'" in message
    assert "re-save it as UTF-8" in message and "--encoding" in message
    assert not out.exists() and cp1252_reports.read_bytes() == before


def test_label_reports_declared_encoding_is_used_and_unknown_one_named(cp1252_reports: Path, tmp_path: Path) -> None:
    out = tmp_path / "labeled.csv"
    argv = ["label-reports", "--in", str(cp1252_reports), "--text-column", "Report", "--out", str(out)]
    with pytest.raises(SystemExit, match="unknown encoding 'excel'"):
        run(*argv, "--encoding", "excel")
    assert not out.exists()
    assert run(*argv, "--encoding", "cp1252") == 0
    written = pd.read_csv(out)
    assert written["Report"].tolist()[1] == ACCENTED
    expected = label_reports(["Normal study.", ACCENTED, "Zone infiltrates."])
    assert written[list(CLASSES)].to_numpy().tolist() == expected.to_numpy().tolist()


def test_manifest_hospital_non_utf8_report_names_row_and_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    table = write_hospital(root, n_studies=4)
    table.loc[2, "Report"] = ACCENTED
    reports = root / "hospital" / "reports.csv"
    reports.write_bytes(table.to_csv(index=False).encode("cp1252"))
    out = tmp_path / "hospital.csv"
    argv = ["manifest", "hospital", "--root", str(root), "--out", str(out)]
    with pytest.raises(SystemExit) as stop:
        run(*argv)
    message = str(stop.value)
    assert message.startswith(f"manifest: {reports}: not valid utf-8 text: byte 0xe9")
    assert f"in row 2 (Path={table.loc[2, 'Path']!r}), column 'Report'" in message and "--encoding" in message
    assert not out.exists()
    assert run(*argv, "--encoding", "cp1252") == 0
    assert pd.read_csv(out)["Pleural Effusion"].sum() >= 1  # the accented report's effusion is read


# ------------------------------------------------------------------------- missing, empty, wrong inputs
def test_label_reports_empty_input_and_output_onto_input_or_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SystemExit, match=f"{empty} is empty: expected a CSV file with a header row"):
        run("label-reports", "--in", str(empty), "--text-column", "Report", "--out", str(tmp_path / "o.csv"))
    reports = tmp_path / "reports.csv"
    reports.write_text("id,Report\nr1,Normal study.\n")
    with pytest.raises(SystemExit, match="is the input file; write the result to another file"):
        run("label-reports", "--in", str(reports), "--text-column", "Report", "--out", str(reports), "--force")
    assert reports.read_text() == "id,Report\nr1,Normal study.\n"
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit, match=f"--out {folder} is a folder"):
        run("label-reports", "--in", str(reports), "--text-column", "Report", "--out", str(folder), "--force")
    assert snapshot(folder) == {"mine.txt": hashlib.sha256(b"keep").hexdigest()}
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("fault, culprit", [
    ("missing", "reports.csv not found: the hospital site is a reports.csv with columns"),
    ("empty", "reports.csv is empty: expected a CSV file with a header row"),
    ("age", "reports.csv: Age 'sixty' at row 1 ("),
])
def test_manifest_hospital_bad_reports_table_is_named(tmp_path: Path, fault: str, culprit: str) -> None:
    root = tmp_path / "root"
    table = write_hospital(root, n_studies=3)
    reports = root / "hospital" / "reports.csv"
    if fault == "missing":
        reports.unlink()
    elif fault == "empty":
        reports.write_text("")
    else:
        table["Age"] = table["Age"].astype(object)
        table.loc[1, "Age"] = "sixty"
        table.to_csv(reports, index=False)
    before = snapshot(root)
    out = tmp_path / "hospital.csv"
    with pytest.raises(SystemExit) as stop:
        run("manifest", "hospital", "--root", str(root), "--out", str(out))
    assert str(stop.value).startswith(f"manifest: {reports}") and culprit in str(stop.value)
    if fault == "age":
        assert table.loc[1, "Path"] in str(stop.value)
    assert not out.exists() and snapshot(root) == before


def test_dicom_missing_input_and_bad_size_write_nothing(tmp_path: Path) -> None:
    dicom = Path(get_testdata_file("RG1_UNCR.dcm"))
    out = tmp_path / "png"
    with pytest.raises(SystemExit, match=r"1 input\(s\) not found, e.g. \['.*nope.dcm'\]; nothing was converted"):
        run("dicom", str(dicom), str(tmp_path / "nope.dcm"), "--out", str(out))
    with pytest.raises(SystemExit, match="must be a positive number of pixels, got 0"):
        run("dicom", str(dicom), "--out", str(out), "--size", "0")
    assert not out.exists()
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"not a folder")
    with pytest.raises(SystemExit, match=f"--out {mine} is a file"):
        run("dicom", str(dicom), "--out", str(mine))
    assert mine.read_bytes() == b"not a folder"


# ------------------------------------------------------------------------------------------ synth --force
def synth_args(out: Path, *extra: str) -> argparse.Namespace:
    """synth's own options, parsed as the CLI does, at the smallest sizes it allows."""
    parser = argparse.ArgumentParser()
    synth_arguments(parser)
    return parser.parse_args(["--out", str(out), "--per-site", "10", "--size", "32", "--workers", "1", *extra])


IMAGES = ["hospital/images/P000000/S000000/view1_frontal.png", "ChestX-ray14/images_001/images/00000001_000.png",
          "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"]


def small_synth_tree(root: Path, recorded: bool = True) -> None:
    """A previous synth tree in miniature: its meta, tables, ground truth, images and masks, with or without
    the record (trees written before the record existed list their images in _synth/<site>_images.csv)."""
    jobs = [{"path": path} for path in IMAGES]
    for name in [*fixed_files(), *IMAGES, *map(mask_path, IMAGES)]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"synthetic {name}")
    (root / "synth_meta.json").write_text(json.dumps({"generator": "data_prep.synth"}))
    for site in ("chexpert", "nih", "hospital"):
        paths = [p for p in IMAGES if p.startswith({"chexpert": "CheX", "nih": "Chest", "hospital": "hosp"}[site])]
        pd.DataFrame({"path": paths, "mask": [mask_path(p) for p in paths]}).to_csv(
            root / "_synth" / f"{site}_images.csv", index=False)
    if recorded:
        write_record(root, jobs)
    else:
        (root / RECORD).unlink()


@pytest.mark.parametrize("recorded", [True, False])
@pytest.mark.parametrize("user_file", ["hospital/images/P000000/notes.txt", "ChestX-ray14/my_labels.csv",
                                       "_synth/masks/extra.png", "manifests/hospital.csv"])
def test_synth_force_refuses_a_tree_holding_a_user_file(tmp_path: Path, capsys, recorded: bool,
                                                        user_file: str) -> None:
    root = tmp_path / "demo"
    small_synth_tree(root, recorded)
    (root / user_file).parent.mkdir(parents=True, exist_ok=True)
    (root / user_file).write_text("the user's own work")
    before = snapshot(root)
    assert synth_main(synth_args(root, "--force")) == 2
    error = capsys.readouterr().err
    assert f"{root / user_file} was not written by `synth`" in error and "move these out" in error
    assert snapshot(root) == before


@pytest.mark.parametrize("recorded", [True, False])
def test_synth_force_removes_exactly_its_own_files(tmp_path: Path, recorded: bool) -> None:
    root = tmp_path / "demo"
    small_synth_tree(root, recorded)
    (root / "hospital" / "images" / "empty_folder_of_mine").mkdir()
    prepare_root(root, force=True)
    assert snapshot(root) == {}  # every recorded file gone, and only folders left that are not synth's
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "hospital", "hospital/images", "hospital/images/empty_folder_of_mine"]


def test_synth_force_replaces_a_crashed_run(tmp_path: Path) -> None:
    """A run stopped while rendering: its record lists images never written; --force still clears the rest."""
    root = tmp_path / "demo"
    root.mkdir()
    (root / "synth_meta.json").write_text("{}")
    write_record(root, [{"path": path} for path in IMAGES])
    (root / IMAGES[0]).parent.mkdir(parents=True)
    (root / IMAGES[0]).write_bytes(b"half")
    prepare_root(root, force=True)
    assert snapshot(root) == {}


def test_synth_record_lists_every_file_a_real_run_writes(tmp_path: Path, capsys) -> None:
    root = tmp_path / "demo"
    assert synth_main(synth_args(root)) == 0
    recorded = set((root / RECORD).read_text().splitlines())
    assert recorded == set(snapshot(root))
    (root / "hospital" / "mine.txt").write_text("keep")
    assert synth_main(synth_args(root, "--force")) == 2
    assert "hospital/mine.txt was not written by `synth`" in capsys.readouterr().err
    assert set(snapshot(root)) == recorded | {"hospital/mine.txt"}
