"""Radiological signs drawn as attenuation layers on a View; each returns the mask of where it was drawn."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_prep.synth.anatomy import View, _segment_distance, ribs, soft

# sign name -> id stored in the mask PNGs (0 = no sign); also the order signs are drawn in
SIGN_IDS = {
    "cardiomegaly": 1,
    "mediastinum": 2,
    "effusion": 3,
    "pneumothorax": 4,
    "consolidation": 5,
    "opacity": 6,
    "infiltration": 7,
    "atelectasis": 8,
    "edema": 9,
    "nodule": 10,
    "mass": 11,
    "fracture": 12,
    "devices": 13,
    "drain": 14,
    "pleural_thickening": 15,
    "emphysema": 16,
    "fibrosis": 17,
    "hernia": 18,
    "hypoinflation": 19,
}

# one-line description of each sign, used by the gallery and the appendix
SIGN_TEXT = {
    "cardiomegaly": "heart wider than half the inner thorax (cardiothoracic ratio > 0.5)",
    "mediastinum": "widened upper mediastinum / filled retrosternal space",
    "effusion": "fluid blunting the costophrenic angle with a meniscus; small ones only in the lateral's sulcus",
    "pneumothorax": "visceral pleural line, no lung markings beyond it, lung retracted toward the hilum",
    "consolidation": "patchy air-space opacity with fuzzy margins",
    "opacity": "ill-defined lung opacity",
    "infiltration": "faint, diffuse patchy haze",
    "atelectasis": "plate-like linear opacity with volume loss (raised hemidiaphragm)",
    "edema": "bilateral perihilar haze (bat wing), Kerley B lines when severe",
    "nodule": "round opacity under about 3 cm",
    "mass": "larger lobulated opacity",
    "fracture": "rib discontinuity with step-off and callus",
    "devices": "lines, tubes, pacemaker, sternal wires",
    "drain": "thick chest tube entering from the lateral wall, coursing to the apex",
    "pleural_thickening": "smooth pleural band along the lateral chest wall, calcified plaques",
    "emphysema": "hyperinflation: flat low diaphragm, sparse markings, apical bullae",
    "fibrosis": "peripheral basal reticulation with volume loss",
    "hernia": "retrocardiac mass with an air-fluid level (hiatal hernia)",
    "hypoinflation": "low lung volumes",
}


@dataclass
class Sign:
    """One sign to draw: name, severity in (0, 1], side R | L | B (patient side), zone, equivocal flag."""

    name: str
    severity: float
    side: str = "B"
    zone: str = "any"
    equivocal: bool = False


def _rel(view: View) -> np.ndarray:
    """Relative height in the lung field: 0 apex .. 1 base, (H, 1)."""
    return (view.Y - view.top) / view.lh


def _side_mask(view: View, side: str) -> np.ndarray:
    """Columns of the patient's side on a frontal view (patient right = image left); all on lateral views."""
    if view.kind == "lateral" or side == "B":
        return np.ones((1, view.W), bool)
    return view.X < view.cx if side == "R" else view.X >= view.cx


ZONES = {"upper": (0.0, 0.38), "mid": (0.3, 0.65), "lower": (0.55, 1.0), "any": (0.05, 0.95)}


def _pick_point(rng: np.random.Generator, view: View, side: str, zone: str) -> tuple[float, float]:
    """A random lung pixel on the given side and zone, as (x, y)."""
    low, high = ZONES.get(zone, ZONES["any"])
    rel = _rel(view)
    side = side if side in "RL" else rng.choice(["R", "L"])
    candidates = view.lungs & _side_mask(view, side) & (rel >= low) & (rel <= high) & ~view.heart
    if not candidates.any():
        candidates = view.lungs
    rows, cols = np.nonzero(candidates)
    pick = rng.integers(len(rows))
    return float(cols[pick]) + 0.5, float(rows[pick]) + 0.5


