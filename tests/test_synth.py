"""The synthetic demo sites: real layouts and columns, determinism, label-to-sign ground truth, CLI errors."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_prep import reference
from data_prep.synth import add_arguments, check_arguments, main
from data_prep.synth.anatomy import cardiothoracic_ratio
from data_prep.synth.plan import NIH_DRAIN_OTHER_RATE, NIH_DRAIN_RATE, nih_plan
from data_prep.synth.render import seeded
from data_prep.synth.signs import SIGN_IDS

PER_SITE, SIZE = 24, 48


def _args(out: Path, *extra: str) -> argparse.Namespace:
    """Parse synth's own options as the CLI would."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--out", str(out), *extra])


def _generate(out: Path, seed: int = 0, *extra: str) -> int:
    """Run the synth command into out."""
    return main(
        _args(out, "--per-site", str(PER_SITE), "--size", str(SIZE), "--seed", str(seed), "--workers", "2", *extra)
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """One small generated tree shared by the module."""
    root = tmp_path_factory.mktemp("synth") / "data"
    assert _generate(root) == 0
    return root


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_chexpert_layout_and_real_columns(tree: Path) -> None:
    site = tree / "CheXpert-v1.0-small"
    real_columns = list(reference.chexpert_table().columns)
    for name in ("train.csv", "valid.csv"):
        table = pd.read_csv(site / name)
        assert list(table.columns) == real_columns
        assert (
            table["Path"]
            .str.match(
                rf"^CheXpert-v1\.0-small/{name[:-4]}/patient\d{{5}}/study\d+/"
                r"view\d+_(frontal|lateral)\.jpg$"
            )
            .all()
        )
        for path in table["Path"]:
            with Image.open(tree / path) as image:
                assert image.format == "JPEG" and image.mode == "L" and image.width == SIZE
    valid = pd.read_csv(site / "valid.csv")
    assert set(np.unique(valid.iloc[:, 5:].to_numpy())) <= {0.0, 1.0}  # radiologist-certain, like the real one
    train = pd.read_csv(site / "train.csv")
    assert (train.iloc[:, 5:] == -1).any().any()  # real uncertain labels kept
    patients = lambda t: set(t["Path"].str.extract(r"(patient\d+)")[0])  # noqa: E731
    assert not patients(train) & patients(valid)


def test_nih_layout_and_real_columns(tree: Path) -> None:
    site = tree / "ChestX-ray14"
    table = pd.read_csv(site / "Data_Entry_2017_v2020.csv")
    assert list(table.columns) == list(reference.nih_table().columns)
    assert table["Image Index"].str.match(r"^\d{8}_\d{3}\.png$").all()
    on_disk = {p.name: p for p in site.glob("images_0[01][0-9]/images/*.png")}
    assert set(on_disk) == set(table["Image Index"])
    for path in on_disk.values():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (SIZE, SIZE)
    train = (site / "train_val_list.txt").read_text().split()
    test = (site / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(table["Image Index"])
    patient = lambda names: {n.split("_")[0] for n in names}  # noqa: E731
    assert not patient(train) & patient(test)


def test_hospital_layout_real_reports(tree: Path) -> None:
    table = pd.read_csv(tree / "hospital" / "reports.csv")
    assert list(table.columns) == ["Path", "PatientID", "StudyID", "View", "Sex", "Age", "Report"]
    assert set(table["View"]) <= {"PA", "AP", "LL"} and set(table["Sex"]) <= {"M", "F"}
    for path in table["Path"]:
        with Image.open(tree / "hospital" / path) as image:
            image.load()
    real = reference.iu_reports()
    real_texts = set(real["impression"]) | set(real["findings"])
    first = table["Report"].iloc[0]
    assert any(text and text in first for text in real_texts)


@pytest.mark.skipif(importlib.util.find_spec("data_prep.manifests") is None, reason="manifest readers not written yet")
def test_manifest_readers_read_every_site(tree: Path) -> None:
    from data_prep import manifests

    for reader in (manifests.read_chexpert, manifests.read_nih, manifests.read_hospital):
        manifest = reader(tree)
        assert len(manifest) > 0
        assert all((tree / p).is_file() for p in manifest["path"])


def test_same_seed_identical_different_seed_differs(tree: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert _generate(again, 0, "--workers", "1") == 0  # worker count must not matter
    assert _hashes(again) == _hashes(tree)
    other = tmp_path / "other"
    assert _generate(other, 1) == 0
    first, second = _hashes(tree), _hashes(other)
    shared = set(first) & set(second)
    assert sum(first[k] != second[k] for k in shared) > 0.9 * len(shared) or set(first) != set(second)


def test_cardiomegaly_exactly_when_ctr_above_half(tree: Path) -> None:
    train = pd.read_csv(tree / "CheXpert-v1.0-small" / "train.csv")
    images = pd.read_csv(tree / "_synth" / "chexpert_images.csv").set_index("path")
    checked = 0
    for _, row in train[train["Frontal/Lateral"] == "Frontal"].iterrows():
        masks = np.asarray(Image.open(tree / images.loc[row["Path"], "mask"]))
        ctr = cardiothoracic_ratio(masks[..., 1] & 4 > 0, masks[..., 1] & 2 > 0)
        assert ctr == pytest.approx(images.loc[row["Path"], "ctr"], abs=1e-3)
        if row["Cardiomegaly"] == 1:
            assert ctr > 0.5, row["Path"]
        elif row["Cardiomegaly"] != -1:
            assert ctr < 0.5, row["Path"]
        checked += 1
    assert checked > 10


def test_drain_rate_among_nih_pneumothorax() -> None:
    ptx = [nih_plan(seeded(0, "nih", 1, i), {"Pneumothorax"}, "PA")[0] for i in range(400)]
    other = [nih_plan(seeded(0, "nih", 1, i), {"Effusion"}, "PA")[0] for i in range(400)]
    rate = np.mean([any(s.name == "drain" for s in signs) for signs in ptx])
    other_rate = np.mean([any(s.name == "drain" for s in signs) for signs in other])
    assert abs(rate - NIH_DRAIN_RATE) < 0.08 and abs(other_rate - NIH_DRAIN_OTHER_RATE) < 0.03


def test_drain_rate_recorded_in_tree(tree: Path) -> None:
    signs = pd.read_csv(tree / "_synth" / "nih_signs.csv")
    images = pd.read_csv(tree / "_synth" / "nih_images.csv")
    meta = json.loads((tree / "synth_meta.json").read_text())
    assert meta["nih_drain_rate_pneumothorax"] == NIH_DRAIN_RATE
    drained = set(signs.loc[signs["sign"] == "drain", "path"])
    assert drained == set(images.loc[images["drain"], "path"])
    masks = [np.asarray(Image.open(tree / m))[..., 0] for m in images.loc[images["drain"], "mask"]]
    assert all((m == 14).any() for m in masks)  # a drain sign was drawn where one is recorded


def test_complete_marker_and_meta(tree: Path) -> None:
    assert (tree / ".complete").is_file()
    meta = json.loads((tree / "synth_meta.json").read_text())
    assert meta["seed"] == 0 and meta["size"] == SIZE and sum(meta["images"].values()) > 3 * PER_SITE * 0.9


def test_refuses_overwrite_without_force(tree: Path, tmp_path: Path, capsys) -> None:
    assert _generate(tree) == 2
    assert "--force" in capsys.readouterr().err
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("a real download")
    assert _generate(foreign, 0, "--force") == 2
    assert (foreign / "keep.txt").read_text() == "a real download"


@pytest.mark.parametrize(
    "option, value, message",
    [("--per-site", "-5", "--per-site"), ("--size", "8", "--size"), ("--workers", "0", "--workers")],
)
def test_bad_arguments(tmp_path: Path, capsys, option: str, value: str, message: str) -> None:
    assert main(_args(tmp_path / "x", option, value)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_difficulty_is_a_data_prep_command(chexpert_tree, nih_tree, tmp_path: Path, capsys, monkeypatch) -> None:
    """`python -m data_prep difficulty` and the stand-alone module entry run the same yardstick, same output."""
    from cxrcore.cli import dispatch
    from data_prep.__main__ import COMMANDS
    from data_prep.synth import difficulty

    assert COMMANDS["difficulty"][0] == "data_prep.synth.difficulty"
    (tmp_path / "CheXpert-v1.0-small").symlink_to(chexpert_tree.root / "CheXpert-v1.0-small")
    (tmp_path / "ChestX-ray14").symlink_to(nih_tree.root / "ChestX-ray14")
    monkeypatch.setattr(difficulty, "MIN_POSITIVES", 1)  # the tiny trees have few held-out positives
    options = ["--root", str(tmp_path), "--size", "16", "--epochs", "1", "--seed", "0"]
    assert dispatch(COMMANDS, "python -m data_prep", "", ["difficulty", *options]) == 0
    via_dispatcher = capsys.readouterr().out
    assert difficulty.cli(options) == 0
    assert capsys.readouterr().out == via_dispatcher
    assert "median AUROC: cnn" in via_dispatcher and "| chexpert " in via_dispatcher


def test_counterfactual_without_the_drain_changes_only_the_pixels_around_it(tmp_path: Path) -> None:
    """`--counterfactual remove=drain`: each image with a drain is rendered again without it; outside the drain's mask
    dilated by the detector's blur footprint (the site style's two Gaussian filters, 4 sigma each), widened to whole
    8 x 8 blocks on a JPEG site (the compression codes each block on its own), the two images are identical bit for
    bit, and the masks' other signs and anatomy are unchanged."""
    from scipy import ndimage

    from data_prep.synth.styles import STYLES
    from data_prep.synth.write import COUNTERFACTUALS, RECORD, SITE_DIRS, counterfactual_path

    root = tmp_path / "data"
    assert main(_args(root, "--per-site", "200", "--size", str(SIZE), "--workers", "2",
                      "--counterfactual", "remove=drain")) == 0
    pairs = pd.read_csv(root / COUNTERFACTUALS)
    sites = ("chexpert", "nih", "hospital")
    drained = pd.concat([pd.read_csv(root / "_synth" / f"{site}_images.csv") for site in sites]).query("drain")
    assert len(pairs) == len(drained) > 0 and set(pairs["path"]) == set(drained["path"])
    assert (pairs["counterfactual"] == [counterfactual_path(p, "drain") for p in pairs["path"]]).all()
    recorded = set((root / RECORD).read_text().split())
    assert set(pairs["counterfactual"]) <= recorded  # `synth --force` may remove them
    for row in pairs.itertuples():
        original = np.asarray(Image.open(root / row.path))
        without = np.asarray(Image.open(root / row.counterfactual))
        masks = np.asarray(Image.open(root / row.mask))
        drain = masks[..., 2] == 255
        style = STYLES[next(site for site, folder in SITE_DIRS.items() if row.path.startswith(folder))]
        scale = original.shape[1] / 128
        radius = int(4 * (style.blur * scale + 0.01) + 0.5) + (int(8 * scale + 0.5) if style.sharpen else 0) + 1
        near = ndimage.binary_dilation(drain, iterations=radius)
        if style.image_format == "jpg":  # a changed pixel changes its whole 8 x 8 JPEG block, and only that block
            h, w = near.shape
            blocks = np.pad(near, ((0, -h % 8), (0, -w % 8))).reshape(-(-h // 8), 8, -(-w // 8), 8).any(axis=(1, 3))
            near = np.kron(blocks, np.ones((8, 8), bool))[:h, :w]
        differs = original != without
        assert drain.any() and differs.any() and not (differs & ~near).any(), row.path
        before = np.asarray(Image.open(root / "_synth" / "masks" / Path(row.path).with_suffix(".png")))
        assert (before[..., 1] == masks[..., 1]).all()  # the same anatomy
        kept = before[..., 0] != SIGN_IDS["drain"]
        assert (before[..., 0][kept] == masks[..., 0][kept]).all() and not (masks[..., 0] == SIGN_IDS["drain"]).any()
    from data_prep.synth.real_layout import write_real_layout

    write_real_layout(root, tmp_path / "real")
    assert (tmp_path / "real" / pairs["path"].iloc[0]).is_file()
    assert not any((tmp_path / "real" / name).exists() for name in pairs["counterfactual"])  # no real film has a twin
    for bad in ("remove=unicorn", "add=drain"):
        with pytest.raises(ValueError, match="remove=SIGN"):
            check_arguments(_args(tmp_path / "x", "--counterfactual", bad))


def test_a_killed_run_resumes_to_the_same_tree(tmp_path: Path) -> None:
    """Kill a run part way (SIGKILL, as a lost machine would), resume it: the finished tree is byte for byte an
    uninterrupted run's, and only the images not yet written were rendered again."""
    command = [sys.executable, "-m", "data_prep", "synth", "--per-site", "300", "--size", "48", "--workers", "2",
               "--counterfactual", "remove=drain"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    progress = killed / "_synth" / "rendered.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if progress.is_file() and progress.read_text().count("\n") >= 200:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert not (killed / ".complete").exists(), "the run finished before it could be killed"
    resumed = subprocess.run([*command, "--out", str(killed), "--resume"], capture_output=True, text=True, check=True)
    assert "resumed after" in resumed.stdout
    straight = tmp_path / "straight"
    subprocess.run([*command, "--out", str(straight)], capture_output=True, check=True)
    assert _hashes(killed) == _hashes(straight)
    (killed / ".complete").unlink()  # pretend it stopped again: another size must not continue it
    (killed / "ChestX-ray14" / ".x.partial.png").write_bytes(b"half")  # what a killed worker leaves
    other_size = subprocess.run([*command, "--size", "64", "--out", str(killed), "--resume"], capture_output=True,
                                text=True)
    assert other_size.returncode == 2 and "--resume continues it only with the same settings" in other_size.stderr
    assert not (killed / "ChestX-ray14" / ".x.partial.png").exists()
    (killed / "ChestX-ray14" / ".y.partial.png").write_bytes(b"half")
    subprocess.run([*command, "--out", str(killed), "--force"], capture_output=True, check=True)  # --force too
    assert _hashes(killed) == _hashes(straight)


def test_gallery_shows_each_sign_where_its_mask_has_it(tree: Path) -> None:
    from data_prep.synth.gallery import gallery, sign_examples

    for (site, view), path in sign_examples(tree, "effusion").items():
        images = pd.read_csv(tree / "_synth" / f"{site}_images.csv").set_index("path")
        assert images.loc[path, "view"] == view
        assert (np.asarray(Image.open(tree / images.loc[path, "mask"]))[..., 0] == SIGN_IDS["effusion"]).any(), path
    figure = gallery(tree, ["effusion", "cardiomegaly"])
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert "nih\nlateral" not in titles and "chexpert\nlateral" in titles  # ChestX-ray14 has no lateral films
    assert len(figure.axes) == 2 * (1 + len(titles))
    figure.clf()


def test_real_layout_copy_holds_the_datasets_files_and_no_ground_truth(tree: Path, tmp_path: Path, capsys) -> None:
    from cxrcore.experiments.localisation import has_sign_masks
    from data_prep.manifests import read_chexpert, read_hospital, read_nih
    from data_prep.synth.real_layout import add_arguments as real_arguments
    from data_prep.synth.real_layout import main as real_main

    def real_layout(*options: str) -> int:
        parser = argparse.ArgumentParser()
        real_arguments(parser)
        return real_main(parser.parse_args(["--demo", str(tree), "--out", str(out), *options]))

    out = tmp_path / "real"
    assert real_layout() == 0
    copied = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    images = pd.concat([pd.read_csv(tree / "_synth" / f"{site}_images.csv") for site in ("chexpert", "nih",
                                                                                        "hospital")])
    assert set(images["path"]) <= copied and not any(name.startswith(("_synth", "synth_meta", ".")) for name in copied)
    assert not has_sign_masks(out)
    for reader in (read_chexpert, read_nih, read_hospital):  # the same tables through the same readers
        pd.testing.assert_frame_equal(reader(out), reader(tree))
    assert real_layout() == 2 and "pass --force" in capsys.readouterr().err
    (out / "notes.txt").write_text("a user's file")
    assert real_layout("--force") == 2 and "notes.txt" in capsys.readouterr().err
    (out / "notes.txt").unlink()
    assert real_layout("--force") == 0
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == copied
    out = tmp_path / "from-nothing"
    tree_without_marker = tmp_path / "unfinished"
    tree_without_marker.mkdir()
    assert real_main(argparse.Namespace(demo=tree_without_marker, out=out, force=False)) == 2
    assert "not a finished demo tree" in capsys.readouterr().err
