"""Write the three synthetic sites in the real on-disk layouts, in parallel, deterministically for a seed."""

from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from cxrcore.atomic import atomic_write
from data_prep.synth import plan, sample
from data_prep.synth.render import SITES, render, seeded
from data_prep.synth.styles import STYLES
from data_prep.synth.templates import lung_templates

VERSION = "1.0"
SITE_DIRS = {"chexpert": "CheXpert-v1.0-small", "nih": "ChestX-ray14", "hospital": "hospital"}
RECORD = "_synth/files.txt"  # every file a run writes, listed before it writes them: what --force may remove
PROGRESS = "_synth/rendered.jsonl"  # one line per image written, while a run lasts: what --resume continues from
TABLE_FILES = [
    f"{SITE_DIRS['chexpert']}/train.csv",
    f"{SITE_DIRS['chexpert']}/valid.csv",
    f"{SITE_DIRS['nih']}/Data_Entry_2017_v2020.csv",
    f"{SITE_DIRS['nih']}/train_val_list.txt",
    f"{SITE_DIRS['nih']}/test_list.txt",
    f"{SITE_DIRS['hospital']}/reports.csv",
]
SEX_CODE = {"Male": "M", "Female": "F"}


COUNTERFACTUALS = "_synth/counterfactuals.csv"  # original, counterfactual path, removed sign


def counterfactual_path(image_path: str, sign: str) -> str:
    """Where the counterfactual of an image without `sign` goes: beside it, `<name>_no-<sign><suffix>`."""
    path = Path(image_path)
    return path.with_name(f"{path.stem}_no-{sign}{path.suffix}").as_posix()


def counterfactual_jobs(jobs: list[dict], sign: str) -> list[dict]:
    """A job per image that shows `sign`: the same image rendered again without it (`render`'s "remove")."""
    return [{**job, "path": counterfactual_path(job["path"], sign), "original": job["path"], "remove": sign}
            for job in jobs if any(s.name == sign for s in job["signs"])]


def _ground_truth_files() -> list[str]:
    """The per-site ground-truth tables under _synth/."""
    return [f"_synth/{site}_{kind}.csv" for site in SITE_DIRS for kind in ("images", "signs")]


def fixed_files() -> list[str]:
    """The files every run writes whatever its size: meta, done marker, record, site tables, ground truth."""
    return ["synth_meta.json", ".complete", RECORD, *TABLE_FILES, *_ground_truth_files()]


def mask_path(image_path: str) -> str:
    """Where the mask PNG of an image goes: _synth/masks/<image path>.png."""
    return (Path("_synth/masks") / Path(image_path).with_suffix(".png")).as_posix()


def write_record(root: Path, jobs: list[dict], running: bool = False) -> None:
    """_synth/files.txt: every file this run will write (sorted), written before the images; while it runs
    (`running`) the progress file too, which the finished run removes."""
    extra = ([COUNTERFACTUALS] if any("remove" in job for job in jobs) else []) + ([PROGRESS] if running else [])
    files = sorted({*fixed_files(), *extra, *(job["path"] for job in jobs), *(mask_path(job["path"]) for job in jobs)})
    text = "".join(f"{name}\n" for name in files)
    atomic_write(root / RECORD, lambda stream: stream.write(text))


def recorded_files(root: Path) -> set[str]:
    """The files a previous run wrote under root: its record, else (older trees) its ground-truth tables."""
    if (root / RECORD).is_file():
        return set((root / RECORD).read_text().splitlines())
    ours = set(fixed_files())
    tables = [root / name for name in _ground_truth_files() if name.endswith("_images.csv")]
    if all(table.is_file() for table in tables):  # a complete tree written before the record existed
        for table in tables:
            images = pd.read_csv(table, usecols=["path", "mask"], dtype=str)
            ours |= set(images["path"]) | set(images["mask"])
    return ours


def foreign_files(root: Path, ours: set[str]) -> list[str]:
    """Files (and links) under root that are not in `ours`, as sorted paths relative to root."""
    foreign = []
    for folder, dirs, files in os.walk(root):
        linked = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        for name in [*files, *linked]:
            relative = Path(folder, name).relative_to(root).as_posix()
            if relative not in ours:
                foreign.append(relative)
    return sorted(foreign)