def _noise(rng: np.random.Generator, view: View, scale: float) -> np.ndarray:
    """Smooth unit-variance noise with correlation length scale * image width."""
    field = ndimage.gaussian_filter(rng.standard_normal((view.H, view.W)).astype(np.float32), scale * view.W + 0.3)
    return field / (field.std() + 1e-6)


def _patch(rng: np.random.Generator, view: View, centre: tuple[float, float], radius: float, rough: float):
    """Irregular blob: radial falloff perturbed by smooth noise; returns its soft profile in [0, 1]."""
    dist = np.hypot(view.X - centre[0], view.Y - centre[1]) / radius
    field = 1 - dist + rough * _noise(rng, view, 0.03)
    return np.clip(field * 3, 0, 1) * view.lungs


def air_space(rng, view, layers, state, sign: Sign, kind: str) -> np.ndarray:
    """Consolidation, opacity or infiltration: a patchy opacity of kind-specific size and density."""
    size, density, rough = {
        "consolidation": (0.07, 0.3, 0.35),
        "opacity": (0.07, 0.22, 0.4),
        "infiltration": (0.1, 0.14, 0.5),
    }[kind]
    s = sign.severity
    profile = _patch(rng, view, _pick_point(rng, view, sign.side, sign.zone), view.tw * (size + 0.12 * s), rough)
    layers[kind] = layers.get(kind, 0) + (density + 0.3 * s) * ndimage.gaussian_filter(profile, 0.004 * view.W)
    return profile > 0.2


def nodule(rng, view, layers, state, sign: Sign, kind: str) -> np.ndarray:
    """A round nodule or a lobulated mass."""
    s = sign.severity
    radius = view.tw * ((0.028 + 0.03 * s) if kind == "nodule" else (0.07 + 0.07 * s))
    centre = _pick_point(rng, view, sign.side, sign.zone)
    rough = 0.05 if kind == "nodule" else 0.2
    profile = _patch(rng, view, centre, radius, rough)
    layers[kind] = layers.get(kind, 0) + (0.32 + 0.3 * s) * profile
    return profile > 0.2


