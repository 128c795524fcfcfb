"""Normal chest anatomy as attenuation maps: frontal (PA/AP) and lateral geometry, vectorized numpy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

HEART_BOTTOM = 0.93  # heart rests on the diaphragm at this fraction of lung height


@dataclass
class Patient:
    """What the renderer needs to know about one patient and one image."""

    sex: str  # M | F | U
    age: float
    projection: str  # PA | AP | LL
    habitus: float  # 0 thin .. 1 heavy
    template: np.ndarray  # (96, 96) uint8 real lung template
    aspect: float  # real lung height / width


@dataclass
class View:
    """Geometry of one rendered view; pixel units, image left = patient right on frontal views."""

    kind: str  # frontal | lateral
    H: int
    W: int
    Y: np.ndarray  # (H, 1) row coordinate
    X: np.ndarray  # (1, W) column coordinate
    lungs: np.ndarray  # (H, W) bool lung fields
    thorax: np.ndarray  # (H, W) bool inner thoracic cavity (row-wise hull of the lungs)
    heart: np.ndarray  # (H, W) bool
    cx: float  # midline (frontal) or lung-field centre (lateral)
    top: float
    bottom: float
    tw: float  # lung-field width in pixels
    lh: float  # lung-field height in pixels
    ybot: np.ndarray  # (W,) lowest lung row per column (diaphragm / sulci), nan outside
    hila: list[tuple[float, float]]
    extras: dict = field(default_factory=dict)


def _grid(H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinate arrays broadcastable to (H, W)."""
    return np.arange(H, dtype=np.float32)[:, None] + 0.5, np.arange(W, dtype=np.float32)[None, :] + 0.5


def row_hull(mask: np.ndarray) -> np.ndarray:
    """Fill each row between its first and last True pixel."""
    has = mask.any(axis=1)
    first = mask.argmax(axis=1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    cols = np.arange(mask.shape[1])[None, :]
    return has[:, None] & (cols >= first[:, None]) & (cols <= last[:, None])


def max_row_width(mask: np.ndarray) -> int:
    """Widest horizontal extent (pixels) of a mask, as for a cardiothoracic ratio."""
    if not mask.any():
        return 0
    has = mask.any(axis=1)
    first = mask.argmax(axis=1)
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)
    return int((last - first + 1)[has].max())


def cardiothoracic_ratio(heart: np.ndarray, thorax: np.ndarray) -> float:
    """Widest heart width over widest inner thoracic width, measured on masks."""
    return max_row_width(heart) / max(1, max_row_width(thorax))


def _place(template: np.ndarray, H: int, W: int, top: int, left: int, h: int, w: int) -> np.ndarray:
    """Resize a template to (h, w) and paste it into an (H, W) bool canvas at (top, left), clipped."""
    zoomed = ndimage.zoom(template.astype(np.float32), (h / template.shape[0], w / template.shape[1]), order=1)
    canvas = np.zeros((H, W), dtype=bool)
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(H, top + zoomed.shape[0]), min(W, left + zoomed.shape[1])
    canvas[r0:r1, c0:c1] = zoomed[r0 - top : r1 - top, c0 - left : c1 - left] > 127
    return canvas


def _lowest_rows(mask: np.ndarray) -> np.ndarray:
    """Lowest True row per column (nan where a column is empty)."""
    has = mask.any(axis=0)
    low = mask.shape[0] - 1 - mask[::-1, :].argmax(axis=0)
    return np.where(has, low, np.nan).astype(np.float32)


def frontal_view(rng: np.random.Generator, H: int, W: int, patient: Patient, inflation: float) -> View:
    """Lung fields and thorax of a frontal view from a real lung template; inflation > 1 = hyperinflated."""
    Y, X = _grid(H, W)
    tw = W * rng.uniform(0.64, 0.74) * (1.03 if patient.projection == "AP" else 1.0)
    lh = min(0.8 * H, tw * float(np.clip(patient.aspect, 0.7, 1.15)) * inflation)
    cx = W / 2 + rng.normal(0, 0.035 if patient.projection == "AP" else 0.02) * W
    top = float(np.clip(H * rng.uniform(0.07, 0.13), 0.03 * H, 0.95 * H - lh))
    lungs = _place(patient.template, H, W, round(top), round(cx - tw / 2), round(lh), round(tw))
    hila = [(cx - 0.2 * tw, top + 0.42 * lh), (cx + 0.19 * tw, top + 0.40 * lh)]
    return View(
        "frontal",
        H,
        W,
        Y,
        X,
        lungs,
        row_hull(lungs),
        np.zeros((H, W), bool),
        cx,
        top,
        top + lh,
        tw,
        lh,
        _lowest_rows(lungs),
        hila,
    )


