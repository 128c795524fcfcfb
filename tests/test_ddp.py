"""Two CPU processes under DistributedDataParallel (gloo) train to the same weights as one process on the same
global batch: the sampler shards each global batch, DDP averages the gradients, rank 0 validates on the whole
validation set and saves."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from cxrcore.train import TrainConfig, fit, make_loader

GLOBAL_BATCH = 8
WORLD = 2


class Stripes(Dataset):
    """Noise images; the one finding is a bright vertical stripe. Every label counts (mask 1)."""

    def __init__(self, n: int, seed: int):
        rng = np.random.default_rng(seed)
        self.images = rng.normal(0, 0.3, size=(n, 1, 16, 16)).astype(np.float32)
        self.targets = rng.integers(0, 2, size=(n, 1)).astype(np.float32)
        self.images[self.targets[:, 0] == 1, :, :, 6:9] += 1.5

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.images[i]), "target": torch.from_numpy(self.targets[i]),
                "mask": torch.ones(1), "patient_id": str(i), "study_id": str(i), "path": f"{i}.png"}


def _model() -> nn.Module:
    # no BatchNorm / Dropout: their per-process statistics and randomness differ by design under DDP
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))


def _train(batch_size: int, checkpoint_dir: str, epochs: int = 2) -> nn.Module:
    model = _model()
    train = make_loader(Stripes(48, seed=1), batch_size=batch_size, shuffle=True, seed=5, distributed=True,
                        device="cpu")
    valid = make_loader(Stripes(16, seed=2), batch_size=8, device="cpu")
    cfg = TrainConfig(epochs=epochs, lr=5e-2, device="cpu", progress=False, checkpoint_dir=checkpoint_dir,
                      plateau_patience=0, plateau_factor=0.5)
    fit(model, train, valid, cfg=cfg)
    return model


def _worker(rank: int, rendezvous: str, checkpoint_dir: str, epochs: int = 2) -> None:
    torch.set_num_threads(1)
    # a file rendezvous, not a TCP port: a port found free can be taken by a parallel test before rank 0 binds it
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        _train(GLOBAL_BATCH // WORLD, checkpoint_dir, epochs)
    finally:
        dist.destroy_process_group()


def _rendezvous(tmp_path, name: str) -> str:
    """A fresh rendezvous file for one process group (file:// init needs one that no earlier group used)."""
    return str(tmp_path / f"rendezvous-{name}")


def test_two_processes_match_one(tmp_path):
    mp.spawn(_worker, args=(_rendezvous(tmp_path, "run"), str(tmp_path / "ddp")), nprocs=WORLD, join=True)
    single = _train(GLOBAL_BATCH, str(tmp_path / "single"))
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    assert ddp["model"].keys() == single.state_dict().keys()  # rank 0 saved the plain module (no "module.")
    for name, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    for column in ("loss", "val_loss"):  # rank 0 validates on the whole validation set, as one process does
        np.testing.assert_allclose([r[column] for r in ddp["history"]], [r[column] for r in one["history"]],
                                   rtol=1e-5, err_msg=column)
    assert not torch.equal(one["model"]["4.weight"], _model().state_dict()["4.weight"])  # it did train


def test_two_processes_resume_from_their_checkpoint(tmp_path):
    """A DDP run stopped after epoch 1 and started again (a killed job's restart) ends where an uninterrupted run ends:
    rank 0's checkpoint holds the weights, optimizer, scheduler and history every rank resumes from."""
    folder = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(_rendezvous(tmp_path, "first"), folder, 1), nprocs=WORLD, join=True)
    assert torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)["epoch"] == 1
    mp.spawn(_worker, args=(_rendezvous(tmp_path, "second"), folder, 2), nprocs=WORLD, join=True)  # resumes at epoch 2
    resumed = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    _train(GLOBAL_BATCH, str(tmp_path / "single"), 2)
    straight = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    np.testing.assert_allclose([r["loss"] for r in resumed["history"]], [r["loss"] for r in straight["history"]],
                               rtol=1e-5)
