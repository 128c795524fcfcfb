"""Where does a model look? CAM (Zhou et al.), Grad-CAM / Grad-CAM++ (pytorch_grad_cam), overlays, localisation scores.

Every map function returns float32 numpy maps of the input's height and width, each map scaled to [0, 1]:
(B, H, W) for one class index, (B, K, H, W) for a list of K class indices (several findings of one image).

Pitfalls handled here (and why):

* Logits, not probabilities. Grad-CAM differentiates the model output; through a final sigmoid the gradient of a
  confident prediction vanishes (sigmoid'(z) -> 0) and the map degenerates. Models must return logits (the
  multi-label models of this book do; BCEWithLogitsLoss applies the sigmoid). A model whose last module is a
  Sigmoid/Softmax is refused.
* One-channel input. Nothing in the maps depends on the channel count, but `overlay` must turn a grey image into
  RGB before colouring it, and the first conv of an ImageNet network must have been replaced (models.py does it).
* DenseNet target layer. torchvision's DenseNet (and torchxrayvision's) ends `features` with the BatchNorm `norm5`
  and applies the ReLU in `forward` as `F.relu(features, inplace=True)`. The in-place ReLU overwrites the tensor a
  forward hook on `norm5` saved (on CPU the saved copy shares storage), so the package pairs post-ReLU activations
  with pre-ReLU gradients: a wrong map on CPU and a different one on GPU. We add a hook that hands a *clone* of the
  target layer's output to the rest of the network, so downstream in-place ops cannot touch the saved activation;
  the map is then the textbook Grad-CAM of `norm5`. For CAM the ReLU is re-applied to the captured features, as
  the classifier sees them after global average pooling.
* Frozen backbones. With `requires_grad=False` weights the target activations carry no gradient and the package
  fails; the input is made to require grad so gradients always reach the target layer. Weight gradients are
  switched off meanwhile (they are not needed, and VGG's are large); the package's `model.zero_grad()` still
  clears any `.grad` the caller had accumulated, so do not call it mid-step.
* The package's context manager swallows IndexError (a bad class index would return nothing); we do not use it
  and check the class index ourselves.
* The package switches the model to eval mode; we restore the caller's train/eval mode afterwards.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn
from torchvision.models import VGG

from cxrcore import models as cxr_models

__all__ = [
    "FindingTarget",
    "class_activation_map",
    "default_target_layer",
    "energy_inside",
    "final_linear",
    "gradcam",
    "overlay",
    "pointing_game",
]

_CAM_METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
FEATURE_STRIDE = 32  # input pixels per cell of the pooled feature maps: five stride-2 stages in every backbone


class FindingTarget:
    """Grad-CAM target: finding k's logit (for a (K, 3) negative/positive/uncertain head: positive minus negative)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        # `output` is one sample's model output: (K,) logits, or (K, C) per-finding class logits.
        if self.index >= output.shape[0] or self.index < -output.shape[0]:
            raise ValueError(f"class index {self.index} out of range for a model with {output.shape[0]} outputs")
        if output.ndim == 1:
            return output[self.index]
        # Softmax restricted to (negative, positive) is a sigmoid of their logit difference (paper 002's evaluation).
        return output[self.index, 1] - output[self.index, 0]