def place_heart(view: View, ctr: float, depth: float = 0.42) -> None:
    """Draw the frontal heart so its measured cardiothoracic ratio lands on ctr's side of 0.5 (sets view.heart)."""
    thoracic = max_row_width(view.thorax)
    bottom = view.top + HEART_BOTTOM * view.lh
    for _ in range(8):
        width = ctr * thoracic
        hx = view.cx + 0.12 * width
        right, left = 0.38 * width, 0.62 * width  # patient right (image left) bulges less than the left ventricle
        semi_h = depth * width
        hy = bottom - 0.72 * semi_h
        radius = np.where(view.X < hx, right, left)
        heart = (((view.X - hx) / radius) ** 2 + ((view.Y - hy) / semi_h) ** 2 <= 1) & (view.Y <= bottom)
        measured = cardiothoracic_ratio(heart, view.thorax)
        if (measured > 0.5) == (ctr > 0.5) and abs(measured - 0.5) >= min(0.004, abs(ctr - 0.5)):
            break
        ctr += (ctr - measured) + (0.5 / thoracic if ctr > 0.5 else -0.5 / thoracic)
    view.heart = heart
    view.extras["ctr"] = measured
    view.extras["heart_box"] = (hx - right, hx + left, hy - semi_h, bottom)


def lateral_view(rng: np.random.Generator, H: int, W: int, patient: Patient, inflation: float) -> View:
    """Superimposed lung fields of a left lateral view: anterior at image left, spine at image right."""
    Y, X = _grid(H, W)
    tw = W * rng.uniform(0.58, 0.68) * (0.9 + 0.2 * inflation - 0.1)
    lh = min(0.8 * H, W * 0.7 * float(np.clip(patient.aspect, 0.7, 1.15)) * inflation)
    cx = W * 0.5 + rng.normal(0, 0.02) * W
    top = float(np.clip(H * rng.uniform(0.07, 0.12), 0.03 * H, 0.95 * H - lh))
    u = (X - (cx - tw / 2)) / tw  # 0 anterior .. 1 posterior
    v = (Y - top) / lh  # 0 apex .. 1 posterior sulcus
    dome = rng.uniform(0.06, 0.12) / inflation**2
    lower = 0.84 + 0.16 * u - dome * np.sin(np.pi * np.clip(u, 0, 1))  # posterior sulcus lowest
    dome_top = (((u - 0.5) / 0.5) ** 2 + ((v - 0.55) / 0.57) ** 2 <= 1) | (v >= 0.55)
    lungs = dome_top & (v >= 0) & (v <= lower) & (u >= 0.0) & (u <= 1.0)
    hila = [(cx + 0.05 * tw, top + 0.42 * lh)]
    return View(
        "lateral",
        H,
        W,
        Y,
        X,
        lungs,
        row_hull(lungs),
        np.zeros((H, W), bool),
        cx,
        top,
        top + lh,
        tw,
        lh,
        _lowest_rows(lungs),
        hila,
    )


def place_lateral_heart(view: View, ctr: float) -> None:
    """Lateral heart: anterior-inferior ellipse sized by the same cardiothoracic ratio as the frontal."""
    scale = ctr / 0.45
    hx = view.cx - view.tw * (0.22 - 0.05 * scale)
    hy = view.top + view.lh * 0.8
    rx, ry = view.tw * 0.22 * scale, view.lh * 0.2 * scale**0.7
    bottom = np.nan_to_num(view.ybot, nan=view.bottom)[None, :]
    view.heart = (((view.X - hx) / rx) ** 2 + ((view.Y - hy) / ry) ** 2 <= 1) & (view.Y <= bottom) & view.thorax
    view.extras["heart_box"] = (hx - rx, hx + rx, hy - ry, hy + ry)


def soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """A mask as float with blurred edges."""
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma)


