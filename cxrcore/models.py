"""The papers' CNNs: torchvision backbones with a global-average-pooled head, optional metadata fusion.

Every model is a `CXRNet`: `backbone` (image -> feature maps), global average pooling, optional
concatenation of non-image features (paper 001's "-meta"), then `head`:
- "linear": one dense layer -> logits for a sigmoid per finding (papers 000, 001);
- "paper003": dense + ReLU (1024 units) then the output layer (paper 003) -> logits for sigmoids;
- "multiclass3": 3 logits per finding (negative, positive, uncertain) for a softmax (paper 002) -> (B, K, 3).
"""
from __future__ import annotations

import logging
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

from cxrcore.atomic import atomic_write

log = logging.getLogger(__name__)

ARCHS = ("densenet121", "resnet18", "resnet38", "resnet50", "resnet101", "vgg16", "metadata")
METADATA_HIDDEN = 32  # paper 001's "very simple MLP" on age, sex and view position (its size is not given)
HEADS = ("linear", "paper003", "multiclass3")
# Bottleneck blocks per stage (conv2_x..conv5_x). ResNet-38 (paper 001, section 2.2): conv2_x, conv3_x, conv4_x
# reduced to 2, 2, 3 blocks *after* each stage's down-sampling block conv3_0 / conv4_0 (Table 1 counts those
# separately), conv5 unchanged -> 2, 3, 4, 3 blocks = 12 x 3 conv layers + conv1 + dense = 38 layers.
RESNET_LAYERS = {"resnet18": [2, 2, 2, 2], "resnet38": [2, 3, 4, 3], "resnet50": [3, 4, 6, 3],
                 "resnet101": [3, 4, 23, 3]}
IMAGENET_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
    "densenet121": torchvision.models.DenseNet121_Weights.IMAGENET1K_V1,
    "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
}
PAPER003_HIDDEN = 1024  # paper 003: 1,063,950 trainable head parameters on DenseNet-121 = 1024 hidden units


@dataclass
class WeightsReport:
    """What `build_model` initialised from where: loaded tensor names and re-initialised ones."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    note: str = ""

    def __str__(self) -> str:
        text = f"weights from {self.source}: {len(self.loaded)} tensors loaded"
        if self.reinitialized:
            text += f", {len(self.reinitialized)} re-initialised ({', '.join(self.reinitialized[:4])}...)"
        return text + (f"; {self.note}" if self.note else "")


class CXRNet(nn.Module):
    """Backbone -> global average pooling -> [concat non-image features] -> head."""

    def __init__(self, backbone: nn.Sequential, feature_dim: int, num_classes: int, *, head: str = "linear",
                 meta_features: int = 0, head_hidden: int = PAPER003_HIDDEN, config: dict | None = None):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r}: expected one of {HEADS}")
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.meta_features = meta_features
        self.head_kind = head
        self.frozen_backbone = False
        self.config = dict(config or {})
        self.weights_report: WeightsReport | None = None
        in_features = feature_dim + meta_features
        if head == "linear":
            self.head = nn.Linear(in_features, num_classes)
        elif head == "paper003":
            self.head = nn.Sequential(nn.Linear(in_features, head_hidden), nn.ReLU(),
                                      nn.Linear(head_hidden, num_classes))
        else:
            self.head = nn.Linear(in_features, num_classes * 3)

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K), or (B, K, 3) for the multiclass3 head; `features` (B, meta_features) for -meta models."""
        return self.classify(self.pooled(x), features)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled backbone features (B, C) of images (B, channels, H, W)."""
        return torch.flatten(self.pool(self.backbone(x)), 1)

    def classify(self, pooled: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The head's logits from pooled features (B, C) and, for -meta models, non-image features (B, M)."""
        if self.meta_features:
            if features is None:
                raise ValueError(f"this model fuses {self.meta_features} non-image features: call model(x, features)")
            pooled = torch.cat([pooled, features.to(pooled.dtype)], dim=1)  # (B, C + M)
        logits = self.head(pooled)
        if self.head_kind == "multiclass3":
            return logits.view(-1, self.num_classes, 3)  # (B, K, [negative, positive, uncertain])
        return logits

    def train(self, mode: bool = True) -> CXRNet:
        """Like nn.Module.train, but a frozen backbone stays in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self


class MetadataNet(nn.Module):
    """Paper 001's baseline without the image: an MLP on the non-image features (B, M) -> logits (B, K).

    It takes (and ignores) the images like every model of the book, so the same runner, loop and metrics serve it;
    what it scores says how much of a finding age, sex and projection alone give away."""

    def __init__(self, num_classes: int, meta_features: int, hidden: int = METADATA_HIDDEN,
                 config: dict | None = None) -> None:
        super().__init__()
        if meta_features < 1:
            raise ValueError("the metadata-only model needs non-image features (meta_features >= 1)")
        self.num_classes = num_classes
        self.meta_features = meta_features
        self.head_kind = "linear"
        self.frozen_backbone = False
        self.config = dict(config or {})
        self.weights_report: WeightsReport | None = None
        self.head = nn.Sequential(nn.Linear(meta_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, K) from the non-image features (B, M); the images x are not looked at."""
        if features is None:
            raise ValueError("the metadata-only model reads non-image features only: call model(x, features)")
        return self.head(features.float())


