"""How hard the demo data is: a tiny plain-PyTorch CNN vs logistic regression on 16x16 thumbnails, per finding.

`python -m data_prep difficulty --root DATA_ROOT` (or, as before, `python -m data_prep.synth.difficulty --root
DATA_ROOT`) prints held-out-patient AUROC per site and finding for the chexpert and nih sites of a data root.

This is an explicitly independent script, and deliberately so: it is a yardstick of the demo data's difficulty,
and a yardstick must not share the code it measures. So it reads the sites' own CSV files with pandas here (not
through data_prep.tables / data_prep.manifests), trains with its own plain-PyTorch loop (not cxrcore's engine,
models, losses, label policies or data loaders) and splits patients with its own seeded permutation (not
data_prep.splits). A bug in those shared pieces then shows up as a disagreement with this yardstick instead of
being reproduced by it. Only the finding name lists (cxrcore.findings) and well-tested library code are shared:
AUROC is sklearn's roc_auc_score, the baseline sklearn's LogisticRegression.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from cxrcore.findings import CHEXPERT_FINDINGS, NIH_FINDINGS

MIN_POSITIVES = 8  # findings with fewer held-out positives are not scored
RESULT_COLUMNS = ["site", "finding", "held_out_positives", "cnn_auroc", "thumbnail_lr_auroc"]


def site_table(root: Path, site: str) -> pd.DataFrame:
    """path, patient and one 1/0/NaN column per finding (uncertain -> NaN, not scored) for chexpert or nih."""
    if site == "chexpert":
        table = pd.read_csv(root / "CheXpert-v1.0-small" / "train.csv")
        labels = table[CHEXPERT_FINDINGS[1:]].fillna(0.0).replace(-1.0, np.nan)
        patient = table["Path"].str.extract(r"(patient\d+)")[0]
        return pd.concat([pd.DataFrame({"path": table["Path"], "patient": patient}), labels], axis=1)
    table = pd.read_csv(root / "ChestX-ray14" / "Data_Entry_2017_v2020.csv")
    folders = {p.name: p.parent.parent.name for p in (root / "ChestX-ray14").glob("images_*/images/*.png")}
    paths = [f"ChestX-ray14/{folders[name]}/images/{name}" for name in table["Image Index"]]
    labels = pd.DataFrame(
        {f: table["Finding Labels"].str.split("|").apply(lambda ls, f=f: float(f in ls)) for f in NIH_FINDINGS}
    )
    return pd.concat([pd.DataFrame({"path": paths, "patient": table["Patient ID"].astype(str)}), labels], axis=1)


def load_images(root: Path, paths: pd.Series, size: int) -> np.ndarray:
    """Grayscale images resized to size x size, as float32 in [0, 1], shape (N, size, size)."""
    return np.stack(
        [
            np.asarray(Image.open(root / p).convert("L").resize((size, size), Image.BILINEAR), np.float32) / 255
            for p in paths
        ]
    )


def tiny_cnn(outputs: int) -> torch.nn.Module:
    """Four conv blocks, global average pooling, one linear layer."""
    layers, channels = [], 1
    for width in (16, 32, 64, 64):
        layers += [
            torch.nn.Conv2d(channels, width, 3, padding=1),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        ]
        channels = width
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, outputs))


def train_cnn(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> torch.nn.Module:
    """Train the tiny CNN with masked binary cross-entropy (NaN labels ignored)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # seeded initial weights without touching the caller's global RNG
        torch.manual_seed(seed)
        model = tiny_cnn(y.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    images = torch.from_numpy(x[:, None])  # (N, 1, S, S)
    targets = torch.from_numpy(np.nan_to_num(y)).float()
    weights = torch.from_numpy(~np.isnan(y)).float()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(images), generator=generator).split(64):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(images[batch]), targets[batch], weight=weights[batch]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def aurocs(y: np.ndarray, scores: np.ndarray, names: list[str]) -> dict[str, float]:
    """AUROC per finding with enough held-out positives and negatives."""
    out = {}
    for k, name in enumerate(names):
        known = ~np.isnan(y[:, k])
        if (y[known, k] == 1).sum() >= MIN_POSITIVES and (y[known, k] == 0).sum() >= MIN_POSITIVES:
            out[name] = roc_auc_score(y[known, k], scores[known, k])
    return out


def measure(root: Path, site: str, size: int = 64, epochs: int = 15, seed: int = 0) -> pd.DataFrame:
    """Held-out-patient AUROC of the tiny CNN and of thumbnail logistic regression, one row per finding."""
    table = site_table(root, site)
    names = [c for c in table.columns if c not in ("path", "patient")]
    patients = table["patient"].unique()
    held_out = set(np.random.default_rng(seed).permutation(patients)[: len(patients) // 4])
    test = table["patient"].isin(held_out).to_numpy()
    x = load_images(root, table["path"], size)
    y = table[names].to_numpy(np.float64)
    x = (x - x[~test].mean()) / x[~test].std()
    model = train_cnn(x[~test], y[~test], epochs, seed)
    with torch.no_grad():
        cnn_scores = torch.sigmoid(model(torch.from_numpy(x[test][:, None]))).numpy()
    thumbs = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x[:, None]), 16).flatten(1).numpy()
    scaler = StandardScaler().fit(thumbs[~test])
    lr_scores = np.full((test.sum(), len(names)), 0.5)
    for k in range(len(names)):
        known = ~test & ~np.isnan(y[:, k])
        if len(np.unique(y[known, k])) == 2:
            fit = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(thumbs[known]), y[known, k])
            lr_scores[:, k] = fit.predict_proba(scaler.transform(thumbs[test]))[:, 1]
    cnn, lr = aurocs(y[test], cnn_scores, names), aurocs(y[test], lr_scores, names)
    positives = {n: int(np.nansum(y[test][:, k])) for k, n in enumerate(names)}
    return pd.DataFrame(
        [
            {
                "site": site,
                "finding": n,
                "held_out_positives": positives[n],
                "cnn_auroc": round(cnn[n], 3),
                "thumbnail_lr_auroc": round(lr[n], 3),
            }
            for n in cnn
        ],
        columns=RESULT_COLUMNS,  # an empty table (no finding with enough positives) keeps its columns
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m data_prep difficulty` (and of `python -m data_prep.synth.difficulty`)."""
    parser.add_argument("--root", type=Path, required=True, help="data root holding the synthetic sites")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels the CNN sees (default 64)")
    parser.add_argument("--epochs", type=int, default=15, help="CNN training epochs (default 15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient split and the CNN (default 0)")


def main(args: argparse.Namespace) -> int:
    """Print the difficulty table for the chexpert and nih sites of a synthetic data root."""
    table = pd.concat([measure(args.root, site, args.size, args.epochs, args.seed) for site in ("chexpert", "nih")])
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    print(
        "median AUROC: cnn",
        round(table["cnn_auroc"].median(), 3),
        "thumbnail LR",
        round(table["thumbnail_lr_auroc"].median(), 3),
    )
    return 0


def cli(argv: list[str] | None = None) -> int:
    """The stand-alone entry `python -m data_prep.synth.difficulty ...`: the same options and output."""
    parser = argparse.ArgumentParser(prog="python -m data_prep.synth.difficulty", description=__doc__)
    add_arguments(parser)
    return main(parser.parse_args(argv))


def _has_tabulate() -> bool:
    """pandas' to_markdown needs the optional tabulate package."""
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(cli())
