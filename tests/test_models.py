"""Model zoo: output shapes of every option, ResNet-38's blocks, weights from ImageNet files and from other runs."""
from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from torch import nn

from cxrcore.cam import feature_grid
from cxrcore.models import (
    backbone_and_head,
    build_model,
    classifier_weights,
    imagenet_weights_file,
    load_model,
    probabilities,
    save_model,
    target_layer,
)

K = 5


def _output(model: nn.Module, channels: int, size: int = 64, batch: int = 2) -> torch.Tensor:
    x = torch.randn(batch, channels, size, size)
    model.eval()
    with torch.no_grad():
        return model(x, torch.rand(batch, 3)) if model.meta_features else model(x)


def _expected_shape(head: str, batch: int = 2) -> tuple[int, ...]:
    return (batch, K, 3) if head == "multiclass3" else (batch, K)


@pytest.mark.parametrize("channels,large,meta,head",
                         list(itertools.product((1, 3), (False, True), (0, 3), ("linear", "paper003", "multiclass3"))))
def test_every_option_shape_resnet18(channels, large, meta, head):
    model = build_model("resnet18", K, channels=channels, large=large, meta_features=meta, head=head, seed=0)
    assert _output(model, channels).shape == _expected_shape(head)


# the full grid runs on resnet18 above; each paper architecture takes every value of every option in three builds
COVERING = [(1, False, 0, "linear"), (3, True, 3, "multiclass3"), (1, True, 0, "paper003")]


@pytest.mark.parametrize("arch", ["densenet121", "resnet38", "resnet50"])
@pytest.mark.parametrize("channels,large,meta,head", COVERING)
def test_paper_architectures_shapes(arch, channels, large, meta, head):
    model = build_model(arch, K, channels=channels, large=large, meta_features=meta, head=head, seed=0)
    assert _output(model, channels).shape == _expected_shape(head)


@pytest.mark.parametrize("arch", ["resnet101", "vgg16"])
def test_big_architectures_shape_once(arch):
    model = build_model(arch, K, channels=1, large=True, meta_features=3, head="multiclass3")
    assert _output(model, 1).shape == _expected_shape("multiclass3")