def atelectasis(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """Plate-like basal band plus volume loss (hemidiaphragm raised on that side)."""
    s = sign.severity
    side = sign.side if sign.side in "RL" else rng.choice(["R", "L"])
    x, y = _pick_point(rng, view, side, "lower")
    half = view.tw * (0.08 + 0.08 * s)
    tilt = rng.uniform(-0.25, 0.25)
    band = _segment_distance(view, (x - half, y - tilt * half), (x + half, y + tilt * half)) < view.W * (
        0.01 + 0.02 * s
    )
    band &= view.lungs
    raised = (
        view.lungs & _side_mask(view, side) & (view.Y > np.nan_to_num(view.ybot, nan=0)[None, :] - s * 0.09 * view.lh)
    )
    layers["atelectasis"] = (
        layers.get("atelectasis", 0)
        + (0.35 + 0.3 * s) * soft(band, 0.003 * view.W + 0.3)
        + 0.5 * soft(raised, 0.004 * view.W + 0.3)
    )
    return band | raised


def edema(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """Bilateral perihilar haze, indistinct vessels, Kerley B lines at the lateral bases when severe."""
    s = sign.severity
    haze = np.zeros((view.H, view.W), np.float32)
    for hx, hy in view.hila:
        haze += np.exp(-(((view.X - hx) ** 2 + (view.Y - hy) ** 2) / (2 * (view.tw * (0.1 + 0.08 * s)) ** 2)))
    haze = np.clip(haze, 0, 1) * view.lungs * (0.75 + 0.25 * np.clip(_noise(rng, view, 0.02), -1, 1))
    layers["edema"] = (0.06 + 0.2 * s) * haze
    state["marking_blur"] = max(state.get("marking_blur", 0.0), 0.5 + s)
    mask = haze > 0.3
    if s > 0.5 and view.kind == "frontal":
        edge = (ndimage.distance_transform_edt(view.lungs) < 0.06 * view.tw) & view.lungs
        rows = view.top + view.lh * rng.uniform(0.65, 0.9, size=6)
        lines = (np.min(np.abs(view.Y[None] - rows[:, None, None]), axis=0) < 0.6) & edge & (_rel(view) > 0.6)
        layers["edema"] = layers["edema"] + 0.25 * lines
        mask |= lines
    return mask


def effusion(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """Dependent fluid with a meniscus; in the lateral view it fills the posterior sulcus first."""
    s = sign.severity
    ybot = np.nan_to_num(view.ybot, nan=-1e6)[None, :]
    if view.kind == "lateral":
        u = np.clip((view.X - (view.cx - view.tw / 2)) / view.tw, 0, 1)
        height = view.lh * (0.05 + 0.4 * s) * (0.25 + 0.75 * u**1.5)
        sides = ["B"]
    else:
        frontal_s = max(0.0, (s - 0.15) / 0.85)  # under ~0.15 severity the frontal angle stays sharp
        lateral = np.abs(view.X - view.cx) / (view.tw / 2)
        height = view.lh * 0.45 * frontal_s * (0.55 + 0.45 * np.clip(lateral, 0, 1) ** 2)
        sides = ["R", "L"] if sign.side == "B" else [sign.side]
    mask = np.zeros((view.H, view.W), bool)
    for side in sides:
        region = view.lungs & _side_mask(view, side) & (view.Y > ybot - height) & (_rel(view) > 0.45)
        mask |= region & (height > 0.5)
    ramp = np.clip((view.Y - (ybot - height)) / (0.5 * height + 1.0), 0, 1) * mask
    layers["effusion"] = 0.62 * ndimage.gaussian_filter(ramp.astype(np.float32), 0.004 * view.W + 0.3)
    return mask


def pneumothorax(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """Lung retracted toward the hilum: pleural line, and no markings between it and the chest wall."""
    s = sign.severity * (0.5 if view.kind == "lateral" else 1.0)
    side = sign.side if sign.side in "RL" else rng.choice(["R", "L"])
    lung = view.lungs & _side_mask(view, side)
    hx, hy = view.hila[0] if (side == "R" or view.kind == "lateral") else view.hila[-1]
    keep = 1 - (0.06 + 0.3 * s)
    rows, cols = np.mgrid[0 : view.H, 0 : view.W].astype(np.float32)
    src = [hy + (rows + 0.5 - hy) / keep - 0.5, hx + (cols + 0.5 - hx) / keep - 0.5]
    collapsed = ndimage.map_coordinates(lung.astype(np.float32), src, order=1) > 0.5
    collapsed &= lung
    gas = lung & ~collapsed & (_rel(view) < 0.85)
    line = collapsed & ~ndimage.binary_erosion(collapsed) & ndimage.binary_dilation(gas)
    state["marking_gain"] = state["marking_gain"] * ~gas
    layers["pneumothorax"] = -0.08 * gas + 0.3 * soft(line, 0.3)
    return gas | line


def fracture(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """A rib fracture: cortical gap, step-off and callus on a lateral posterior rib (frontal views only)."""
    if view.kind == "lateral":
        return np.zeros((view.H, view.W), bool)
    s = sign.severity
    spec = {
        "rib": int(rng.integers(3, 9)),
        "side": -1.0 if sign.side == "R" else 1.0,
        "d": rng.uniform(0.55, 0.9),
        "step": rng.uniform(0.4, 0.9) * s,
        "gap": 0.03 + 0.03 * s,
        "callus": 0.5 + 0.6 * s,
        "callus_density": 0.6 + 1.2 * s,
    }
    normal, _ = ribs(view)
    broken, mask = ribs(view, spec)
    layers["fracture"] = 0.16 * (broken - normal)
    return mask | ((np.abs(broken - normal) > 0.2) & ndimage.binary_dilation(mask, iterations=3))


def _tube(view: View, points: list[tuple[float, float]], width: float) -> np.ndarray:
    """Distance-thresholded polyline through points (x, y) as a soft line of the given width in pixels."""
    dist = np.min([_segment_distance(view, a, b) for a, b in zip(points[:-1], points[1:], strict=True)], axis=0)
    return np.clip(1 - (dist - width / 2) / 0.8, 0, 1)


def devices(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """One to three support devices: endotracheal tube, central line, feeding tube, pacemaker, sternal wires."""
    cx, top, tw, lh, W = view.cx, view.top, view.tw, view.lh, view.W
    lateral = view.kind == "lateral"
    kinds = rng.choice(["ett", "cvc", "ng", "pacemaker", "wires"], size=1 + int(rng.integers(0, 3)), replace=False)
    total = np.zeros((view.H, view.W), np.float32)
    for kind in kinds:
        if kind == "ett":
            pts = [(cx - 0.02 * tw, 0.0), (cx - (0.01 if not lateral else -0.02) * tw, top + 0.28 * lh)]
            total = np.maximum(total, 0.5 * _tube(view, pts, 0.02 * W))
        elif kind == "cvc":
            sx = -1 if rng.random() < 0.5 else 1
            pts = [
                (cx + sx * 0.45 * tw, top - 0.02 * lh),
                (cx + sx * 0.15 * tw, top + 0.08 * lh),
                (cx - 0.04 * tw, top + 0.22 * lh),
                (cx - 0.05 * tw, top + 0.45 * lh),
            ]
            total = np.maximum(total, 0.55 * _tube(view, pts, 0.009 * W + 0.6))
        elif kind == "ng":
            pts = [(cx + 0.01 * tw, 0.0), (cx + 0.02 * tw, top + 0.9 * lh), (cx + 0.25 * tw, top + 1.1 * lh)]
            total = np.maximum(total, 0.45 * _tube(view, pts, 0.009 * W + 0.6))
        elif kind == "pacemaker":
            gx, gy = (cx - 0.45 * tw, top + 0.12 * lh) if lateral else (cx + 0.38 * tw, top + 0.1 * lh)
            box = (np.abs(view.X - gx) < 0.07 * tw) & (np.abs(view.Y - gy) < 0.045 * tw)
            lead = _tube(view, [(gx, gy), (cx, top + 0.3 * lh), (cx - 0.02 * tw, top + 0.7 * lh)], 0.008 * W + 0.5)
            total = np.maximum(total, np.maximum(1.6 * soft(box, 0.5), 0.6 * lead))
        else:
            for level in np.linspace(0.15, 0.6, 5):
                wx = cx - (0.5 * tw if lateral else 0)
                ring = np.abs(np.hypot((view.X - wx) / 1.6, view.Y - top - level * lh) - 0.015 * W) < 0.6
                total = np.maximum(total, 1.0 * ring)
    layers["devices"] = layers.get("devices", 0) + total
    return total > 0.2


def drain(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """A thick chest drain from the lateral chest wall curving up to the apex, with a side-hole gap."""
    cx, top, tw, lh, W = view.cx, view.top, view.tw, view.lh, view.W
    side = -1.0 if sign.side == "R" else 1.0
    if view.kind == "lateral":
        pts = [(cx + 0.7 * tw, top + 0.8 * lh), (cx + 0.35 * tw, top + 0.6 * lh), (cx + 0.2 * tw, top + 0.12 * lh)]
    else:
        pts = [
            (cx + side * 0.75 * tw, top + 0.85 * lh),
            (cx + side * 0.47 * tw, top + 0.7 * lh),
            (cx + side * 0.35 * tw, top + 0.35 * lh),
            (cx + side * 0.22 * tw, top + 0.1 * lh),
        ]
    tube = _tube(view, pts, 0.022 * W + 0.8)
    hole = np.hypot(view.X - pts[-2][0], view.Y - pts[-2][1]) < 0.012 * W + 0.5
    layers["drain"] = 0.7 * tube * ~hole
    return tube > 0.2


def pleural_thickening(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """Smooth pleural band along the lateral (or posterior) chest wall, with calcified plaques when severe."""
    s = sign.severity
    edge = ndimage.distance_transform_edt(view.lungs)
    if view.kind == "lateral":
        wall = view.X > view.cx
    else:
        wall = (np.abs(view.X - view.cx) > 0.2 * view.tw) & _side_mask(view, sign.side)
    band = view.lungs & (edge < view.W * (0.012 + 0.025 * s)) & wall & (_rel(view) > 0.2)
    plaques = band & (_noise(rng, view, 0.015) > 1.5 - s)
    layers["pleural_thickening"] = 0.4 * soft(band, 0.4) + 0.5 * plaques
    return band


def emphysema(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """Lucent lungs with sparse markings (hyperinflation is set in the geometry), apical bullae when severe."""
    s = sign.severity
    state["marking_gain"] = state["marking_gain"] * (1 - 0.6 * s)
    upper = view.lungs & (_rel(view) < 0.45)
    layers["emphysema"] = -0.08 * s * view.lungs
    mask = upper.copy()
    if s > 0.45:
        x, y = _pick_point(rng, view, sign.side, "upper")
        r = view.tw * (0.05 + 0.06 * s)
        dist = np.hypot(view.X - x, view.Y - y)
        layers["emphysema"] = layers["emphysema"] - 0.1 * (dist < r) * view.lungs + 0.12 * (np.abs(dist - r) < 0.7)
    return mask


def fibrosis(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """Peripheral basal reticulation: a fine network of lines near the pleura of the lower zones."""
    s = sign.severity
    edge = ndimage.distance_transform_edt(view.lungs)
    region = view.lungs & (edge < view.tw * (0.08 + 0.1 * s)) & (_rel(view) > 0.4)
    ridges = np.exp(-((_noise(rng, view, 0.008) / 0.35) ** 2)) * region
    layers["fibrosis"] = (0.08 + 0.12 * s) * ndimage.gaussian_filter(ridges, 0.5)
    return region


def hernia(rng, view, layers, state, sign: Sign) -> np.ndarray:
    """Hiatal hernia: a retrocardiac round density with an air-fluid level."""
    s = sign.severity
    x = view.cx + (0.05 * view.tw if view.kind == "frontal" else 0.25 * view.tw)
    y = view.top + 0.8 * view.lh
    r = view.tw * (0.07 + 0.07 * s)
    disc = np.hypot(view.X - x, view.Y - y) < r
    gas = disc & (view.Y < y - 0.2 * r)
    layers["hernia"] = 0.25 * soft(disc, 0.5) - 0.35 * gas + 0.2 * (disc & (np.abs(view.Y - y + 0.2 * r) < 0.7))
    return disc


def draw(rng: np.random.Generator, view: View, layers: dict, state: dict, sign: Sign) -> np.ndarray:
    """Draw one sign onto the layers; returns the (H, W) bool mask of where it was drawn."""
    name = sign.name
    if name in ("cardiomegaly", "hypoinflation"):
        return view.heart.copy() if name == "cardiomegaly" else np.zeros((view.H, view.W), bool)
    if name == "mediastinum":
        return state["mediastinum_mask"]
    if name in ("consolidation", "opacity", "infiltration"):
        return air_space(rng, view, layers, state, sign, name)
    if name in ("nodule", "mass"):
        return nodule(rng, view, layers, state, sign, name)
    return DRAWERS[name](rng, view, layers, state, sign)


DRAWERS = {
    "atelectasis": atelectasis,
    "edema": edema,
    "effusion": effusion,
    "pneumothorax": pneumothorax,
    "fracture": fracture,
    "devices": devices,
    "drain": drain,
    "pleural_thickening": pleural_thickening,
    "emphysema": emphysema,
    "fibrosis": fibrosis,
    "hernia": hernia,
}
