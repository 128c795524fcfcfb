"""The two profiles and where data and runs live, read from environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("quick", "full")


@dataclass(frozen=True)
class Settings:
    """Profile (`CXR_PROFILE`: quick|full), data root (`CXR_DATA_ROOT`) and run cache (`CXR_RUNS_DIR`)."""

    profile: str
    data_root: Path
    runs_dir: Path

    @property
    def quick(self) -> bool:
        """True in the quick profile (CPU, demo data, small sizes, few epochs)."""
        return self.profile == "quick"


def settings(default_data_root: str = "data/demo", default_runs_dir: str = "runs") -> Settings:
    """Settings from the environment; relative defaults are resolved against the current directory."""
    profile = os.environ.get("CXR_PROFILE", "quick").strip().lower()
    if profile not in PROFILES:
        raise ValueError(f"CXR_PROFILE={profile!r}: expected one of {PROFILES}")
    data_root = Path(os.environ.get("CXR_DATA_ROOT") or default_data_root).expanduser().resolve()
    runs_dir = Path(os.environ.get("CXR_RUNS_DIR") or default_runs_dir).expanduser().resolve()
    return Settings(profile=profile, data_root=data_root, runs_dir=runs_dir)
