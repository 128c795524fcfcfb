"""CAM / Grad-CAM: a tiny CNN trained on bright and dark squares must point at them; torchvision backbones run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam.utils.image import scale_cam_image
from torch import nn

from cxrcore import cam
from cxrcore.models import build_model, target_layer

SIZE, SIDE = 32, 8


def square_images(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Noise images; finding 0 = a bright square, finding 1 = a dark square, each present with p=1/2, never overlapping.

    Returns x (n, 1, H, W), y (n, 2), masks (n, 2, H, W) of each square (empty where absent).
    """
    x = rng.normal(0.0, 0.3, size=(n, 1, SIZE, SIZE)).astype(np.float32)
    y = (rng.random((n, 2)) < 0.5).astype(np.float32)
    masks = np.zeros((n, 2, SIZE, SIZE), dtype=bool)
    for i in range(n):
        row = rng.integers(0, SIZE - SIDE + 1)
        cols = (rng.integers(0, SIZE // 2 - SIDE + 1), rng.integers(SIZE // 2, SIZE - SIDE + 1))
        left_is_bright = rng.random() < 0.5
        for k, value in ((0, 2.0), (1, -2.0)):
            if y[i, k]:
                col = cols[0] if (k == 0) == left_is_bright else cols[1]
                masks[i, k, row : row + SIDE, col : col + SIDE] = True
                x[i, 0][masks[i, k]] = value
    return torch.from_numpy(x), torch.from_numpy(y), masks


class TinyCNN(nn.Module):
    """Two convs, global average pooling, one linear layer: the architecture CAM assumes."""

    def __init__(self, meta_features: int = 0) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                      nn.ReLU())
        self.meta = nn.Linear(meta_features, 2) if meta_features else None
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.fc(self.features(x).mean(dim=(2, 3)))  # (B, 2)
        return logits if self.meta is None else logits + self.meta(features)


@pytest.fixture(scope="module")
def trained() -> tuple[TinyCNN, torch.Tensor, np.ndarray]:
    """TinyCNN after 150 Adam steps on fresh square images; returns it with held-out images and masks."""
    rng = np.random.default_rng(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        x, y, _ = square_images(32, rng)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y, masks = square_images(64, rng)
    with torch.no_grad():
        accuracy = ((model(x) > 0).float() == y).float().mean().item()
    assert accuracy > 0.9, f"the tiny CNN did not learn the squares (accuracy {accuracy:.2f})"
    return model.eval(), x, masks


def maps_of(method: str, model: nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(B, K, H, W) maps by CAM or a Grad-CAM variant."""
    if method == "cam":
        return cam.class_activation_map(model, x, classes)
    return cam.gradcam(model, x, classes, method=method)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_maps_point_at_the_square_of_their_finding(trained, method):
    model, x, masks = trained
    maps = maps_of(method, model, x, [0, 1])
    assert maps.shape == (len(x), 2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1
    area_share = SIDE * SIDE / SIZE**2
    for k in (0, 1):
        present = np.flatnonzero(masks[:, k].any(axis=(1, 2)))
        energy = np.array([cam.energy_inside(maps[i, k], masks[i, k]) for i in present])
        hits = np.array([cam.pointing_game(maps[i, k], masks[i, k]) for i in present])
        assert np.nanmean(energy) > 3 * area_share, f"finding {k}: energy {np.nanmean(energy):.2f}"
        assert hits.mean() > 0.8, f"finding {k}: pointing game {hits.mean():.2f}"
        # The map of finding k must not point at the other finding's square when both are present.
        both = np.flatnonzero(masks[:, 0].any(axis=(1, 2)) & masks[:, 1].any(axis=(1, 2)))
        other = np.array([cam.energy_inside(maps[i, k], masks[i, 1 - k]) for i in both])
        own = np.array([cam.energy_inside(maps[i, k], masks[i, k]) for i in both])
        assert np.nanmean(own) > 2 * np.nanmean(other)


def test_top_class_gradcam_maps_each_images_highest_finding(trained):
    model, x, _ = trained
    maps, top = cam.top_class_gradcam(model, x[:6])
    with torch.no_grad():
        assert top.tolist() == model(x[:6]).argmax(dim=1).tolist()
    assert maps.shape == (6, SIZE, SIZE)
    for i, k in enumerate(top):  # the same map as asking for that finding directly
        np.testing.assert_allclose(maps[i], cam.gradcam(model, x[i : i + 1], int(k))[0], atol=1e-6)


def test_single_class_index_gives_one_map_per_image(trained):
    model, x, _ = trained
    one = cam.gradcam(model, x[:3], 1)
    assert one.shape == (3, SIZE, SIZE)
    assert np.allclose(one, cam.gradcam(model, x[:3], [1])[:, 0])


def test_raw_cam_averages_to_the_logit(trained):
    model, x, _ = trained
    raw = cam.class_activation_map(model, x[:4], [0, 1], normalize=False, upsample=False)  # (B, 2, h, w)
    with torch.no_grad():
        logits = model(x[:4]).numpy()
    assert np.allclose(raw.mean(axis=(2, 3)) + model.fc.bias.detach().numpy(), logits, atol=1e-5)


def one_channel(arch: str, seed: int = 0) -> nn.Module:
    """A torchvision model with seeded random weights, 4 outputs, its first conv replaced for 1-channel input."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(torchvision.models, arch)(weights=None, num_classes=4)
        if arch == "densenet121":
            model.features.conv0 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        elif arch.startswith("resnet"):
            model.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        else:
            model.features[0] = nn.Conv2d(1, 64, 3, padding=1)
    return model


@pytest.fixture(scope="module")
def densenet() -> nn.Module:
    """DenseNet-121, 1 channel, random weights: shared because building it is the slow part."""
    return one_channel("densenet121")


def test_cam_on_densenet_applies_the_functional_relu(densenet):
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    raw = cam.class_activation_map(densenet.eval(), x, [0, 2], normalize=False, upsample=False)
    with torch.no_grad():
        logits = densenet(x).numpy()[:, [0, 2]]
    bias = densenet.classifier.bias.detach().numpy()[[0, 2]]
    assert np.allclose(raw.mean(axis=(2, 3)) + bias, logits, atol=1e-4)


def test_cam_warns_when_the_feature_layer_is_not_the_pooled_one():
    model = one_channel("resnet18").eval()
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="feature_layer"):
        cam.class_activation_map(model, x, 0, feature_layer=model.layer4[0])  # 512 channels, but not the pooled ones


def test_gradcam_on_densenet_matches_a_hand_written_gradcam_of_norm5(densenet):
    # The in-place F.relu after norm5 would corrupt the activation the package saves (see cxrcore.cam).
    model = densenet.eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    got = cam.gradcam(model, x, [0, 1, 2, 3])  # (B, 4, H, W)
    feats = model.features(x)  # (B, 1024, 2, 2), before the ReLU
    logits = model.classifier(torch.relu(feats).mean(dim=(2, 3)))
    for k in range(4):
        (grads,) = torch.autograd.grad(logits[:, k].sum(), feats, retain_graph=True)
        weighted = (grads.mean(dim=(2, 3))[:, :, None, None] * feats).sum(dim=1)
        expected = scale_cam_image(torch.relu(weighted).detach().numpy(), (64, 64))
        assert np.abs(got[:, k] - expected).max() < 1e-4, f"class {k}"
    assert (got.max(axis=(2, 3)) > 0).sum() >= 2  # random weights: some classes have no positive evidence


@pytest.mark.parametrize(
    ("arch", "layer", "methods"),
    [("densenet121", lambda m: m.features.norm5, ("gradcam", "gradcam++")),
     ("resnet50", lambda m: m.layer4[-1], ("gradcam",)),
     ("vgg16", lambda m: m.features[29], ("gradcam",))],
)
def test_gradcam_on_torchvision_backbones_with_one_channel_and_several_targets(densenet, arch, layer, methods):
    model = densenet if arch == "densenet121" else one_channel(arch)
    model.train()
    assert cam.default_target_layer(model) is layer(model)
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    for method in methods:
        maps = cam.gradcam(model, x, [0, 3], method=method)
        assert maps.shape == (2, 2, 64, 64) and np.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
        assert not np.allclose(maps[:, 0], maps[:, 1])  # different findings, different maps
    assert model.training, "the caller's train mode must be restored"
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_gradcam_with_frozen_backbone():
    model = one_channel("resnet18").eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    trainable = cam.gradcam(model, x, [1, 2])
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.fc.weight.requires_grad_(True)
    frozen = cam.gradcam(model, x, [1, 2])
    assert trainable.max() > 0 and np.allclose(frozen, trainable, atol=1e-6)  # freezing does not change the map
    assert [p.requires_grad for p in model.parameters()].count(True) == 1  # freezing left as it was


def test_gradcam_with_non_image_features():
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = TinyCNN(meta_features=3)
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    features = torch.tensor([[0.5, 1.0, 0.0], [0.7, 0.0, 1.0]])
    maps = cam.gradcam(model, x, [0, 1], features=features)
    assert maps.shape == (2, 2, SIZE, SIZE)
    # The features add a constant per image to the logit: the Grad-CAM map is the image-only one.
    model.meta = None
    assert np.allclose(maps, cam.gradcam(model, x, [0, 1]), atol=1e-6)


def test_gradcam_refuses_probabilities_and_bad_indices(trained):
    model, x, _ = trained
    with pytest.raises(ValueError, match="logits"):
        cam.gradcam(nn.Sequential(model, nn.Sigmoid()), x[:1], 0)
    with pytest.raises(ValueError, match="out of range"):
        cam.gradcam(model, x[:1], 5)
    with pytest.raises(ValueError, match="out of range"):
        cam.class_activation_map(model, x[:1], 5)
    with pytest.raises(ValueError, match="method"):
        cam.gradcam(model, x[:1], 0, method="scorecam")


def test_overlay_shapes_and_dtypes():
    heat = np.zeros((32, 32), dtype=np.float32)
    heat[4:8, 20:24] = 1.0
    grey = np.random.default_rng(0).normal(size=(32, 32))  # a normalized image, not in [0, 1]
    for image in (grey, grey[None], torch.from_numpy(grey)[None].repeat(3, 1, 1), np.stack([grey] * 3, -1)):
        out = cam.overlay(image, heat)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    out = cam.overlay(grey, heat, alpha=1.0)
    assert out[5, 21, 0] > out[5, 21, 2] and out[20, 5, 2] > out[20, 5, 0]  # jet: hot red, cold blue
    assert cam.overlay(np.zeros((64, 64)), heat).shape == (64, 64, 3)  # map resized to the image
    with pytest.raises(ValueError, match="colormap"):
        cam.overlay(grey, heat, cmap="nope")


def test_energy_and_pointing_game_by_hand():
    heat = np.zeros((4, 4))
    heat[0, 0], heat[3, 3] = 3.0, 1.0
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    assert cam.energy_inside(heat, mask) == pytest.approx(0.75)
    assert cam.pointing_game(heat, mask) and not cam.pointing_game(heat, ~mask)
    assert np.isnan(cam.energy_inside(np.zeros((4, 4)), mask))
    assert not cam.pointing_game(np.ones((4, 4)), mask)
    with pytest.raises(ValueError, match="shape"):
        cam.energy_inside(heat, mask[:2])


@pytest.mark.parametrize("arch", ["densenet121", "resnet18", "vgg16"])
def test_cam_and_gradcam_on_the_book_models(arch):
    model = build_model(arch, 3, channels=1, seed=0).eval()
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    assert cam.default_target_layer(model) is target_layer(model)
    raw = cam.class_activation_map(model, x, [0, 2], normalize=False, upsample=False)
    with torch.no_grad():
        logits = model(x).numpy()[:, [0, 2]]
    assert np.allclose(raw.mean(axis=(2, 3)) + model.head.bias.detach().numpy()[[0, 2]], logits, atol=1e-4)
    maps = cam.gradcam(model, x, [0, 2])
    assert maps.shape == (2, 2, 64, 64) and np.isfinite(maps).all() and maps.max() > 0


def test_cam_and_gradcam_on_meta_and_three_class_heads():
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(6))
    features = torch.tensor([[0.5, 1.0, 0.0], [0.7, 0.0, 1.0]])
    meta = build_model("resnet18", 3, channels=1, meta_features=3, seed=0).eval()
    plain_part = cam.class_activation_map(meta, x, 1, features=features, normalize=False, upsample=False)
    with torch.no_grad():
        logits = meta(x, features)[:, 1].numpy()
    meta_part = (features @ meta.head.weight[1, 512:].detach()).numpy() + meta.head.bias[1].item()
    assert np.allclose(plain_part.mean(axis=(1, 2)) + meta_part, logits, atol=1e-4)
    assert cam.gradcam(meta, x, [0, 1], features=features).shape == (2, 2, 64, 64)
    three = build_model("resnet18", 3, channels=1, head="multiclass3", seed=0).eval()
    raw = cam.class_activation_map(three, x, 2, normalize=False, upsample=False)
    with torch.no_grad():
        out = three(x)[:, 2]  # (B, 3)
    bias = three.head.bias.view(3, 3)  # (finding, [negative, positive, uncertain])
    bias_gap = (bias[2, 1] - bias[2, 0]).item()
    assert np.allclose(raw.mean(axis=(1, 2)) + bias_gap, (out[:, 1] - out[:, 0]).numpy(), atol=1e-4)
    assert cam.gradcam(three, x, 2).shape == (2, 64, 64)