def remove_recorded(root: Path, ours: set[str]) -> None:
    """Delete the recorded files, then those of their folders left empty (never anything else)."""
    (root / ".complete").unlink(missing_ok=True)  # first: a half-removed tree must not look complete
    folders = set()
    for name in ours:
        target = root / name
        if target.is_file() or target.is_symlink():
            target.unlink()
        folders.update(parent for parent in Path(name).parents if parent != Path("."))
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty (or gone): leave it
            (root / folder).rmdir()


def _remove_partial_images(root: Path) -> None:
    """Delete the images and masks a killed run's workers were writing (`_save_whole`'s temporary names)."""
    for partial in root.rglob(".*.partial.*"):
        partial.unlink()


def prepare_root(root: Path, force: bool) -> None:
    """Refuse a non-empty root without force; with force remove only the files a previous run recorded, and
    refuse, naming them, if the tree holds any other file (a user's file is never deleted)."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    if root.exists() and any(root.iterdir()):
        if not force:
            raise FileExistsError(f"{root} is not empty; pass --force to replace a previous synthetic tree there")
        if not (root / "synth_meta.json").is_file():
            raise FileExistsError(
                f"{root} holds files not written by `synth` (no synth_meta.json): refusing to "
                "delete them even with --force; choose an empty --out"
            )
        _remove_partial_images(root)
        ours = recorded_files(root)
        foreign = foreign_files(root, ours)
        if foreign:
            raise FileExistsError(
                f"{root / foreign[0]} was not written by `synth` ({len(foreign)} such file(s) in {root}, e.g. "
                f"{foreign[:3]}): --force only replaces synth's own files; move these out of {root} or choose "
                "another --out"
            )
        remove_recorded(root, ours)
    root.mkdir(parents=True, exist_ok=True)


def _size(seed: int, site: str, index: int, size: int) -> tuple[int, int]:
    """(height, width) of one image: the site's aspect range, drawn per image."""
    low, high = STYLES[site].aspect
    return round(size * seeded(seed, site, 3, index).uniform(low, high)), size


def _job(seed: int, site: str, index: int, size: int, **fields) -> dict:
    """A render job with its deterministic image size."""
    height, width = _size(seed, site, index, size)
    return {"seed": seed, "site": site, "index": index, "height": height, "width": width, **fields}


def chexpert_jobs(seed: int, train: pd.DataFrame, valid: pd.DataFrame, size: int) -> tuple[list, list]:
    """Render jobs and sign records of the CheXpert-style site (one plan per study, shared by its views)."""
    table = pd.concat([train, valid], ignore_index=True)
    study_key = table["Path"].str.rsplit("/", n=1).str[0]
    jobs, records = [], []
    for study_number, (_key, rows) in enumerate(table.groupby(study_key, sort=False)):
        labels = rows.iloc[0][sample.CHEXPERT_FINDINGS].to_dict()
        signs, study_records = plan.chexpert_plan(seeded(seed, "chexpert", 1, study_number), labels)
        patient_number = int(rows.iloc[0]["Path"].split("/patient")[1][:5])
        for index, row in rows.iterrows():
            lateral = row["Frontal/Lateral"] == "Lateral"
            projection = "LL" if lateral else ("AP" if row["AP/PA"] == "AP" else "PA")
            jobs.append(
                _job(
                    seed,
                    "chexpert",
                    int(index),
                    size,
                    path=row["Path"],
                    view="lateral" if lateral else "frontal",
                    projection=projection,
                    sex=SEX_CODE.get(row["Sex"], "U"),
                    age=float(row["Age"]),
                    patient_number=patient_number,
                    study_number=study_number,
                    signs=signs,
                )
            )
            records += [{"path": row["Path"], **r} for r in study_records]
    return jobs, records


