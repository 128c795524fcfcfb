"""Each paper's training hyper-parameters as a named preset, and the quick profile's versions of them
(`quick_profile_preset`), which only shrink sizes and set the schedule; the smoke profile cuts those further
(`smoke_profile_preset`, `SMOKE_TRAIN_SHARE`) for the test suite; the gpu profile (`gpu_profile_preset`) keeps the
papers' input sizes and caps the epochs. `profile_preset` picks a profile's version.

Values are as the papers report them; where a paper does not report a value the preset says so in `chosen`
(the value used there is this project's choice, not the paper's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cxrcore.train import TrainConfig

QUICK_IMAGE_SIZE = 64
QUICK_BATCH = 32  # on 2 CPU cores batch 32 trains ~25 % more images/s than 16 (benchmarks appendix)
QUICK_MAX_EPOCHS = 10
# A few hundred steps at a fixed rate (or a plateau schedule that never fires) leave the weights swinging from
# epoch to epoch, so the kept epoch is a coin toss: the quick profile warms up, then decays to zero (one cycle).
QUICK_SCHEDULER = "onecycle"
# what quick_profile_preset() changes: shown in the recipe tables
QUICK_FIELDS = ("image_size", "batch_size", "epochs", "scheduler")
# The smoke profile (`make test`) executes every chapter end to end on two cores in minutes: the quick profile's
# runs for at most one epoch on an eighth of each run's training images; its numbers check code, not teach.
SMOKE_MAX_EPOCHS = 1
SMOKE_TRAIN_SHARE = 0.125
# The gpu profile (one H100-class GPU, the GPU-sized demo sites): the papers' input sizes on every training image,
# epochs capped so that a chapter takes at most about 15 minutes on the 10,000-per-site sites (measured on an H100
# for two experiments, estimated for the rest: `python -m cxrcore experiment NAME --estimate`), batch 64 (32 for
# "-large", the papers' ratio): at the papers' 16 a GPU step is too short to hide the per-batch work (a fifth of
# batch 64's images/s, benchmarks appendix).
GPU_BATCH = 64
GPU_MAX_EPOCHS = 12
GPU_FIELDS = ("batch_size", "epochs", "scheduler")


@dataclass(frozen=True)
class Preset:
    """Optimizer, learning rate, schedule, batch, epochs, input size and augmentation of one paper's setup."""

    name: str
    paper: str
    lr: float
    batch_size: int
    epochs: int
    image_size: int
    augment: str | bool  # cxrcore.datasets augmentation: False | "mild" | "paper000" | "paper001" | "paper002"
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # plateau (on validation loss) | onecycle (warm-up, cosine decay) | none (fixed)
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    select_by: str = "val_loss"
    large: bool = False  # paper 001's "-large" input (twice the side); the quick profile keeps the factor two
    quick_profile: bool = False  # made by quick_profile_preset()
    gpu_profile: bool = False  # made by gpu_profile_preset()
    chosen: tuple[str, ...] = field(default=())  # fields the paper does not report (this project's choice)

    def train_config(self, **machinery: object) -> TrainConfig:
        """The TrainConfig of this preset; `machinery` sets the non-hyper-parameter fields (seed, device...)."""
        if self.optimizer != "adam":
            raise ValueError(f"preset {self.name}: optimizer {self.optimizer!r} is not implemented (only 'adam')")
        return TrainConfig(epochs=self.epochs, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay,
                           scheduler=self.scheduler, plateau_factor=self.plateau_factor,
                           plateau_patience=self.plateau_patience, select_by=self.select_by, **machinery)

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return {**dataclasses.asdict(self), "betas": list(self.betas), "chosen": list(self.chosen)}


