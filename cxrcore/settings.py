"""The profiles and where data and runs live, read from environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("quick", "smoke", "gpu", "full")
# CPU-sized profiles: the quick profile's presets and counts; smoke trains fewer images and epochs of the same runs
# (cxrcore.presets.smoke_profile_preset), so that `make test` checks every chapter end to end in minutes
QUICK_SIZED = ("quick", "smoke")
# the gpu profile: one GPU and the GPU-sized demo sites (`make data DEMO=gpu`): the full profile's image counts, the
# papers' input sizes, capped epochs (cxrcore.presets.gpu_profile_preset)
DATA_ROOT_ENV = "CXR_DATA_ROOT"  # named in errors about a wrong data root


@dataclass(frozen=True)
class Settings:
    """Profile (`CXR_PROFILE`: quick|smoke|gpu|full), data root (`CXR_DATA_ROOT`) and run cache (`CXR_RUNS_DIR`)."""

    profile: str
    data_root: Path
    runs_dir: Path

    @property
    def is_quick_profile(self) -> bool:
        """True in the quick profile (CPU, demo data, small sizes, few epochs) and its cut-down smoke version."""
        return quick_sized(self.profile)


def quick_sized(profile: str) -> bool:
    """Whether a profile trains the quick profile's CPU-sized runs (quick, or smoke: the same runs, cut down)."""
    return profile.lower() in QUICK_SIZED


def make_settings(profile: str, data_root: str | Path, runs_dir: str | Path) -> Settings:
    """Settings from explicit values (a chapter's parameters cell); relative paths resolve against the cwd."""
    profile = profile.strip().lower()
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: expected one of {PROFILES}")
    return Settings(profile=profile, data_root=Path(data_root).expanduser().resolve(),
                    runs_dir=Path(runs_dir).expanduser().resolve())


def settings(default_data_root: str = "data/demo", default_runs_dir: str = "runs") -> Settings:
    """Settings from the environment (entry points only); relative defaults resolve against the cwd."""
    try:
        return make_settings(os.environ.get("CXR_PROFILE", "quick"), os.environ.get(DATA_ROOT_ENV) or
                             default_data_root, os.environ.get("CXR_RUNS_DIR") or default_runs_dir)
    except ValueError as err:
        raise ValueError(f"CXR_PROFILE: {err}") from err