def nih_jobs(seed: int, table: pd.DataFrame, size: int) -> tuple[list, list]:
    """Render jobs and sign records of the ChestX-ray14-style site (one plan per image)."""
    jobs, records = [], []
    for index, row in table.iterrows():
        path = f"{SITE_DIRS['nih']}/{row['_folder']}/images/{row['Image Index']}"
        labels = set(row["Finding Labels"].split("|")) - {"No Finding"}
        projection = "AP" if row["View Position"] == "AP" else "PA"
        signs, image_records = plan.nih_plan(seeded(seed, "nih", 1, int(index)), labels, projection)
        jobs.append(
            _job(
                seed,
                "nih",
                int(index),
                size,
                path=path,
                view="frontal",
                projection=projection,
                sex=row["Patient Gender"],
                age=float(row["Patient Age"]),
                patient_number=int(row["Patient ID"]),
                study_number=int(index),
                signs=signs,
            )
        )
        records += [{"path": path, **r} for r in image_records]
    return jobs, records


def hospital_jobs(seed: int, table: pd.DataFrame, size: int) -> tuple[list, list]:
    """Render jobs and sign records of the hospital site (signs follow each report's MeSH terms)."""
    jobs, records = [], []
    for study_number, (_study, rows) in enumerate(table.groupby("StudyID", sort=False)):
        signs, study_records = plan.mesh_plan(seeded(seed, "hospital", 1, study_number), rows.iloc[0]["_mesh"])
        for index, row in rows.iterrows():
            path = f"{SITE_DIRS['hospital']}/{row['Path']}"
            jobs.append(
                _job(
                    seed,
                    "hospital",
                    int(index),
                    size,
                    path=path,
                    view="lateral" if row["View"] == "LL" else "frontal",
                    projection=row["View"],
                    sex=row["Sex"],
                    age=float(row["Age"]),
                    patient_number=study_number,
                    study_number=study_number,
                    signs=signs,
                )
            )
            records += [{"path": path, **r} for r in study_records]
    return jobs, records


_WORKER: dict = {}


def _init_worker(templates: np.ndarray, aspects: np.ndarray, root: str) -> None:
    """Keep the lung templates and the output root in each worker process."""
    _WORKER.update(templates=templates, aspects=aspects, root=Path(root))


def _save_whole(pixels: np.ndarray, target: Path, **options: object) -> None:
    """Save an image through a temporary name then rename it: a killed run never leaves half a file at `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.stem}.partial{target.suffix}")
    Image.fromarray(pixels).save(partial, **options)
    os.replace(partial, target)


def _render_and_save(job: dict) -> dict:
    """Render one job, save the image in its site's format and its mask PNG; return its ground-truth record."""
    image, masks, record = render(job, _WORKER["templates"], _WORKER["aspects"])
    target = _WORKER["root"] / job["path"]
    jpeg = STYLES[job["site"]].image_format == "jpg"
    _save_whole(image, target, **({"quality": STYLES[job["site"]].jpeg_quality} if jpeg else {}))
    mask = mask_path(job["path"])
    _save_whole(masks, _WORKER["root"] / mask)
    if "remove" in job:
        return {"path": job["original"], "counterfactual": job["path"], "removed": job["remove"], "mask": mask}
    return {
        "path": job["path"],
        "site": job["site"],
        "view": job["view"],
        "projection": job["projection"],
        "height": job["height"],
        "width": job["width"],
        "mask": mask,
        **record,
    }


def write_tables(root: Path, chexpert: tuple, nih: pd.DataFrame, hospital: pd.DataFrame) -> None:
    """The sites' CSV and list files, with exactly the real columns."""
    train, valid = chexpert
    columns = list(sample.chexpert_table().columns[:19])
    site = root / SITE_DIRS["chexpert"]
    site.mkdir(parents=True, exist_ok=True)
    train[columns].to_csv(site / "train.csv", index=False)
    valid[columns].to_csv(site / "valid.csv", index=False)
    site = root / SITE_DIRS["nih"]
    site.mkdir(parents=True, exist_ok=True)
    nih[[c for c in nih.columns if not c.startswith("_")]].to_csv(site / "Data_Entry_2017_v2020.csv", index=False)
    for split, name in (("train", "train_val_list.txt"), ("test", "test_list.txt")):
        (site / name).write_text("".join(f"{i}\n" for i in nih.loc[nih["_split"] == split, "Image Index"]))
    site = root / SITE_DIRS["hospital"]
    site.mkdir(parents=True, exist_ok=True)
    hospital[["Path", "PatientID", "StudyID", "View", "Sex", "Age", "Report"]].to_csv(site / "reports.csv", index=False)