def _weighted_layers(model: nn.Module) -> int:
    """Conv layers on the main path (projection shortcuts excluded) plus dense layers, as ResNet depth counts."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in name]
    return len(convs) + sum(isinstance(m, nn.Linear) for m in model.modules())


@pytest.mark.parametrize("arch,blocks,depth", [("resnet38", [2, 3, 4, 3], 38), ("resnet50", [3, 4, 6, 3], 50),
                                                ("resnet101", [3, 4, 23, 3], 101)])
def test_resnet_depths(arch, blocks, depth):
    model = build_model(arch, K)
    assert [len(getattr(model.backbone, f"layer{i}")) for i in range(1, 5)] == blocks
    assert _weighted_layers(model) == depth


def test_bottleneck_resnets_start_each_residual_branch_at_zero():
    deep, shallow = build_model("resnet50", K), build_model("resnet18", K)
    last_norms = [block.bn3.weight for layer in range(1, 5) for block in getattr(deep.backbone, f"layer{layer}")]
    assert len(last_norms) == 16 and all(torch.count_nonzero(w) == 0 for w in last_norms)
    assert all(torch.all(block.bn2.weight == 1) for block in shallow.backbone.layer1)  # torchvision's default


def _feature_map_side(model: nn.Module, size: int) -> int:
    captured = {}

    def keep_shape(module, inputs, output):
        captured["shape"] = output.shape

    handle = target_layer(model).register_forward_hook(keep_shape)
    _output(model, model.config["channels"], size)
    handle.remove()
    return captured["shape"][-1]


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "vgg16"])
def test_large_adds_one_max_pool(arch):
    small = build_model(arch, K, channels=1)
    large = build_model(arch, K, channels=1, large=True)
    assert _feature_map_side(small, 64) == 2 * _feature_map_side(large, 64)
    # "-large" at twice the input side gives the same feature-map size as the small model (paper 001)
    assert _feature_map_side(large, 128) == _feature_map_side(small, 64)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "densenet121", "vgg16"])
@pytest.mark.parametrize("large", [False, True])
def test_feature_grid_is_the_cam_layers_side(arch, large):
    model = build_model(arch, K, channels=1, large=large)
    assert [_feature_map_side(model, size) for size in (128, 192)] == [feature_grid(size, large=large)
                                                                      for size in (128, 192)]


def test_meta_features_are_used_and_required():
    model = build_model("resnet18", K, meta_features=3, seed=0).eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="features"):
        model(x)
    with torch.no_grad():
        a, b = model(x, torch.zeros(2, 3)), model(x, torch.ones(2, 3))
    assert not torch.allclose(a, b)
    assert model.head.in_features == model.feature_dim + 3


def test_seed_gives_identical_initialisation_without_touching_global_rng():
    state = torch.get_rng_state()
    a, b = build_model("resnet18", K, seed=3), build_model("resnet18", K, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_freeze_backbone_trains_only_the_head():
    model = build_model("resnet18", K, freeze_backbone=True, seed=0)
    backbone, head = backbone_and_head(model)
    assert all(not p.requires_grad for p in backbone.parameters())
    assert all(p.requires_grad for p in head.parameters())
    model.train()
    assert not backbone.training and head.training  # BatchNorm statistics of a frozen backbone stay fixed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.weight", "head.bias"}


def test_cam_hooks():
    linear = build_model("densenet121", K, meta_features=3)
    assert isinstance(target_layer(linear), nn.ReLU)
    assert classifier_weights(linear).shape == (K, 1024)  # non-image feature columns dropped
    multi = build_model("resnet18", K, head="multiclass3")
    assert target_layer(multi) is multi.backbone.layer4
    assert classifier_weights(multi).shape == (K, 3, 512)
    with pytest.raises(ValueError, match="Grad-CAM"):
        classifier_weights(build_model("resnet18", K, head="paper003"))


def test_probabilities_of_three_class_logits_ignore_uncertain():
    logits = torch.tensor([[[0.0, 0.0, 9.0], [2.0, 0.0, -9.0]]])  # (B=1, K=2, 3)
    probs = probabilities(logits)
    torch.testing.assert_close(probs, torch.tensor([[0.5, 1 / (1 + torch.e**2)]]))


def test_paper003_head_size_matches_the_paper():
    model = build_model("densenet121", 14, head="paper003", freeze_backbone=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 1_063_950  # paper 003, section 5.1


def test_imagenet_weights_absent_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"resnet50-0676ba61\.pth.*https://download\.pytorch\.org"):
        build_model("resnet50", K, weights="imagenet")
    assert not (tmp_path / "hub").exists()  # nothing was downloaded or created
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("resnet38", K, weights="imagenet")


def _place_imagenet_file(arch: str, reference: nn.Module, rename=None) -> None:
    path, _ = imagenet_weights_file(arch)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = reference.state_dict()
    torch.save({rename(k) if rename else k: v for k, v in state.items()}, path)


def test_imagenet_weights_load_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)  # stands in for the real file: same names and shapes
    _place_imagenet_file("resnet18", reference)
    model = build_model("resnet18", K, weights="imagenet")
    assert torch.equal(model.backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    gray = build_model("resnet18", K, channels=1, weights="imagenet")
    torch.testing.assert_close(gray.backbone.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert "summed" in str(gray.weights_report)


def test_imagenet_densenet_old_key_names(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.densenet121(weights=None)
    # the published file still uses the old names "norm.1", "conv.2" inside dense layers
    old = {"norm1": "norm.1", "conv1": "conv.1", "norm2": "norm.2", "conv2": "conv.2"}

    def to_old(key: str) -> str:
        parts = key.split(".")
        return ".".join(old.get(p, p) if "denselayer" in key else p for p in parts)

    _place_imagenet_file("densenet121", reference, rename=to_old)
    model = build_model("densenet121", K, large=True, weights="imagenet")
    layer = model.backbone.features.denseblock2.denselayer3
    assert torch.equal(layer.conv2.weight, reference.features.denseblock2.denselayer3.conv2.weight)


def test_weights_from_another_run(tmp_path):
    source = build_model("resnet18", 3, seed=1)
    path = save_model(source, tmp_path / "model.pt")
    same = build_model("resnet18", 3, weights=path, seed=2)
    for (name, a), b in zip(source.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other_head = build_model("resnet18", 7, weights=path, seed=2)
    assert torch.equal(other_head.backbone.conv1.weight, source.backbone.conv1.weight)
    assert other_head.weights_report.reinitialized == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="backbone does not match"):
        build_model("resnet18", 3, channels=1, weights=path)
    assert torch.equal(load_model(path).head.weight, source.head.weight)
    torch.load(path, weights_only=True)
