"""Each site's detector look: contrast curve, noise, sharpness, collimation borders, burned-in markers, format."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_LETTERS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


@dataclass(frozen=True)
class SiteStyle:
    """Detector and post-processing parameters of one site (blur and noise relative to a 128 px image)."""

    name: str
    image_format: str  # jpg | png
    aspect: tuple[float, float]  # image height / width range
    gain: float  # slope of the sigmoid contrast curve
    centre: float  # intensity at the middle of the curve
    gamma: float
    blur: float
    sharpen: float
    noise: float
    border_value: float  # collimation border grey level
    border_rate: float  # chance of visible collimation borders
    marker: str  # burned-in letter
    marker_corner: str  # tl | tr | bl | br
    marker_box: float  # grey level of a block behind the letter, or -1 for none
    jpeg_quality: int = 90


STYLES = {
    "chexpert": SiteStyle("chexpert", "jpg", (1.0, 1.25), 5.0, 0.45, 1.0, 0.5, 0.3, 0.025, 0.0, 0.6, "R", "tl", -1),
    "nih": SiteStyle("nih", "png", (1.0, 1.0), 6.5, 0.5, 0.8, 0.3, 0.8, 0.012, 0.0, 0.15, "L", "tr", 0.95),
    "hospital": SiteStyle("hospital", "png", (1.2, 1.2), 3.5, 0.4, 1.35, 0.9, 0.0, 0.035, 0.85, 0.8, "L", "br", 0.1),
}


def _marker(letter: str, height: int) -> np.ndarray:
    """A 5x7 bitmap letter scaled to about `height` pixels tall."""
    bitmap = np.array([[c == "1" for c in row] for row in _LETTERS[letter]], dtype=bool)
    scale = max(1, round(height / 7))
    return np.kron(bitmap, np.ones((scale, scale), dtype=bool))


def _burn_marker(image: np.ndarray, style: SiteStyle, letter: str) -> None:
    """Burn a white letter (on an optional block) into a corner, in place."""
    H, W = image.shape
    glyph = _marker(letter, max(7, round(0.06 * W)))
    gh, gw = glyph.shape
    pad = max(2, round(0.04 * W))
    r0 = pad if style.marker_corner[0] == "t" else H - pad - gh
    c0 = pad if style.marker_corner[1] == "l" else W - pad - gw
    if style.marker_box >= 0:
        image[max(0, r0 - 2) : r0 + gh + 2, max(0, c0 - 2) : c0 + gw + 2] = style.marker_box
    image[r0 : r0 + gh, c0 : c0 + gw][glyph] = 1.0 if style.marker_box < 0.5 else 0.0


def _collimate(rng: np.random.Generator, image: np.ndarray, style: SiteStyle, portable: bool) -> None:
    """Collimation borders of random width on some sides (more often on portable AP films), in place."""
    rate = min(1.0, style.border_rate * (1.5 if portable else 1.0))
    H, W = image.shape
    for side in range(4):
        if rng.random() < rate:
            width = int(rng.uniform(0.01, 0.06) * (H if side < 2 else W))
            if side == 0:
                image[:width] = style.border_value
            elif side == 1:
                image[H - width :] = style.border_value
            elif side == 2:
                image[:, :width] = style.border_value
            else:
                image[:, W - width :] = style.border_value


def apply_style(rng: np.random.Generator, intensity: np.ndarray, style: SiteStyle, projection: str) -> np.ndarray:
    """Turn a [0, 1] transmission image (bone bright) into the site's 8-bit detector image."""
    scale = intensity.shape[1] / 128
    image = ndimage.gaussian_filter(intensity, style.blur * scale + 0.01)
    if style.sharpen:
        image = image + style.sharpen * (image - ndimage.gaussian_filter(image, 2 * scale))
    curve = 1 / (1 + np.exp(-style.gain * (image - style.centre)))
    low, high = 1 / (1 + np.exp(style.gain * style.centre)), 1 / (1 + np.exp(-style.gain * (1 - style.centre)))
    image = np.clip((curve - low) / (high - low), 0, 1) ** style.gamma
    image = image + rng.normal(0, style.noise, image.shape) * (0.5 + image)
    _collimate(rng, image, style, projection == "AP")
    _burn_marker(image, style, "L" if projection == "LL" else style.marker)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