class _WithFeatures(nn.Module):
    """Closes over non-image `features` so that a `model(x, features)` can be called as `net(x)`."""

    def __init__(self, model: nn.Module, features: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("features", features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.features)


def feature_grid(image_size: int, *, large: bool = False) -> int:
    """Cells per side of the last feature maps, the CAM grid, for an input side that is a multiple of the stride."""
    return image_size // (FEATURE_STRIDE * (2 if large else 1))  # "-large" adds one more stride-2 pooling


def default_target_layer(model: nn.Module) -> nn.Module:
    """The usual CAM layer: the pooled layer of a CXRNet, else DenseNet norm5, ResNet layer4[-1], VGG's last conv+ReLU.

    CXRNet (cxrcore.models): `models.target_layer`, the layer global average pooling reads (DenseNet: the ReLU
    module after norm5; VGG-16: the last max-pool). Other models: found anywhere in the module tree, so wrappers
    around torchvision / torchxrayvision backbones work too; failing all that, the last Conv2d.
    """
    if _cxrnet(model) is not None:
        return cxr_models.target_layer(model)
    for module in model.modules():
        features = getattr(module, "features", None)
        if isinstance(features, nn.Module) and hasattr(features, "norm5"):
            return features.norm5  # DenseNet: the ReLU follows in forward(), see the module docstring
        if isinstance(getattr(module, "layer4", None), nn.Sequential):
            return module.layer4[-1]  # ResNet: the last bottleneck ends with its own ReLU
        if isinstance(module, VGG):
            return _vgg_last_conv_output(module.features)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer; pass target_layer explicitly")
    return convs[-1]


def _cxrnet(model: nn.Module) -> cxr_models.CXRNet | None:
    """The CXRNet inside DDP / torch.compile wrappers, or None for other models."""
    inner = cxr_models.unwrap(model)
    return inner if isinstance(inner, cxr_models.CXRNet) else None


def _default_cam_weights(model: nn.Module) -> tuple[torch.Tensor, nn.Linear | None]:
    """Classifier weights for CAM, and the linear layer when its output is the model's output (for the check)."""
    net = _cxrnet(model)
    if net is None:
        linear = final_linear(model)
        return linear.weight, linear
    weight = cxr_models.classifier_weights(net)  # image columns only; (K, 3, C) for multiclass3; refuses paper003
    plain = net.head_kind == "linear" and not net.meta_features
    return weight, net.head if plain else None


def _vgg_last_conv_output(features: nn.Sequential) -> nn.Module:
    """The ReLU after VGG's last conv (before the last max-pool: twice the resolution of features[-1])."""
    layers = list(features)
    last_conv = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d))
    following = layers[last_conv + 1] if last_conv + 1 < len(layers) else None
    return following if isinstance(following, nn.ReLU) else layers[last_conv]


def final_linear(model: nn.Module) -> nn.Linear:
    """The last nn.Linear of a model (the classifier whose weights CAM uses)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear; pass fc_weight explicitly")
    return linears[-1]


def _class_list(class_idx: int | Sequence[int]) -> tuple[list[int], bool]:
    """Class indices as a list, and whether a single int was given."""
    if isinstance(class_idx, (int, np.integer)):
        return [int(class_idx)], True
    indices = [int(k) for k in class_idx]
    if not indices:
        raise ValueError("class_idx is an empty list")
    return indices, False


def _check_logit_output(model: nn.Module) -> None:
    """Refuse models whose last module squashes the logits (Grad-CAM needs logits)."""
    leaves = [m for m in model.modules() if not list(m.children())]
    if leaves and isinstance(leaves[-1], (nn.Sigmoid, nn.Softmax, nn.LogSoftmax)):
        raise ValueError(
            f"model ends with {type(leaves[-1]).__name__}: CAM methods need logits; drop the final activation"
        )


def _clone_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: pass a copy downstream so in-place ops (DenseNet's F.relu(inplace=True)) spare the saved one."""
    return output.clone()


def _scale_maps(maps: torch.Tensor, size: tuple[int, int] | None, normalize: bool) -> np.ndarray:
    """(B, K, h, w) -> bilinear upsample to `size`, min-max scale each map to [0, 1] -> float32 numpy."""
    if size is not None:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    if normalize:
        low = maps.amin(dim=(-2, -1), keepdim=True)
        span = maps.amax(dim=(-2, -1), keepdim=True) - low
        # A constant map carries no location: all zeros rather than a division by zero.
        maps = torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))
    return maps.detach().cpu().numpy().astype(np.float32)