def _plan_sites(seed: int, per_site: int, size: int) -> tuple[dict, tuple]:
    """Sample the real metadata of the three sites and turn it into render jobs and sign records."""
    chexpert = sample.sample_chexpert(seeded(seed, "chexpert", 4, 0), per_site)
    nih = sample.sample_nih(seeded(seed, "nih", 4, 0), per_site, size)
    hospital = sample.sample_hospital(seeded(seed, "hospital", 4, 0), per_site)
    parts = {
        "chexpert": chexpert_jobs(seed, *chexpert, size),
        "nih": nih_jobs(seed, nih, size),
        "hospital": hospital_jobs(seed, hospital, size),
    }
    return parts, (chexpert, nih, hospital)


def rendered_so_far(root: Path, seed: int, per_site: int, size: int) -> dict[str, dict]:
    """Output path -> ground-truth record of every image an interrupted run at root finished (`_synth/rendered.jsonl`,
    images whose file and mask are on disk); ValueError when root was started with other settings."""
    meta_file = root / "synth_meta.json"
    meta = json.loads(meta_file.read_text())
    started = {"seed": meta["seed"], "per_site": meta["per_site"], "size": meta["size"]}
    asked = {"seed": seed, "per_site": per_site, "size": size}
    if started != asked:
        raise ValueError(f"{root} holds a run started with {started}; --resume continues it only with the same "
                         f"settings (asked {asked}): use them, or --force to start afresh")
    done = {}
    if (root / PROGRESS).is_file():
        for line in (root / PROGRESS).read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # the last line of a killed run may be cut short
                entry = json.loads(line)
                if (root / entry["job"]).is_file() and (root / entry["result"]["mask"]).is_file():
                    done[entry["job"]] = entry["result"]
    return done


def _resume_or_prepare(root: Path, seed: int, per_site: int, size: int, force: bool, resume: bool) -> dict:
    """The records of an interrupted run to continue (with `resume`, at a started, unfinished root), else {} after
    preparing root as a fresh run does."""
    started = (root / "synth_meta.json").is_file() and not (root / ".complete").is_file()
    if resume and started:
        _remove_partial_images(root)
        return rendered_so_far(root, seed, per_site, size)
    if resume and (root / ".complete").is_file() and not force:
        raise FileExistsError(f"{root} is complete: nothing to resume (--force replaces it)")
    prepare_root(root, force)
    return {}


def _render_all(root: Path, jobs: list[dict], done: dict[str, dict], workers: int, templates: np.ndarray,
                aspects: np.ndarray) -> list[dict]:
    """Every job's record in job order, rendering only the jobs not in `done`; each finished image is appended to
    the progress file, so a killed run resumes where it stopped."""
    todo = [job for job in jobs if job["path"] not in done]
    with open(root / PROGRESS, "a") as progress, \
            Pool(workers, initializer=_init_worker, initargs=(templates, aspects, str(root))) as pool:
        for job, result in zip(todo, tqdm(pool.imap(_render_and_save, todo, chunksize=8), total=len(jobs),
                                          initial=len(jobs) - len(todo), desc="synth", unit="img"), strict=True):
            progress.write(json.dumps({"job": job["path"], "result": result}, default=_plain) + "\n")
            progress.flush()
            done[job["path"]] = result
    return [done[job["path"]] for job in jobs]


def _plain(value: object) -> object:
    """numpy scalars as plain JSON numbers (records hold numpy floats and bools)."""
    return value.item() if isinstance(value, np.generic) else value


