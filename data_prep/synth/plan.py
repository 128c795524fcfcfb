"""Labels to signs: which signs a study gets, how severe, and the recorded decision for uncertain labels."""

from __future__ import annotations

import re

import numpy as np

from data_prep.synth.signs import Sign

UNCERTAIN_DRAW_RATE = 0.5  # a -1 label draws an equivocal sign with this chance, else nothing (recorded)
NIH_DRAIN_RATE = 0.6  # share of ChestX-ray14 pneumothorax studies showing a chest drain (treated cases, paper 001)
NIH_DRAIN_OTHER_RATE = 0.02  # drains in studies without pneumothorax (post-operative, drained effusions)
NIH_DEVICE_RATE = {"AP": 0.3, "PA": 0.05}  # unlabelled support devices in ChestX-ray14 images

CHEXPERT_SIGNS = {
    "Enlarged Cardiomediastinum": "mediastinum",
    "Cardiomegaly": "cardiomegaly",
    "Lung Lesion": "lesion",
    "Edema": "edema",
    "Consolidation": "consolidation",
    "Pneumonia": "consolidation",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "effusion",
    "Pleural Other": "pleural_thickening",
    "Fracture": "fracture",
    "Support Devices": "devices",
    "Lung Opacity": "opacity",
}
NIH_SIGNS = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "effusion",
    "Infiltration": "infiltration",
    "Mass": "mass",
    "Nodule": "nodule",
    "Pneumonia": "consolidation",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Pleural_Thickening": "pleural_thickening",
    "Hernia": "hernia",
}
# MeSH major heading (regex on the term before its qualifiers) -> sign, for the hospital site's IU reports
MESH_SIGNS = [
    (r"^(cardiomegaly|cardiac shadow)", "cardiomegaly"),
    (r"^pleural effusion", "effusion"),
    (r"^pneumothorax", "pneumothorax"),
    (r"^pulmonary atelectasis", "atelectasis"),
    (r"^(pneumonia|consolidation|infiltrate|airspace disease)", "consolidation"),
    (r"^opacity", "opacity"),
    (r"^(pulmonary edema|pulmonary congestion|edema)", "edema"),
    (r"^(nodule|granulomatous disease|granuloma)", "nodule"),
    (r"^mass", "mass"),
    (r"^(emphysema|pulmonary emphysema|pulmonary disease, chronic obstructive)", "emphysema"),
    (r"^lung/hyperdistention", "emphysema"),
    (r"^lung/hypoinflation", "hypoinflation"),
    (r"^(fractures, bone|rib fractures)", "fracture"),
    (r"^hernia, hiatal", "hernia"),
    (r"^(cicatrix|pulmonary fibrosis|fibrosis)", "fibrosis"),
    (r"^(pleura|thickening)", "pleural_thickening"),
    (r"^(catheters|implanted medical device|surgical instruments|tube|pacemaker|medical device|stents)", "devices"),
    (r"^(mediastinum|mediastinal)", "mediastinum"),
]
MESH_SEVERITY = {
    "borderline": 0.12,
    "minimal": 0.2,
    "mild": 0.3,
    "small": 0.3,
    "moderate": 0.6,
    "large": 0.85,
    "severe": 0.9,
}


def positive_severity(rng: np.random.Generator) -> float:
    """Severity of a positive finding: skewed toward subtle (mean about 0.45)."""
    return float(0.1 + 0.9 * rng.beta(1.4, 1.8))


def _side(rng: np.random.Generator, name: str) -> str:
    """A patient side for the sign: effusions are often bilateral, the rest one-sided."""
    if name in ("effusion", "pleural_thickening") and rng.random() < 0.4:
        return "B"
    return "R" if rng.random() < 0.55 else "L"


def _zone(rng: np.random.Generator, name: str) -> str:
    """Where in the lung the sign goes: pneumonia/atelectasis mostly basal, others anywhere."""
    if name in ("consolidation", "atelectasis", "opacity"):
        return "lower" if rng.random() < 0.6 else str(rng.choice(["mid", "upper"]))
    return "any"


def make_sign(rng: np.random.Generator, name: str, uncertain: bool = False, severity: float | None = None) -> Sign:
    """A sign with a sampled severity (equivocal: faint), side and zone."""
    if name == "lesion":
        name = "nodule" if rng.random() < 0.6 else "mass"
    if uncertain:
        severity = float(rng.uniform(0.05, 0.25))
    elif severity is None:
        severity = positive_severity(rng)
    return Sign(name, severity, _side(rng, name), _zone(rng, name), equivocal=uncertain)