def _first_conv(in_channels: int, conv: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)


def _extra_pool() -> nn.MaxPool2d:
    # paper 001 "-large": same parameters as pooling1 (3x3, stride 2, padding)
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def _resnet_backbone(arch: str, channels: int, large: bool) -> tuple[nn.Sequential, int]:
    block = tv_resnet.BasicBlock if arch == "resnet18" else tv_resnet.Bottleneck
    # bottleneck ResNets start each residual branch at zero (Goyal et al. 2017): from random weights the deep net
    # then trains like a shallow one at first (quick ResNet-50 source: test mean AUROC 0.657 -> 0.728 in the same
    # steps); on ResNet-18's basic blocks it slowed early learning, so they keep torchvision's default
    net = tv_resnet.ResNet(block, RESNET_LAYERS[arch], zero_init_residual=block is tv_resnet.Bottleneck)
    if channels != 3:
        net.conv1 = _first_conv(channels, net.conv1)
    parts = [("conv1", net.conv1), ("bn1", net.bn1), ("relu", net.relu), ("maxpool", net.maxpool),
             ("layer1", net.layer1)]
    if large:
        parts.append(("pool_large", _extra_pool()))
    parts += [("layer2", net.layer2), ("layer3", net.layer3), ("layer4", net.layer4)]
    return nn.Sequential(OrderedDict(parts)), net.fc.in_features


def _densenet_backbone(channels: int, large: bool) -> tuple[nn.Sequential, int]:
    net = torchvision.models.densenet121(weights=None)
    features = net.features
    if channels != 3:
        features.conv0 = _first_conv(channels, features.conv0)
    if large:
        named = list(features.named_children())
        at = [name for name, _ in named].index("denseblock1") + 1
        features = nn.Sequential(OrderedDict(named[:at] + [("pool_large", _extra_pool())] + named[at:]))
    # torchvision applies ReLU after norm5 in forward(); a module here makes it the CAM target layer
    return nn.Sequential(OrderedDict([("features", features), ("relu", nn.ReLU())])), net.classifier.in_features


def _vgg_backbone(channels: int, large: bool) -> tuple[nn.Sequential, int]:
    features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False)  # VGG-16 conv part (Keras include_top=False)
    for module in features.modules():  # torchvision's VGG initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    named = list(features.named_children())
    if channels != 3:
        conv = _first_conv(channels, named[0][1])
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        named[0] = (named[0][0], conv)
    if large:
        first_pool = next(i for i, (_, m) in enumerate(named) if isinstance(m, nn.MaxPool2d)) + 1
        named = named[:first_pool] + [("pool_large", _extra_pool())] + named[first_pool:]
    return nn.Sequential(OrderedDict(named)), 512


def _backbone(arch: str, channels: int, large: bool) -> tuple[nn.Sequential, int]:
    if arch in RESNET_LAYERS:
        return _resnet_backbone(arch, channels, large)
    if arch == "densenet121":
        return _densenet_backbone(channels, large)
    if arch == "vgg16":
        return _vgg_backbone(channels, large)
    raise ValueError(f"arch={arch!r}: expected one of {ARCHS}")


def build_model(arch: str, num_classes: int, *, channels: int = 3, large: bool = False, meta_features: int = 0,
                head: str = "linear", weights: str | Path | None = None, freeze_backbone: bool = False,
                head_hidden: int = PAPER003_HIDDEN, seed: int | None = None) -> CXRNet | MetadataNet:
    """A CXRNet (or, for arch "metadata", a MetadataNet); `weights` None (random), "imagenet" (local torch hub
    cache only) or a checkpoint path."""
    arch = arch.lower()
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: expected 1 or 3")
    config = {"arch": arch, "num_classes": num_classes, "channels": channels, "large": large,
              "meta_features": meta_features, "head": head, "head_hidden": head_hidden}
    if arch == "metadata":
        if head != "linear" or weights is not None or freeze_backbone or large:
            raise ValueError("arch='metadata' (an MLP on age, sex and projection) has no backbone: it takes "
                             "head='linear', no weights, no frozen backbone and no large input")
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return MetadataNet(num_classes, meta_features, config=config)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
        if seed is not None:
            torch.manual_seed(seed)
        backbone, feature_dim = _backbone(arch, channels, large)
        model = CXRNet(backbone, feature_dim, num_classes, head=head, meta_features=meta_features,
                       head_hidden=head_hidden, config=config)
    if weights == "imagenet":
        model.weights_report = load_imagenet_backbone(model)
    elif weights is not None:
        model.weights_report = load_checkpoint_weights(model, weights)
    if model.weights_report is not None:
        log.info("%s", model.weights_report)
    if freeze_backbone:
        set_backbone_frozen(model, True)
    return model


