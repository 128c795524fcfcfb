"""Render one radiograph from a job: patient anatomy, the study's signs, the site's detector style."""

from __future__ import annotations

import copy

import numpy as np
from scipy import ndimage

from data_prep.synth.anatomy import (
    Patient,
    View,
    frontal_density,
    frontal_view,
    lateral_density,
    lateral_view,
    markings,
    place_heart,
    place_lateral_heart,
)
from data_prep.synth.signs import SIGN_IDS, Sign, draw
from data_prep.synth.styles import STYLES, apply_style

SITES = ("chexpert", "nih", "hospital")
ATTENUATION = 1.6  # transmission = exp(-ATTENUATION * density)


def seeded(seed: int, site: str, kind: int, number: int) -> np.random.Generator:
    """A generator for (seed, site, kind, number): kind 0 patient, 1 study signs, 2 image; worker-independent."""
    return np.random.default_rng([seed, SITES.index(site), kind, number])


def target_ctr(rng: np.random.Generator, signs: dict[str, Sign], projection: str, normal_u: float) -> float:
    """Cardiothoracic ratio to draw: > 0.5 exactly when cardiomegaly is drawn; AP magnifies the heart."""
    magnify = 0.035 if projection == "AP" else 0.0
    sign = signs.get("cardiomegaly")
    if sign is None:
        return 0.37 + 0.09 * normal_u + magnify  # normal: 0.37-0.46 PA, up to 0.495 AP
    if sign.equivocal:
        return 0.508 + 0.015 * rng.random()
    return min(0.75, 0.515 + 0.17 * sign.severity + magnify)


def _patient(job: dict, templates: np.ndarray, aspects: np.ndarray) -> tuple[Patient, float]:
    """The patient's anatomy draw (same for all their images) and their normal heart-size quantile."""
    rng = seeded(job["seed"], job["site"], 0, job["patient_number"])
    pick = int(rng.integers(len(templates)))
    habitus = float(np.clip(rng.beta(2, 2) + 0.004 * (50 - abs(job["age"] - 50)) - 0.1, 0, 1))
    patient = Patient(job["sex"], float(job["age"]), job["projection"], habitus, templates[pick], float(aspects[pick]))
    return patient, float(rng.random())


def _view(rng: np.random.Generator, job: dict, patient: Patient, signs: dict[str, Sign], normal_u: float) -> View:
    """Geometry of the view with hyperinflation / low volumes and the heart placed."""
    inflation = 1.0
    if "emphysema" in signs:
        inflation += 0.2 * signs["emphysema"].severity
    if "hypoinflation" in signs:
        inflation -= 0.15 * signs["hypoinflation"].severity
    ctr = target_ctr(seeded(job["seed"], job["site"], 1, job["study_number"]), signs, job["projection"], normal_u)
    if job["view"] == "frontal":
        view = frontal_view(rng, job["height"], job["width"], patient, inflation)
        place_heart(view, ctr)
    else:
        view = lateral_view(rng, job["height"], job["width"], patient, inflation)
        place_lateral_heart(view, ctr)
    return view


def _mediastinum_mask(view: View, widening: float) -> np.ndarray:
    """Where a widened upper mediastinum extends beyond the normal one."""
    if view.kind == "lateral":
        u = (view.X - (view.cx - view.tw / 2)) / view.tw
        return view.lungs & (u > 0.05) & (u < 0.25 + 0.15 * widening) & (view.Y < view.top + 0.45 * view.lh)
    offset = np.abs(view.X - view.cx - 0.01 * view.tw)
    upper = view.Y < view.top + 0.55 * view.lh
    return upper & (offset >= 0.09 * view.tw) & (offset < view.tw * (0.09 + 0.09 * widening))


def render(job: dict, templates: np.ndarray, aspects: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """One image: returns (uint8 image (H, W), uint8 masks (H, W, 3): sign id, anatomy bits, 0) and a record.

    A job with "remove" (a sign name) renders the counterfactual: the same image without that sign. Every sign draws
    from its own random stream and the anatomy, markings and detector from the image's, so nothing else changes; the
    removed sign's mask (drawn on scratch copies) goes into the blue channel (255 where it would have been).
    """
    signs = {s.name: s for s in job["signs"]}
    patient, normal_u = _patient(job, templates, aspects)
    rng = seeded(job["seed"], job["site"], 2, job["index"])
    view = _view(rng, job, patient, signs, normal_u)
    widening = signs["mediastinum"].severity * 0.8 + 0.2 if "mediastinum" in signs else 0.0
    density_of = frontal_density if view.kind == "frontal" else lateral_density
    layers = density_of(rng, view, patient, widening)
    state = {
        "marking_gain": np.ones((view.H, view.W), np.float32),
        "mediastinum_mask": _mediastinum_mask(view, widening),
    }
    sign_ids = np.zeros((view.H, view.W), np.uint8)
    removed = np.zeros((view.H, view.W), np.uint8)
    for name in sorted(signs, key=SIGN_IDS.get):
        sign_rng = seeded(job["seed"], job["site"], 1, job["study_number"] * 64 + SIGN_IDS[name])
        if name == job.get("remove"):  # the counterfactual: where it would be drawn, on copies the image never sees
            removed[draw(sign_rng, view, copy.deepcopy(layers), copy.deepcopy(state), signs[name])] = 255
            continue
        sign_ids[draw(sign_rng, view, layers, state, signs[name])] = SIGN_IDS[name]
    vessels = markings(rng, view) * state["marking_gain"] * view.lungs
    if state.get("marking_blur"):
        vessels = ndimage.gaussian_filter(vessels, state["marking_blur"] * view.W / 256)
    density = np.sum([np.asarray(layer, np.float32) for layer in layers.values()], axis=0) + 0.06 * vessels
    intensity = 1 - np.exp(-ATTENUATION * np.clip(density, 0, None))
    image = apply_style(rng, intensity, STYLES[job["site"]], job["projection"])
    anatomy = view.lungs.astype(np.uint8) | (view.thorax.astype(np.uint8) << 1) | (view.heart.astype(np.uint8) << 2)
    masks = np.stack([sign_ids, anatomy, removed], axis=-1)
    ctr = round(float(view.extras["ctr"]), 4) if "ctr" in view.extras else np.nan
    record = {"ctr": ctr, "drain": "drain" in signs and job.get("remove") != "drain"}
    return image, masks, record