def chexpert_plan(rng: np.random.Generator, labels: dict) -> tuple[list[Sign], list[dict]]:
    """Signs of one CheXpert study from its 1/0/-1/NaN labels; rows record every positive or uncertain label."""
    signs, records = {}, []
    child_opacity = False
    for label, name in CHEXPERT_SIGNS.items():
        value = labels.get(label)
        if value not in (1.0, -1.0):
            continue
        drawn = value == 1.0 or rng.random() < UNCERTAIN_DRAW_RATE
        if label == "Lung Opacity" and child_opacity:
            drawn = False  # the opacity already drawn for a child finding carries this label
        sign = None
        if drawn:
            existing = [n for n in (("nodule", "mass") if name == "lesion" else (name,)) if n in signs]
            sign = signs[existing[0]] if existing else make_sign(rng, name, uncertain=value == -1.0)
            signs[sign.name] = sign
            child_opacity |= sign.name in ("consolidation", "edema", "atelectasis", "nodule", "mass")
        records.append(_record(label, value, drawn, sign))
    if "devices" in signs and "pneumothorax" in signs and rng.random() < 0.5:
        signs["drain"] = Sign("drain", 1.0, signs["pneumothorax"].side)
    return list(signs.values()), records


def nih_plan(rng: np.random.Generator, labels: set[str], projection: str) -> tuple[list[Sign], list[dict]]:
    """Signs of one ChestX-ray14 image: labelled findings, chest drains (shortcut) and unlabelled devices."""
    signs, records = {}, []
    for label in sorted(labels):
        name = NIH_SIGNS[label]
        if name not in signs:
            signs[name] = make_sign(rng, name)
        records.append(_record(label, 1.0, True, signs[name]))
    drain_rate = NIH_DRAIN_RATE if "pneumothorax" in signs else NIH_DRAIN_OTHER_RATE
    if rng.random() < drain_rate:
        side = signs["pneumothorax"].side if "pneumothorax" in signs else _side(rng, "drain")
        signs["drain"] = Sign("drain", 1.0, side)
        records.append(_record("(drain)", np.nan, True, signs["drain"]))
    if rng.random() < NIH_DEVICE_RATE.get(projection, 0.05) and "devices" not in signs:
        signs["devices"] = make_sign(rng, "devices")
        records.append(_record("(devices)", np.nan, True, signs["devices"]))
    return list(signs.values()), records


def mesh_plan(rng: np.random.Generator, mesh_major: str) -> tuple[list[Sign], list[dict]]:
    """Signs of one hospital study from its report's MeSH major terms (qualifiers set side and severity)."""
    signs, records = {}, []
    for term in filter(None, mesh_major.split(";")):
        parts = [p.strip().lower() for p in term.split("/")]
        name = next((n for pattern, n in MESH_SIGNS if re.match(pattern, parts[0])), None)
        if name is None or name in signs:
            continue
        severity = next((MESH_SEVERITY[q] for q in parts[1:] if q in MESH_SEVERITY), None)
        sign = make_sign(rng, name, severity=severity)
        sides = {"right": "R", "left": "L", "bilateral": "B"}
        sign.side = next((sides[q] for q in parts[1:] if q in sides), sign.side)
        sign.zone = next(
            (
                {
                    "base": "lower",
                    "apex": "upper",
                    "upper lobe": "upper",
                    "lower lobe": "lower",
                    "middle lobe": "mid",
                    "lingula": "mid",
                }[q]
                for q in parts[1:]
                if q in ("base", "apex", "upper lobe", "lower lobe", "middle lobe", "lingula")
            ),
            sign.zone,
        )
        signs[name] = sign
        records.append(_record(term, 1.0, True, sign))
    return list(signs.values()), records


def _record(label: str, value: float, drawn: bool, sign: Sign | None) -> dict:
    """One ground-truth row: the source label, whether a sign was drawn, and the sign's parameters."""
    return {
        "label": label,
        "label_value": value,
        "drawn": int(bool(drawn and sign is not None)),
        "sign": sign.name if drawn and sign else "",
        "severity": round(sign.severity, 3) if drawn and sign else np.nan,
        "equivocal": int(bool(drawn and sign and sign.equivocal)),
        "side": sign.side if drawn and sign else "",
    }
