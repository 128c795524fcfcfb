"""`python -m data_prep synth`: the embedded demo data, three synthetic sites in the real datasets' layouts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

QUICK_PER_SITE = 3000  # images per site by default: ~9,000 images at 128 px in under 2 minutes on 2 cores
QUICK_SIZE = 128
MIN_SIZE = 32
MIN_PER_SITE = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the synth command."""
    parser.add_argument("--out", type=Path, required=True, help="data root to write (must be empty unless --force)")
    parser.add_argument("--per-site", type=int, default=QUICK_PER_SITE, help="about this many images per site")
    parser.add_argument("--size", type=int, default=QUICK_SIZE, help="stored image width in pixels")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    parser.add_argument("--force", action="store_true", help="replace a previous synthetic tree at --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run interrupted at --out (same --seed, --per-site, --size) where it stopped; "
                             "starts one if --out is empty")
    parser.add_argument("--counterfactual", metavar="remove=SIGN", default=None,
                        help="also write each image showing SIGN (e.g. drain) again without it, beside the original "
                             "(<name>_no-SIGN), every other pixel-generating choice unchanged; listed in "
                             "_synth/counterfactuals.csv")


def check_arguments(args: argparse.Namespace) -> None:
    """Clear errors for values the generator cannot honour."""
    if args.per_site < MIN_PER_SITE:
        raise ValueError(f"--per-site must be at least {MIN_PER_SITE} (got {args.per_site})")
    if args.size < MIN_SIZE:
        raise ValueError(f"--size must be at least {MIN_SIZE} pixels for the signs to be drawable (got {args.size})")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1 (got {args.workers})")
    if args.seed < 0:
        raise ValueError(f"--seed must be non-negative (got {args.seed})")
    removed_sign(args.counterfactual)


def removed_sign(option: str | None) -> str | None:
    """The sign of `--counterfactual remove=SIGN` (None without the option); a clear error for anything else."""
    from data_prep.synth.signs import SIGN_IDS

    if option is None:
        return None
    kind, _, sign = option.partition("=")
    if kind != "remove" or sign not in SIGN_IDS:
        raise ValueError(f"--counterfactual expects remove=SIGN with SIGN one of {sorted(SIGN_IDS)}, got {option!r}")
    return sign


def main(args: argparse.Namespace) -> int:
    """Generate the demo data; prints timing and images/s/core."""
    from data_prep.synth.write import generate

    try:
        check_arguments(args)
        summary = generate(
            args.out.expanduser().resolve(), args.per_site, args.size, args.seed, args.workers, args.force,
            removed_sign(args.counterfactual), args.resume,
        )
    except (ValueError, FileExistsError) as err:
        print(f"synth: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {summary['images']} images to {args.out} in {summary['total_s']} s "
        f"(preparing {summary['prepare_s']} s, rendering {summary['render_s']} s on {summary['workers']} workers: "
        f"{summary['images_per_s_per_core']} images/s/core)"
        + (f"; {summary['counterfactuals']} counterfactual images" if args.counterfactual else "")
        + (f"; resumed after {summary['resumed_from']} already written" if summary["resumed_from"] else "")
    )
    return 0