def set_backbone_frozen(model: CXRNet, frozen: bool = True) -> None:
    """Freeze (off-the-shelf feature extractor: only the head trains) or unfreeze the backbone."""
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)
    model.frozen_backbone = frozen
    model.train(model.training)


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The feature extractor and the classifier of a CXRNet (unwrapping DDP / torch.compile)."""
    model = unwrap(model)
    return model.backbone, model.head


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def target_layer(model: nn.Module) -> nn.Module:
    """The module whose output (B, C, h, w) the global average pooling reads: the CAM / Grad-CAM target."""
    return unwrap(model).backbone[-1]  # resnet: layer4; densenet: ReLU after norm5; vgg16: last max-pool


def classifier_weights(model: nn.Module) -> torch.Tensor:
    """Image part of the output layer's weights for CAM: (K, C) for "linear", (K, 3, C) for "multiclass3"."""
    model = unwrap(model)
    if model.head_kind == "paper003":
        raise ValueError("the paper003 head (dense + ReLU + dense) is not linear in the features: use Grad-CAM")
    weight = model.head.weight[:, : model.feature_dim].detach()  # drop the columns of non-image features
    if model.head_kind == "multiclass3":
        return weight.view(model.num_classes, 3, model.feature_dim)
    return weight


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Per-finding positive probability (B, K): sigmoid, or for (B, K, 3) softmax over [negative, positive]."""
    if logits.ndim == 3:  # paper 002: uncertain masked out, softmax over the first two outputs
        return torch.softmax(logits[..., :2].float(), dim=-1)[..., 1]
    return torch.sigmoid(logits.float())


def imagenet_weights_file(arch: str) -> tuple[Path, str]:
    """Where torchvision's ImageNet weights for `arch` must lie (torch hub cache) and their download URL."""
    if arch not in IMAGENET_WEIGHTS:
        raise ValueError(f"no ImageNet weights exist for {arch!r} (paper 001 trains it from scratch); "
                         f"ImageNet weights exist for {sorted(IMAGENET_WEIGHTS)}")
    url = IMAGENET_WEIGHTS[arch].url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


# torchvision's old DenseNet checkpoints name layers "norm.1"; the modules are now "norm1" (see torchvision.densenet)
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _imagenet_state_to_backbone(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision's ImageNet state dict onto our backbone's names (classifier dropped)."""
    if arch == "densenet121":
        state = {_DENSENET_OLD_KEY.sub(r"\1\2", key): value for key, value in state.items()}
        return {key: value for key, value in state.items() if key.startswith("features.")}
    if arch == "vgg16":
        return {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    return {key: value for key, value in state.items() if not key.startswith("fc.")}


def load_imagenet_backbone(model: CXRNet) -> WeightsReport:
    """Load torchvision's ImageNet weights into the backbone from the local cache; never downloads."""
    arch = model.config["arch"]
    path, url = imagenet_weights_file(arch)
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {arch} are not in the local torch hub cache: expected {path}. "
            f"This project never downloads at run time: fetch {url} on a machine with internet access and copy "
            f"it to {path} (or set TORCH_HOME so that {Path('$TORCH_HOME') / 'hub/checkpoints' / path.name} exists); "
            f"`python -m cxrcore weights fetch` (make weights) does both on a machine that is online.")
    loaded = load_checkpoint_file(
        path, pointed_by=f"weights='imagenet' reads {arch}'s ImageNet weights from the torch hub cache",
        fix=f"move it away (a download or copy that did not finish?) and run `python -m cxrcore weights fetch`, "
            f"or copy {url} to {path} again")
    state = _imagenet_state_to_backbone(arch, loaded)
    note = ""
    first_conv = next(key for key in state if key.endswith("weight") and state[key].ndim == 4)
    if model.config["channels"] == 1:  # grey input: summing the RGB kernels == feeding the grey image 3 times
        state[first_conv] = state[first_conv].sum(dim=1, keepdim=True)
        note = f"{first_conv} summed over RGB for 1 channel"
    model.backbone.load_state_dict(state, strict=True)
    return WeightsReport(source=f"imagenet ({path})", loaded=sorted(state),
                         reinitialized=[f"head.{key}" for key in model.head.state_dict()], note=note)