PRESETS: dict[str, Preset] = {
    # Bajwa et al. 3.3: Adam (defaults), lr 1e-3, x0.1 after 5 epochs without validation-loss improvement, batch 16,
    # 30 epochs, 320 x 320, random horizontal flip, rotation up to 20 degrees, shifts up to 0.2; best epoch by the
    # lowest validation loss.
    "paper000": Preset(name="paper000", paper="Bajwa et al. (000)", lr=1e-3, batch_size=16, epochs=30,
                       image_size=320, augment="paper000", plateau_factor=0.1, plateau_patience=5),
    # Baltruschat et al. 3: Adam (0.9, 0.999), lr 1e-3 for transfer learning, halved when the validation loss does
    # not improve, batch 16, 224 px (256 then centre crop at test), Inception-style crops, +-7 degrees, flip;
    # best model by validation loss. Patience and epochs are not reported.
    "paper001": Preset(name="paper001", paper="Baltruschat et al. (001)", lr=1e-3, batch_size=16, epochs=30,
                       image_size=224, augment="paper001", plateau_factor=0.5, plateau_patience=3,
                       chosen=("epochs", "plateau_patience")),
    # from scratch: lr 1e-2 (same schedule)
    "paper001-scratch": Preset(name="paper001-scratch", paper="Baltruschat et al. (001)", lr=1e-2, batch_size=16,
                               epochs=30, image_size=224, augment="paper001", plateau_factor=0.5, plateau_patience=3,
                               chosen=("epochs", "plateau_patience")),
    # "-large": 448 x 448 (480 then centre crop at test), from scratch, batch 8
    "paper001-large": Preset(name="paper001-large", paper="Baltruschat et al. (001)", lr=1e-2, batch_size=8,
                             epochs=30, image_size=448, augment="paper001", plateau_factor=0.5, plateau_patience=3,
                             large=True, chosen=("epochs", "plateau_patience")),
    # Wei and Jethani 4.2: Adam (0.9, 0.999), fixed lr 1e-4, batch 16, 3 epochs, resize 364 + random crop 320 +
    # horizontal flip; they report each epoch and use the model after the 3rd.
    "paper002": Preset(name="paper002", paper="Wei and Jethani (002)", lr=1e-4, batch_size=16, epochs=3,
                       image_size=320, augment="paper002", scheduler="none", select_by="last"),
    # Borhan 4: Adam lr 1e-4 (0.9, 0.999); Keras applications' default 224 px input. Batch, epochs, schedule and
    # augmentation are not reported: batch 32 (Keras' default), 10 epochs, fixed lr, no augmentation, best epoch
    # by validation loss are this project's choices.
    "paper003": Preset(name="paper003", paper="Borhan (003)", lr=1e-4, batch_size=32, epochs=10, image_size=224,
                       augment=False, scheduler="none",
                       chosen=("batch_size", "epochs", "scheduler", "augment", "select_by", "image_size")),
}


def get_preset(name: str) -> Preset:
    """The named preset (KeyError lists the names)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name]


def quick_profile_preset(preset: Preset | str) -> Preset:
    """The CPU-sized version, the same change for every preset: 64 px input (128 for "-large"), batch 32 (16 for
    "-large", the papers' ratio), at most 10 epochs, a one-cycle learning-rate schedule peaking at the preset's rate;
    nothing else."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.quick_profile:
        return preset
    size = QUICK_IMAGE_SIZE * (2 if preset.large else 1)
    batch = QUICK_BATCH // 2 if preset.large else QUICK_BATCH
    return dataclasses.replace(preset, image_size=size, batch_size=batch, epochs=min(preset.epochs, QUICK_MAX_EPOCHS),
                               scheduler=QUICK_SCHEDULER, quick_profile=True)


def gpu_profile_preset(preset: Preset | str) -> Preset:
    """The one-GPU version, the same change for every preset: the paper's input size, batch 64 (32 for "-large"),
    at most GPU_MAX_EPOCHS epochs, the quick profile's one-cycle schedule (a plateau schedule rarely fires in so few
    epochs); nothing else."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.gpu_profile:
        return preset
    batch = GPU_BATCH // 2 if preset.large else GPU_BATCH
    return dataclasses.replace(preset, batch_size=batch, epochs=min(preset.epochs, GPU_MAX_EPOCHS),
                               scheduler=QUICK_SCHEDULER, gpu_profile=True)


def profile_preset(preset: Preset | str, profile: str) -> Preset:
    """A preset as a profile trains it, before a run's overrides: quick and smoke the quick version, gpu the gpu
    version, full the paper's (the smoke profile's cut comes after the overrides: `smoke_profile_preset`)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    profile = profile.lower()
    if profile in ("quick", "smoke"):
        return quick_profile_preset(preset)
    return gpu_profile_preset(preset) if profile == "gpu" else preset


def smoke_profile_preset(preset: Preset) -> Preset:
    """The smoke profile's cut of a quick-profile preset (after a run's overrides): at most SMOKE_MAX_EPOCHS."""
    return dataclasses.replace(preset, epochs=min(preset.epochs, SMOKE_MAX_EPOCHS))


def with_overrides(preset: Preset, overrides: dict | None) -> Preset:
    """A copy of the preset with some fields replaced; an unknown field name raises naming the valid ones."""
    overrides = dict(overrides or {})
    names = {f.name for f in dataclasses.fields(Preset)} - {"name", "paper", "quick_profile", "gpu_profile", "chosen"}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown preset override(s) {unknown}; valid: {sorted(names)}")
    if "betas" in overrides:
        overrides["betas"] = tuple(overrides["betas"])
    return dataclasses.replace(preset, **overrides)
