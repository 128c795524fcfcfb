"""The training loop: learns a separable signal, refuses NaN losses, resumes exactly, checkpoints load safely."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from cxrcore.datasets import ManifestDataset
from cxrcore.models import build_model
from cxrcore.train import TrainConfig, _StepChecks, fit, make_loader, predict
from data_prep.manifests import assign_splits, read_chexpert

SIZE = 32


class SquareDataset(Dataset):
    """Noise images; finding 0 = a bright square somewhere, finding 1 = a bright horizontal bar (independent)."""

    def __init__(self, n: int, seed: int, masked_fraction: float = 0.0):
        rng = np.random.default_rng(seed)
        self.images = rng.normal(0.0, 0.3, size=(n, 1, SIZE, SIZE)).astype(np.float32)
        self.targets = rng.integers(0, 2, size=(n, 2)).astype(np.float32)
        self.mask = (rng.random((n, 2)) >= masked_fraction).astype(np.float32)
        for i in range(n):
            if self.targets[i, 0]:
                r, c = rng.integers(2, SIZE - 10, size=2)
                self.images[i, 0, r:r + 8, c:c + 8] += 2.0
            if self.targets[i, 1]:
                r = rng.integers(2, SIZE - 4)
                self.images[i, 0, r:r + 3, 4:SIZE - 4] += 2.0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.images[i]), "target": torch.from_numpy(self.targets[i]),
                "mask": torch.from_numpy(self.mask[i]), "features": torch.zeros(3),
                "patient_id": f"p{i // 2}", "study_id": f"s{i}", "path": f"img{i}.png"}


def _loaders(n_train=96, n_valid=48, batch=16, seed=0):
    train = make_loader(SquareDataset(n_train, seed=1), batch_size=batch, shuffle=True, seed=seed, device="cpu")
    valid = make_loader(SquareDataset(n_valid, seed=2), batch_size=batch, device="cpu")
    return train, valid


def _model(seed=0):
    return build_model("resnet18", 2, channels=1, seed=seed)


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A small CNN with BatchNorm and Dropout (RNG use): checkpoints stay small, so resume tests run fast."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(16, 2))
    torch.random.set_rng_state(generator_state)
    return model


def _cfg(tmp_path=None, **kw) -> TrainConfig:
    base = {"epochs": 3, "lr": 1e-3, "device": "cpu", "progress": False, "seed": 0,
            "checkpoint_dir": str(tmp_path) if tmp_path is not None else None}
    return TrainConfig(**{**base, **kw})


def test_learns_separable_signal():
    train, valid = _loaders()
    history = fit(_model(), train, valid, cfg=_cfg(epochs=4, select_by="mean_auroc"), class_names=["square", "bar"])
    table = history.table
    assert list(table["epoch"]) == [1, 2, 3, 4]
    assert {"loss", "val_loss", "auroc_square", "auroc_bar", "mean_auroc", "lr", "images_per_s", "seconds"} <= set(
        table.columns)
    assert table["loss"].iloc[-1] < table["loss"].iloc[0]
    assert history.best["mean_auroc"] > 0.9
    assert history.best_epoch == int(table.loc[table["mean_auroc"].idxmax(), "epoch"])


def test_predict_table_has_ids_probabilities_targets(tmp_path):
    _, valid = _loaders()
    frame = predict(_model(), valid, class_names=["square", "bar"], device="cpu")
    assert len(frame) == 48
    assert {"path", "patient_id", "study_id", "square", "square_score", "bar", "bar_score"} <= set(frame.columns)
    assert frame["square_score"].between(0, 1).all()
    np.testing.assert_array_equal(frame["square"], valid.dataset.targets[:, 0])
    assert frame["path"].iloc[3] == "img3.png"


def test_step_checks_read_back_late_still_name_the_first_bad_step():
    # on a GPU the loop reads finiteness back every GPU_CHECK_EVERY steps: the error must name the step it came from
    def batch(step: int) -> dict:
        return {"path": [f"s{step}_a.png", f"s{step}_b.png"]}

    images, loss = torch.zeros(2, 1, 4, 4), torch.tensor(0.7)
    bad_images = images.clone()
    bad_images[1, 0, 2, 2] = float("inf")
    checks = _StepChecks(epoch=3, every=4, lr=0.01)
    checks.add(1, images, loss, batch(1))
    checks.add(2, bad_images, torch.tensor(float("nan")), batch(2))  # queued: nothing read back yet
    checks.add(3, images, torch.tensor(float("nan")), batch(3))
    with pytest.raises(FloatingPointError, match=r"1 image\(s\) with NaN/inf pixel values in the training batch at "
                                                 r"epoch 3, step 2: \['s2_b.png'\]"):
        checks.check()
    diverged = _StepChecks(epoch=1, every=2, lr=0.01)
    diverged.add(1, images, loss, batch(1))
    with pytest.raises(FloatingPointError, match=r"the loss is nan at epoch 1, step 2 \(its 2 images are finite\)"):
        diverged.add(2, images, torch.tensor(float("nan")), batch(2))  # the second step fills the queue: read back
    fine = _StepChecks(epoch=1, every=2, lr=0.01)
    for step in (1, 2, 3):
        fine.add(step, images, loss, batch(step))
    assert len(fine.pending) == 1 and fine.check() is None and not fine.pending


def test_nan_loss_raises_naming_epoch_and_step():
    train, valid = _loaders()
    dataset = train.dataset
    dataset.images[20] = np.nan  # image 20 is in the second batch of an unshuffled loader of 16
    plain = make_loader(dataset, batch_size=16, device="cpu")
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 2"):
        fit(tiny_cnn(), plain, valid, cfg=_cfg(epochs=1))


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class _Crash(RuntimeError):
    pass


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    # patience 0 with factor 0.5: the learning rate changes, so the scheduler state must be restored too
    cfg_kw = {"epochs": 3, "scheduler": "plateau", "plateau_patience": 0, "plateau_factor": 0.5, "lr": 3e-2}
    straight = tiny_cnn()
    train, valid = _loaders()
    history = fit(straight, train, valid, cfg=_cfg(tmp_path / "a", **cfg_kw))

    def crash_after_first_epoch(epoch, _history):
        if epoch == 1:
            raise _Crash

    crashed = tiny_cnn()
    train, valid = _loaders()
    with pytest.raises(_Crash):
        fit(crashed, train, valid, cfg=_cfg(tmp_path / "b", **cfg_kw), on_epoch_end=crash_after_first_epoch)
    resumed = tiny_cnn()  # a fresh process would build a fresh model and loaders
    train, valid = _loaders()
    resumed_history = fit(resumed, train, valid, cfg=_cfg(tmp_path / "b", **cfg_kw))

    assert list(resumed_history.table["epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(resumed_history.table["loss"], history.table["loss"], rtol=1e-6)
    np.testing.assert_allclose(resumed_history.table["lr"], history.table["lr"])
    assert resumed_history.best_epoch == history.best_epoch
    for (name, a), b in zip(_weights(straight).items(), _weights(resumed).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_checkpoints_load_with_weights_only(tmp_path):
    train, valid = _loaders(n_train=32, n_valid=32)
    fit(tiny_cnn(), train, valid, cfg=_cfg(tmp_path, epochs=1))
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert last["epoch"] == 1 and set(last) >= {"model", "optimizer", "scheduler", "rng", "history", "config"}
    assert best["model"].keys() == tiny_cnn().state_dict().keys()
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_resume_with_workers_and_augmentation_matches_uninterrupted_run(tmp_path, chexpert_tree):
    # persistent workers keep their own RNG streams across epochs, which a resumed run's new workers cannot
    # continue: each item draws its augmentation from its own seed instead (ItemSeeds)
    manifest = assign_splits(read_chexpert(chexpert_tree.root), "chexpert", seed=0)
    dataset = ManifestDataset(manifest, chexpert_tree.root, ["Atelectasis", "Edema"], image_size=32, channels=1,
                              augment="paper000", cache=True)

    def loaders():
        return (make_loader(dataset, batch_size=8, shuffle=True, seed=0, num_workers=2, device="cpu"),
                make_loader(dataset, batch_size=8, device="cpu"))

    def crash_after_first_epoch(epoch, _history):
        if epoch == 1:
            raise _Crash

    straight, crashed, resumed = tiny_cnn(), tiny_cnn(), tiny_cnn()
    history = fit(straight, *loaders(), cfg=_cfg(tmp_path / "a"))
    with pytest.raises(_Crash):
        fit(crashed, *loaders(), cfg=_cfg(tmp_path / "b"), on_epoch_end=crash_after_first_epoch)
    resumed_history = fit(resumed, *loaders(), cfg=_cfg(tmp_path / "b"))
    assert list(resumed_history.table["epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(resumed_history.table["loss"], history.table["loss"], rtol=1e-6)
    for (name, a), b in zip(_weights(straight).items(), _weights(resumed).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_resume_refuses_a_different_config(tmp_path):
    train, valid = _loaders(n_train=32, n_valid=32)
    fit(tiny_cnn(), train, valid, cfg=_cfg(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="different training config.*lr"):
        fit(tiny_cnn(), train, valid, cfg=_cfg(tmp_path, epochs=2, lr=0.5))


def test_fit_leaves_global_rng_untouched_and_is_deterministic():
    before = torch.get_rng_state()
    results = []
    for _ in range(2):
        model = tiny_cnn()
        train, valid = _loaders(n_train=32, n_valid=32)
        fit(model, train, valid, cfg=_cfg(epochs=1))
        results.append(_weights(model))
    assert torch.equal(before, torch.get_rng_state())
    for name, value in results[0].items():
        torch.testing.assert_close(value, results[1][name], rtol=0, atol=0, msg=name)


def test_masked_entries_do_not_train(tmp_path):
    # with every label masked the loss is 0 and no gradient flows: the weights stay as initialised
    dataset = SquareDataset(32, seed=3, masked_fraction=1.0)
    loader = make_loader(dataset, batch_size=16, device="cpu")
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, loader, loader, cfg=_cfg(epochs=1, restore_best=False))
    assert history.table["loss"].iloc[0] == 0.0 and math.isnan(history.table["val_loss"].iloc[0])
    for name, value in model.state_dict().items():
        if "running" not in name and "num_batches" not in name:  # BatchNorm statistics do move
            torch.testing.assert_close(value, before[name], msg=name)


def test_onecycle_warms_up_then_decays_to_zero():
    train, valid = _loaders(n_train=64, batch=8)  # 8 steps per epoch
    cfg = TrainConfig(epochs=4, lr=1e-2, scheduler="onecycle", progress=False, device="cpu")
    history = fit(tiny_cnn(), train, valid, cfg=cfg)
    lrs = history.table["lr"].tolist()  # the rate at the start of each epoch
    assert lrs[0] < 1e-2 / 10  # starts low (warm-up)
    assert max(lrs) <= 1e-2 + 1e-12 and lrs[1] > lrs[0] and lrs[-1] < lrs[1]  # peaks at lr, then decays
    with pytest.raises(ValueError, match="scheduler='cosine'"):
        TrainConfig(scheduler="cosine")
    short = TrainConfig(epochs=1, scheduler="onecycle", progress=False, device="cpu")  # 2 steps: no cycle fits
    fit(tiny_cnn(), *_loaders(n_train=16, n_valid=8, batch=8), cfg=short)  # runs at the fixed rate, no error


def test_bf16_autocast_and_channels_last_run_on_cpu():
    """The GPU paths on a CPU: bf16 autocast trains (finite losses, near fp32's at first, the weights stay fp32), and
    channels_last computes what the contiguous layout computes (the same model in another memory order)."""
    model, images = _model().eval(), next(iter(_loaders()[1]))["image"]
    with torch.no_grad():
        contiguous = model(images)
        reordered = model.to(memory_format=torch.channels_last)(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(reordered, contiguous, rtol=1e-4, atol=1e-5)
    histories, models = {}, {}
    for name, precision in (("fp32", "fp32"), ("bf16", "bf16")):
        train, valid = _loaders(n_train=64, n_valid=32)
        models[name] = _model()
        histories[name] = fit(models[name], train, valid, cfg=_cfg(epochs=2, precision=precision)).table
    assert np.isfinite(histories["bf16"]["loss"]).all() and np.isfinite(histories["bf16"]["val_loss"]).all()
    # bf16 rounds every product to 8 mantissa bits: the first epoch's loss is fp32's within a few per cent (measured
    # 1.7 %), then the two trajectories drift apart (6.6 % after epoch 2); what must hold is that it learns
    assert histories["bf16"]["loss"].iloc[0] == pytest.approx(histories["fp32"]["loss"].iloc[0], rel=0.05)
    assert histories["bf16"]["loss"].iloc[1] < histories["bf16"]["loss"].iloc[0]
    assert all(p.dtype == torch.float32 for p in models["bf16"].parameters())


def test_draws_per_epoch_are_a_fresh_draw_without_replacement_each_epoch():
    numbers = torch.utils.data.TensorDataset(torch.arange(10))
    loader = make_loader(numbers, batch_size=4, shuffle=True, seed=1, draws=6, device="cpu")

    def epoch(number: int) -> list[int]:
        loader.sampler.set_epoch(number)  # as fit() does before each epoch
        return torch.cat([batch[0] for batch in loader]).tolist()

    epochs = [epoch(1), epoch(2)]
    assert len(loader) == 2 and [len(e) for e in epochs] == [6, 6]
    assert all(len(set(e)) == 6 for e in epochs) and epochs[0] != epochs[1]
    assert epoch(1) == epochs[0]  # the order is (seed, epoch)'s alone: a resumed epoch draws it again
    more = torch.cat([batch[0] for batch in make_loader(numbers, batch_size=5, shuffle=True, draws=25,
                                                         device="cpu")]).tolist()
    assert sorted(set(np.bincount(more, minlength=10))) == [2, 3]  # two whole permutations, then 5 of a third
    with pytest.raises(ValueError, match=r"draws=3: .*needs shuffle=True"):
        make_loader(numbers, batch_size=4, draws=3, device="cpu")