_CHECKPOINT_FIX = ("point the config's `weights` at a file written by torch.save: a run's model.pt, a training "
                   "checkpoint or a state dict (or copy the file again if a copy was interrupted)")


def _what_is_wrong(path: Path, err: Exception) -> str:
    """Why torch.load failed, in words: empty, truncated or corrupt, or pickled objects beyond tensors."""
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err):
        # a whole pickled model (torch.save(model)): loading it would run arbitrary code, so it is refused
        return "it holds pickled Python objects besides tensors (torch.save(model)?); save model.state_dict() instead"
    with path.open("rb") as stream:
        zipped = stream.read(2) == b"PK"  # torch.save writes a zip archive since PyTorch 1.6
    return ("it is truncated or corrupt (a zip archive that cannot be read)" if zipped
            else "it is corrupt or not a PyTorch file (neither a torch.save zip archive nor a legacy pickle)")


def load_checkpoint_file(path: str | Path, *, pointed_by: str, fix: str = _CHECKPOINT_FIX,
                         map_location: str | torch.device = "cpu") -> object:
    """torch.load(weights_only=True); a file it cannot read is a ValueError naming it and what pointed to it."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # torch.load raises EOFError, UnpicklingError, RuntimeError, KeyError, OSError...
        # `from None`: PyTorch's own message advises weights_only=False, which would run the file's code
        raise ValueError(f"{path} is not a valid PyTorch checkpoint: {_what_is_wrong(path, err)}. "
                         f"It was read because {pointed_by}. What to do: {fix}.") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    pointed_by = f"the config's `weights` value (build_model(weights=...)) is {str(path)!r}"
    checkpoint = load_checkpoint_file(path, pointed_by=pointed_by)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]  # a training checkpoint or a saved model: {"model": state_dict, ...}
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: not a model checkpoint (expected a state dict or a dict with a 'model' state "
                         f"dict); {pointed_by}: {_CHECKPOINT_FIX}")
    return {key.removeprefix("module.").removeprefix("_orig_mod."): value for key, value in checkpoint.items()}


def load_checkpoint_weights(model: CXRNet, path: str | Path) -> WeightsReport:
    """Initialise from another run's checkpoint: the backbone must match; a head of another shape is re-initialised."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights checkpoint {path} does not exist")
    state = _read_state_dict(path)
    own = model.state_dict()
    backbone_keys = [key for key in own if key.startswith("backbone.")]
    mismatched = [key if key not in state else f"{key} {tuple(state[key].shape)} != {tuple(own[key].shape)}"
                  for key in backbone_keys if key not in state or state[key].shape != own[key].shape]
    if mismatched:
        raise ValueError(f"{path}: the backbone does not match this {model.config['arch']} model "
                         f"({len(mismatched)} of {len(backbone_keys)} tensors differ, e.g. {mismatched[:3]})")
    head_keys = [key for key in own if key.startswith("head.")]
    head_fits = all(key in state and state[key].shape == own[key].shape for key in head_keys)
    loaded = backbone_keys + (head_keys if head_fits else [])
    model.load_state_dict({**own, **{key: state[key] for key in loaded}}, strict=True)
    return WeightsReport(source=str(path), loaded=loaded, reinitialized=[] if head_fits else head_keys,
                         note="" if head_fits else "head shape differs: re-initialised")


def atomic_save(obj: object, path: str | Path) -> Path:
    """torch.save through a temporary file next to `path`, then os.replace: never a half-written checkpoint."""
    return atomic_write(path, lambda stream: torch.save(obj, stream), binary=True)


def save_model(model: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Atomically save {"model": state_dict, "model_config": ..., **extra} (loadable with weights_only=True)."""
    plain = unwrap(model)
    payload = {"model": plain.state_dict(), "model_config": dict(plain.config), **(extra or {})}
    return atomic_save(payload, Path(path))


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> CXRNet | MetadataNet:
    """Rebuild a CXRNet (or MetadataNet) saved by `save_model` (weights_only=True)."""
    checkpoint = load_checkpoint_file(path, pointed_by=f"load_model was given {str(path)!r}",
                                      fix="load a model.pt that save_model wrote (a finished run's model.pt)",
                                      map_location=map_location)
    if not isinstance(checkpoint, dict) or "model_config" not in checkpoint:
        raise ValueError(f"{path}: no 'model_config' in this checkpoint; use build_model(..., weights=path)")
    model = build_model(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model