def _segment_distance(view: View, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance (pixels) from every pixel to the segment p0-p1 given as (x, y)."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((view.X - x0) * dx + (view.Y - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    return np.hypot(view.X - x0 - t * dx, view.Y - y0 - t * dy)


def markings(rng: np.random.Generator, view: View) -> np.ndarray:
    """Bronchovascular markings: streaks radiating from the hila, fading to the periphery."""
    total = np.zeros((view.H, view.W), np.float32)
    freqs = rng.uniform(9, 26, size=4)
    phases = rng.uniform(0, 2 * np.pi, size=4)
    for hx, hy in view.hila:
        radius = np.hypot(view.X - hx, view.Y - hy)
        angle = np.arctan2(view.Y - hy, view.X - hx)
        streaks = np.sum([np.cos(f * angle + p + 0.02 * radius) for f, p in zip(freqs, phases, strict=True)], axis=0)
        total += np.clip(streaks / 2.5, 0, None) * np.exp(-radius / (0.3 * view.tw))
    fine = ndimage.gaussian_filter(rng.standard_normal((view.H, view.W)).astype(np.float32), 0.006 * view.W + 0.4)
    return total + 0.5 * np.clip(fine / (fine.std() + 1e-6), 0, None) * 0.3


def ribs(view: View, fracture: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ribs (frontal) as bands; a fracture cuts one rib, offsets it and adds callus. Returns (ribs, mask)."""
    spacing = view.lh / 9.5
    thick = 0.32 * spacing
    count = 11
    side = np.where(view.X < view.cx, -1.0, 1.0)  # (1, W) image left = -1
    d = np.abs(view.X - view.cx) / (view.tw / 2)
    arc = view.top - 0.9 * spacing + spacing * (1.8 * d**2 - 0.5 * d)  # (1, W): rib k's centre is arc + k * spacing
    position = (view.Y - arc) / spacing  # (H, W) in rib units
    index = np.clip(np.round(position), 0, count - 1)
    offset = (position - index) * spacing  # distance to the nearest rib's centre line
    fracture_mask = np.zeros((view.H, view.W), bool)
    if fracture is not None:
        broken = (index == fracture["rib"]) & (side == fracture["side"])
        offset = np.where(broken & (d > fracture["d"]), offset - fracture["step"] * thick, offset)
    body = np.exp(-((offset / (0.5 * thick)) ** 6)) + 0.5 * np.exp(
        -(((np.abs(offset) - 0.45 * thick) / (0.12 * thick + 0.3)) ** 2)
    )
    if fracture is not None:
        body = np.where(broken & (np.abs(d - fracture["d"]) < fracture["gap"]), 0.0, body)
        fx = view.cx + fracture["side"] * fracture["d"] * view.tw / 2
        fy = float(np.interp(fx, view.X.ravel(), arc.ravel())) + fracture["rib"] * spacing
        callus = np.exp(-((view.X - fx) ** 2 + (view.Y - fy) ** 2) / (2 * (fracture["callus"] * thick) ** 2))
        fracture_mask = callus > 0.3
        body = body + fracture["callus_density"] * callus
    within = np.clip((1.1 - d) / 0.08, 0, 1) * (view.Y > view.top - spacing)
    return body * within, fracture_mask


def frontal_density(rng: np.random.Generator, view: View, patient: Patient, mediastinum_widening: float) -> dict:
    """Attenuation layers of a normal frontal chest: body, air, heart, mediastinum, bones, breasts, abdomen."""
    H, W, X, Y = view.H, view.W, view.X, view.Y
    body_half = view.tw * (0.6 + 0.12 * patient.habitus)
    thickness = np.sqrt(np.clip(1 - ((X - view.cx) / body_half) ** 2, 0, None)) * np.ones((H, 1), np.float32)
    lung_soft = soft(view.lungs, 0.006 * W + 0.3)
    air = 0.62 * lung_soft * thickness
    med_half = view.tw * (0.09 + 0.09 * mediastinum_widening)
    knob = 0.035 * view.tw * np.exp(-(((Y - view.top - 0.22 * view.lh) / (0.06 * view.lh)) ** 2))
    mediastinum = (np.abs(X - view.cx - 0.01 * view.tw) < med_half + np.where(X > view.cx, knob, 0)) & (
        Y < view.top + 0.75 * view.lh
    )
    trachea = (np.abs(X - view.cx) < 0.035 * view.tw) & (Y < view.top + 0.36 * view.lh)
    spine = np.abs(X - view.cx) < 0.065 * view.tw
    vertebrae = 0.18 * spine * (0.8 + 0.2 * np.cos(2 * np.pi * (Y - view.top) / (view.lh / 9.5)))
    clavicles = sum(
        np.exp(
            -(
                (
                    _segment_distance(
                        view,
                        (view.cx + s * 0.07 * view.tw, view.top + 0.06 * view.lh),
                        (view.cx + s * 0.52 * view.tw, view.top - 0.05 * view.lh),
                    )
                    / (0.025 * W)
                )
                ** 4
            )
        )
        for s in (-1, 1)
    )
    scap_d = 0.4 if patient.projection == "AP" else 0.58  # AP: scapulae project over the upper lungs
    scapulae = sum(
        soft(
            (np.abs(X - view.cx - s * scap_d * view.tw) < 0.08 * view.tw)
            & (Y > view.top)
            & (Y < view.top + 0.5 * view.lh),
            0.02 * W,
        )
        for s in (-1, 1)
    )
    rib_layer, _ = ribs(view)
    layers = {
        "body": (0.9 + 0.35 * patient.habitus) * thickness,
        "air": -air,
        "heart": 0.5 * soft(view.heart, 0.004 * W + 0.3) * view.lungs,
        "mediastinum": 0.6 * soft(mediastinum & ~trachea & ~view.heart, 0.004 * W + 0.3) * lung_soft,
        "trachea": -0.15 * soft(trachea, 0.005 * W),
        "bones": (0.1 - 0.0004 * patient.age) * rib_layer + 0.25 * clavicles + vertebrae + 0.1 * scapulae,
        "abdomen": _abdomen(view),
        "breasts": _breasts(view, patient),
    }
    return layers


def _abdomen(view: View) -> np.ndarray:
    """Gastric bubble under the left hemidiaphragm (image right): a small lucency."""
    ybot = np.nan_to_num(view.ybot, nan=view.bottom)
    gx = view.cx + 0.27 * view.tw
    gy = float(np.interp(gx, view.X.ravel(), ybot)) + 0.06 * view.lh
    bubble = ((view.X - gx) / (0.09 * view.tw)) ** 2 + ((view.Y - gy) / (0.045 * view.lh)) ** 2 < 1
    return -0.25 * soft(bubble & (view.Y < gy + 0.01 * view.lh), 0.004 * view.W + 0.3)


def _breasts(view: View, patient: Patient) -> np.ndarray:
    """Breast shadows over the lower lungs of adult women, density growing with habitus."""
    if patient.sex != "F" or patient.age < 15:
        return np.zeros((view.H, view.W), np.float32)
    total = np.zeros((view.H, view.W), np.float32)
    for s in (-1, 1):
        bx, by = view.cx + s * 0.3 * view.tw, view.top + 0.86 * view.lh
        rx, ry = 0.24 * view.tw, 0.2 * view.lh
        inside = ((view.X - bx) / rx) ** 2 + ((view.Y - by) / ry) ** 2 < 1
        total += inside * np.clip((view.Y - by + ry) / (1.5 * ry), 0, 1)
    return (0.12 + 0.2 * patient.habitus) * soft(total > 0, 0.003 * view.W) * total


def lateral_density(rng: np.random.Generator, view: View, patient: Patient, mediastinum_widening: float) -> dict:
    """Attenuation layers of a normal lateral chest: body, air, heart, sternum, spine, arms, trachea."""
    H, W, X, Y = view.H, view.W, view.X, view.Y
    u = (X - (view.cx - view.tw / 2)) / view.tw
    body_half = view.tw * (0.62 + 0.1 * patient.habitus)
    thickness = np.sqrt(np.clip(1 - ((X - view.cx) / body_half) ** 2, 0, None)) * np.ones((H, 1), np.float32)
    lung_soft = soft(view.lungs, 0.006 * W + 0.3)
    spine_x = view.cx + view.tw * 0.5
    level = (Y - view.top) / (view.lh / 10.5)
    vertebra = (np.abs(X - spine_x - 0.04 * view.tw) < 0.08 * view.tw) & (np.cos(2 * np.pi * level) > -0.6)
    spine_fade = np.clip(1.1 - 0.5 * (Y - view.top) / view.lh, 0.4, 1)  # spine gets more lucent caudally
    sternum = np.abs(X - (view.cx - view.tw * 0.52)) < 0.025 * view.tw
    trachea = (
        _segment_distance(
            view,
            (view.cx - 0.05 * view.tw, view.top - 0.1 * view.lh),
            (view.cx + 0.03 * view.tw, view.top + 0.4 * view.lh),
        )
        < 0.04 * view.tw
    )
    anterior_mediastinum = (u > 0.05) & (u < 0.25 + 0.15 * mediastinum_widening) & (Y < view.top + 0.45 * view.lh)
    aorta = (
        _segment_distance(
            view,
            (view.cx - 0.05 * view.tw, view.top + 0.2 * view.lh),
            (view.cx + 0.2 * view.tw, view.top + 0.25 * view.lh),
        )
        < 0.07 * view.tw
    )
    arms = soft((Y < view.top + 0.35 * view.lh) & (np.abs(u - 0.35) < 0.3), 0.05 * W)
    rib_lines = 0.04 * (np.cos(2 * np.pi * (Y - 0.4 * X) / (view.lh / 8)) > 0.7) * view.lungs
    return {
        "body": (0.95 + 0.35 * patient.habitus) * thickness,
        "air": -0.5 * lung_soft * thickness,
        "heart": 0.35 * soft(view.heart, 0.004 * W + 0.3) * view.lungs,
        "mediastinum": 0.12 * soft((anterior_mediastinum * mediastinum_widening > 0) | aorta, 0.01 * W) * lung_soft,
        "trachea": -0.15 * soft(trachea, 0.005 * W),
        "bones": 0.35 * vertebra * spine_fade + 0.25 * sternum + rib_lines,
        "abdomen": np.zeros((H, W), np.float32),
        "arms": 0.25 * arms,
    }