def generate(root: Path, per_site: int, size: int, seed: int, workers: int, force: bool = False,
             remove: str | None = None, resume: bool = False) -> dict:
    """Write all three sites under root; returns a summary (images, seconds, images/s/core). With `remove` (a sign
    name), every image showing that sign also gets its counterfactual beside it (`counterfactual_jobs`), listed in
    _synth/counterfactuals.csv; its mask PNG's blue channel marks where the removed sign would be. With `resume`, a
    run that was interrupted at root (same seed, size and count) continues where it stopped, and the finished tree
    is the same, byte for byte, as an uninterrupted run's."""
    done = _resume_or_prepare(root, seed, per_site, size, force, resume)
    start = time.perf_counter()
    write_meta(root, seed, per_site, size, {})  # early, so a crashed run can be replaced with --force
    with ProcessPoolExecutor(1) as background:  # the real lung masks decode while the tables are sampled
        pending = background.submit(lung_templates)
        parts, tables = _plan_sites(seed, per_site, size)
        templates, aspects = pending.result()
    jobs = [job for site in SITES for job in parts[site][0]]
    jobs += counterfactual_jobs(jobs, remove) if remove else []
    write_record(root, jobs, running=True)
    prepared = time.perf_counter()
    rendered_before = len(done)
    results = _render_all(root, jobs, done, workers, templates, aspects)
    rendered = time.perf_counter()
    write_tables(root, *tables)
    counterfactuals = [r for r in results if "counterfactual" in r]
    originals = [r for r in results if "counterfactual" not in r]
    write_ground_truth(root, originals, {site: parts[site][1] for site in SITES})
    if remove:
        pd.DataFrame(counterfactuals, columns=["path", "counterfactual", "removed", "mask"]).to_csv(
            root / COUNTERFACTUALS, index=False)
    summary = {
        "images": len(jobs) - len(counterfactuals),
        "counterfactuals": len(counterfactuals),
        "prepare_s": round(prepared - start, 1),
        "render_s": round(rendered - prepared, 1),
        "total_s": round(time.perf_counter() - start, 1),
        "workers": workers,
        "images_per_s_per_core": round((len(jobs) - rendered_before) / max(rendered - prepared, 1e-9) / workers, 1),
        "resumed_from": rendered_before,
    }
    write_meta(root, seed, per_site, size, {site: len(parts[site][0]) for site in SITES})
    (root / PROGRESS).unlink(missing_ok=True)  # the tree is whole: nothing left to resume
    write_record(root, jobs)
    (root / ".complete").write_text("synthetic demo data complete\n")  # last: the Makefile's done marker
    return summary


def write_ground_truth(root: Path, results: list[dict], records: dict[str, list]) -> None:
    """Per site: _synth/<site>_images.csv (view, projection, CTR, drain, mask) and _synth/<site>_signs.csv."""
    images = pd.DataFrame(results)
    for site in SITES:
        images[images["site"] == site].drop(columns="site").to_csv(root / "_synth" / f"{site}_images.csv", index=False)
        pd.DataFrame(
            records[site], columns=["path", "label", "label_value", "drawn", "sign", "severity", "equivocal", "side"]
        ).to_csv(root / "_synth" / f"{site}_signs.csv", index=False)


def write_meta(root: Path, seed: int, per_site: int, size: int, counts: dict[str, int]) -> None:
    """synth_meta.json: what was generated and where the ground truth lies (no timestamps: reproducible)."""
    meta = {
        "generator": "data_prep.synth",
        "version": VERSION,
        "seed": seed,
        "per_site": per_site,
        "size": size,
        "images": counts,
        "site_dirs": SITE_DIRS,
        "ground_truth": {
            site: {"images": f"_synth/{site}_images.csv", "signs": f"_synth/{site}_signs.csv"} for site in SITES
        },
        "masks": "_synth/masks/<image path>.png: red = sign id, green = bits lungs 1, thorax 2, heart 4",
        "uncertain_draw_rate": plan.UNCERTAIN_DRAW_RATE,
        "nih_drain_rate_pneumothorax": plan.NIH_DRAIN_RATE,
        "nih_drain_rate_other": plan.NIH_DRAIN_OTHER_RATE,
        "nih_unlabelled_device_rate": plan.NIH_DEVICE_RATE,
    }
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    atomic_write(root / "synth_meta.json", lambda stream: stream.write(text))