def class_activation_map(
    model: nn.Module,
    x: torch.Tensor,
    class_idx: int | Sequence[int],
    feature_layer: nn.Module | None = None,
    fc_weight: torch.Tensor | None = None,
    *,
    features: torch.Tensor | None = None,
    relu_features: bool = True,
    normalize: bool = True,
    upsample: bool = True,
) -> np.ndarray:
    """CAM (Zhou et al. 2016, paper 002): classifier weights of a class times the last feature maps before GAP.

    x: (B, C, H, W). feature_layer: the layer whose output is globally average-pooled (default
    `default_target_layer`). fc_weight: (K, C) weights of the linear layer after pooling, or (K, 3, C) for a
    negative/positive/uncertain head (positive minus negative row is used). Default: for a CXRNet
    `models.classifier_weights` (image columns of a -meta head; the paper003 hidden-layer head has no CAM),
    otherwise the model's last nn.Linear. features: non-image features for models called as model(x, features).
    relu_features re-applies the ReLU that DenseNet applies in forward() (a no-op for ResNet/VGG outputs).
    The feature layer must be the one whose output the head pools (for a VGG + GAP head: features[-1], the
    max-pool, not the default Grad-CAM layer); with the default fc_weight a mismatch is detected and warned about.
    With normalize=False, upsample=False the raw maps satisfy mean(map) + bias = logit.
    Returns (B, H, W) for an int class_idx, (B, K, H, W) for a list.
    """
    classes, single = _class_list(class_idx)
    layer = feature_layer if feature_layer is not None else default_target_layer(model)
    weight, linear = (fc_weight, None) if fc_weight is not None else _default_cam_weights(model)
    weight = weight.detach()
    if weight.ndim == 3:
        weight = weight[:, 1] - weight[:, 0]  # (K, C): positive-vs-negative logit difference
    fmap, output = _capture_output(model, x, layer, features)  # (B, C, h, w), model output
    if relu_features:
        fmap = F.relu(fmap)
    if weight.shape[-1] != fmap.shape[1]:
        raise ValueError(
            f"fc_weight has {weight.shape[-1]} inputs but the feature layer has {fmap.shape[1]} channels; CAM needs "
            f"GAP followed directly by one linear layer (for fused non-image features pass the image columns only)"
        )
    for k in classes:
        if not -weight.shape[0] <= k < weight.shape[0]:
            raise ValueError(f"class index {k} out of range for {weight.shape[0]} classes")
    if linear is not None:
        _warn_if_not_pooled(fmap, linear, output)
    rows = weight[classes].to(fmap)  # (K, C)
    maps = torch.einsum("kc,bchw->bkhw", rows, fmap)  # (B, K, h, w)
    maps = _scale_maps(maps, tuple(x.shape[-2:]) if upsample else None, normalize)
    return maps[:, 0] if single else maps


def _warn_if_not_pooled(fmap: torch.Tensor, linear: nn.Linear, output: torch.Tensor) -> None:
    """CAM is exact only if the logits are linear(GAP(fmap)); say so when the model's own output disagrees."""
    if output.ndim != 2 or output.shape[1] != linear.out_features:
        return
    with torch.no_grad():
        implied = linear(fmap.mean(dim=(2, 3)))  # (B, K)
    if not torch.allclose(implied, output, rtol=1e-3, atol=1e-3):
        warnings.warn(
            "the classifier does not act on the global average of this feature layer's output (e.g. a VGG head "
            "pooling after a max-pool); pass feature_layer= the layer whose output is pooled",
            UserWarning,
            stacklevel=3,
        )


