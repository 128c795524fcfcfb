"""Frozen-backbone training on cached features: one forward pass over the images, then the head trains alone.

With the backbone frozen (and in eval mode, so BatchNorm uses its stored statistics), every epoch computes the same
pooled features for an un-augmented image. Computing them once and training the head on them gives the same head
as training through the images (tests/test_features.py checks it), in a fraction of the time: the head trains on
(N, C) feature vectors. The training images are then seen without augmentation, which is the point of a cache.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrcore.models import CXRNet, unwrap
from cxrcore.train import make_loader, resolve_device


class HeadOnly(nn.Module):
    """A CXRNet seen from its pooled features: forward(pooled (B, C), features) -> the head's logits."""

    def __init__(self, net: CXRNet) -> None:
        super().__init__()
        if not net.frozen_backbone:
            raise ValueError("training on cached features needs a frozen backbone (freeze_backbone=True)")
        self.net = net  # the head's parameters are the net's own: training this trains the net's head
        self.meta_features = net.meta_features

    def forward(self, pooled: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the net's head for pooled backbone features."""
        return self.net.classify(pooled, features)


class FeatureDataset(Dataset):
    """A dataset's items with the image replaced by its pooled backbone features (C,)."""

    def __init__(self, images: Dataset, pooled: torch.Tensor) -> None:
        if len(images) != len(pooled):
            raise ValueError(f"{len(pooled)} feature rows for {len(images)} images")
        self.images = images
        self.pooled = pooled  # (N, C)

    def __len__(self) -> int:
        return len(self.pooled)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.pooled[index], **self.images.labels(index)}


@torch.no_grad()
def pooled_features(net: CXRNet, images: Dataset, *, batch_size: int, device: str = "auto",
                    num_workers: int = 0) -> torch.Tensor:
    """(N, C) pooled backbone features of every image of a dataset, in its order (the net in eval mode)."""
    device = resolve_device(device)
    net = unwrap(net).to(device)
    was_training = net.training
    net.eval()
    loader = make_loader(images, batch_size=batch_size, num_workers=num_workers, device=device)
    chunks = [net.pooled(batch["image"].to(device)).float().cpu() for batch in loader]
    net.train(was_training)
    return torch.cat(chunks)


def feature_loaders(net: CXRNet, train: Dataset, valid: Dataset, *, batch_size: int, seed: int = 0,
                    num_workers: int = 0, device: str = "auto", draws: int | None = None
                    ) -> tuple[DataLoader, DataLoader]:
    """Training (shuffled like make_loader's, `draws` an epoch if given) and validation loaders over cached features
    of un-augmented images."""
    if getattr(train, "augment", None):
        raise ValueError("cached features are computed once: the training dataset must not augment (augment=False)")
    loaders = []
    for dataset, shuffle in ((train, True), (valid, False)):
        pooled = pooled_features(net, dataset, batch_size=batch_size, device=device, num_workers=num_workers)
        loaders.append(make_loader(FeatureDataset(dataset, pooled), batch_size=batch_size, shuffle=shuffle,
                                   seed=seed, device=device, draws=draws if shuffle else None))
    return loaders[0], loaders[1]
