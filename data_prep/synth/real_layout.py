"""`python -m data_prep real-layout`: a demo tree as the real downloads hold it, without its synthetic ground truth.

The datasets' own files only (their tables and images, in their layouts): no `_synth/` (drawn-sign tables and
masks), no `synth_meta.json`, no counterfactual films. The chapters take their real-data paths on it (no drawn
signs to score, no shortcut lab), so `make test` can execute those paths without the downloads. Files are hard
links to the demo tree's where the file system allows (copies elsewhere): the copy costs next to no disk.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from data_prep.synth.write import COUNTERFACTUALS, foreign_files, recorded_files, remove_recorded

GROUND_TRUTH = ("_synth/", "synth_meta.json", ".complete")  # what a real download never holds


def real_layout_files(demo_root: Path) -> list[str]:
    """The files of a finished demo tree that a real download would hold, as sorted paths relative to it."""
    if not (demo_root / ".complete").is_file():
        raise FileNotFoundError(f"{demo_root} is not a finished demo tree (no .complete): write it first with "
                                f"`python -m data_prep synth --out {demo_root}`")
    counterfactuals = (set(pd.read_csv(demo_root / COUNTERFACTUALS, dtype=str)["counterfactual"])
                       if (demo_root / COUNTERFACTUALS).is_file() else set())
    return sorted(name for name in recorded_files(demo_root)
                  if not name.startswith(GROUND_TRUTH) and name not in counterfactuals)


def write_real_layout(demo_root: Path, out: Path, force: bool = False) -> int:
    """Link (or copy) `real_layout_files` of demo_root into out; the number of files. An out that holds files
    is refused without force, and with force too if any of them is not one of those files (never a user's)."""
    files = real_layout_files(demo_root)
    if out.exists() and any(out.iterdir()):
        foreign = foreign_files(out, set(files))
        if not force or foreign:
            raise FileExistsError(f"{out} is not empty" + (f" and holds files of its own, e.g. {foreign[:3]}: "
                                                           "choose another --out" if foreign else ": pass --force"))
        remove_recorded(out, set(files))
    for name in files:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(demo_root / name, target)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(demo_root / name, target)
    return len(files)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the real-layout command."""
    parser.add_argument("--demo", type=Path, required=True, help="a finished demo tree (python -m data_prep synth)")
    parser.add_argument("--out", type=Path, required=True, help="data root to write (must be empty unless --force)")
    parser.add_argument("--force", action="store_true", help="replace a previous real-layout copy at --out")


def main(args: argparse.Namespace) -> int:
    """Write the copy and say what it holds."""
    try:
        count = write_real_layout(args.demo.expanduser().resolve(), args.out.expanduser().resolve(), args.force)
    except (FileNotFoundError, FileExistsError) as err:
        print(f"real-layout: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {count:,} files of {args.demo} in the real layouts, without the synthetic ground truth")
    return 0
