"""Lung-field templates from the 517 real lung masks torchxrayvision ships (cropped, downsized, two lungs each)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from data_prep.reference import lung_masks

TEMPLATE_PX = 96


def _two_lungs(mask: np.ndarray) -> bool:
    """True when a mask holds two lungs of comparable size side by side (drops odd or single-lung masks)."""
    labels, count = ndimage.label(mask[:: max(1, mask.shape[0] // 256), :: max(1, mask.shape[1] // 256)])
    if count < 2:
        return False
    sizes = np.sort(np.bincount(labels.ravel())[1:])[::-1]
    return sizes[1] > 0.35 * sizes[0] and sizes[:2].sum() > 0.95 * sizes.sum()


def _crop_resize(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Crop a mask to its lungs' bounding box and resize to TEMPLATE_PX square; returns (uint8 template, h/w)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    step = max(1, min(crop.shape) // (2 * TEMPLATE_PX))
    small = crop[::step, ::step].astype(np.float32)
    zoomed = ndimage.zoom(small, (TEMPLATE_PX / small.shape[0], TEMPLATE_PX / small.shape[1]), order=1)
    return (np.clip(zoomed, 0, 1) * 255).astype(np.uint8), crop.shape[0] / crop.shape[1]


def lung_templates() -> tuple[np.ndarray, np.ndarray]:
    """All usable real lung masks as (N, 96, 96) uint8 templates and their real height/width aspect ratios (N,)."""
    shapes, aspects = [], []
    for _name, mask in lung_masks():
        if _two_lungs(mask):
            template, aspect = _crop_resize(mask)
            shapes.append(template)
            aspects.append(aspect)
    if not shapes:
        raise RuntimeError("no usable two-lung mask among the reference lung masks")
    return np.stack(shapes), np.asarray(aspects, dtype=np.float32)