def _capture_output(
    model: nn.Module, x: torch.Tensor, layer: nn.Module, features: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model once without gradients; return a copy of `layer`'s output and the model's output."""
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        captured.append(output.detach().clone())

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(x) if features is None else model(x, features)
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise ValueError(f"feature layer {type(layer).__name__} was not called in the model's forward")
    return captured[-1], output


def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    class_idx: int | Sequence[int],
    method: str = "gradcam",
    target_layer: nn.Module | None = None,
    *,
    features: torch.Tensor | None = None,
) -> np.ndarray:
    """Grad-CAM / Grad-CAM++ maps of the given finding(s) via pytorch_grad_cam (see the module docstring's pitfalls).

    x: (B, C, H, W), any C (1-channel works). The model must return logits, (B, K) or (B, K, 3).
    features: non-image features (B, F) for models called as model(x, features).
    Returns (B, H, W) for an int class_idx, (B, K, H, W) for a list (one pass per finding).
    """
    if method not in _CAM_METHODS:
        raise ValueError(f"method must be one of {sorted(_CAM_METHODS)}, got {method!r}")
    classes, single = _class_list(class_idx)
    _check_logit_output(model)
    layer = target_layer if target_layer is not None else default_target_layer(model)
    net = model if features is None else _WithFeatures(model, features)
    # Gradients flow from the input, so they reach the target layer even through frozen weights; the weights
    # themselves need none (saves the weight-gradient work, e.g. VGG's 100M-weight classifier).
    inputs = x.detach().clone().requires_grad_(True)
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    cam = _CAM_METHODS[method](model=net, target_layers=[layer])
    protect = layer.register_forward_hook(_clone_output)  # registered after the package's hooks on purpose
    try:
        for parameter in trainable:
            parameter.requires_grad_(False)
        maps = [cam(input_tensor=inputs, targets=[FindingTarget(k)] * len(x)) for k in classes]
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
        protect.remove()
        cam.activations_and_grads.release()
        model.train(was_training)
    stacked = np.stack(maps, axis=1).astype(np.float32)  # (B, K, H, W)
    return stacked[:, 0] if single else stacked


def top_class_gradcam(
    model: nn.Module, x: torch.Tensor, method: str = "gradcam", target_layer: nn.Module | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's map for its own highest-scoring finding (paper 003's figures): maps (B, H, W) and the finding
    indices (B,). The score is the logit, or positive minus negative for a (K, 3) head (FindingTarget's)."""
    was_training = model.training
    with torch.no_grad():
        output = model.eval()(x)  # (B, K) or (B, K, 3)
    model.train(was_training)
    scores = output if output.ndim == 2 else output[..., 1] - output[..., 0]  # (B, K)
    top = scores.argmax(dim=1).cpu().numpy()
    maps = [gradcam(model, x[i : i + 1], int(k), method=method, target_layer=target_layer)[0]
            for i, k in enumerate(top)]
    return np.stack(maps).astype(np.float32), top


def _image_to_rgb01(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any grey or RGB image, channels first or last, any range -> (H, W, 3) float32 in [0, 1]."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    img = img.astype(np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)  # (C, H, W) -> (H, W, C)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (H, W), (H, W, 1|3) or (1|3, H, W); got shape {image.shape}")
    low, high = float(img.min()), float(img.max())
    return (img - low) / (high - low) if high > low else np.zeros_like(img)


def overlay(
    image: np.ndarray | torch.Tensor, cam_map: np.ndarray, alpha: float = 0.4, cmap: str = "jet"
) -> np.ndarray:
    """Colour `cam_map` (H, W) in [0, 1] with an OpenCV colormap and blend it over the image: (H, W, 3) RGB uint8.

    The image (grey or RGB, any intensity range, e.g. a normalized tensor) is min-max scaled to [0, 1] first;
    a map of another size is resized bilinearly to the image. alpha is the weight of the heatmap.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colormap = getattr(cv2, f"COLORMAP_{cmap.upper()}", None)
    if colormap is None:
        raise ValueError(f"unknown colormap {cmap!r} (OpenCV names such as jet, turbo, inferno, viridis, bone)")
    rgb = _image_to_rgb01(image)
    heat = np.asarray(cam_map, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"cam_map must be one (H, W) map, got shape {heat.shape}")
    if heat.shape != rgb.shape[:2]:
        heat = cv2.resize(heat, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(heat, 0.0, 1.0)
    return show_cam_on_image(rgb, heat, use_rgb=True, colormap=colormap, image_weight=1.0 - alpha)


def _check_pair(cam_map: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same-shape float map and boolean mask, or a clear error."""
    heat = np.asarray(cam_map, dtype=np.float64)
    region = np.asarray(mask, dtype=bool)
    if heat.shape != region.shape:
        raise ValueError(f"cam_map shape {heat.shape} differs from mask shape {region.shape}")
    if np.any(heat < 0) or not np.all(np.isfinite(heat)):
        raise ValueError("cam_map must be finite and non-negative")
    return heat, region


def energy_inside(cam_map: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's energy (sum of values) inside the boolean mask; NaN for an all-zero map.

    Compare with the mask's area share (mask.mean()): a map that ignores the region scores about that much.
    """
    heat, region = _check_pair(cam_map, mask)
    total = heat.sum()
    return float(heat[region].sum() / total) if total > 0 else float("nan")


def pointing_game(cam_map: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game: is the map's maximum inside the mask? (False for a constant map, which points nowhere.)"""
    heat, region = _check_pair(cam_map, mask)
    if heat.max() == heat.min():
        return False
    return bool(region.flat[int(np.argmax(heat))])
