"""Shared fixtures: tiny dataset trees in the real layouts, written once per session (tests must not modify them)."""
from __future__ import annotations

import pytest
from layouts import CheXpertTree, NIHTree, write_chexpert, write_hospital, write_nih


@pytest.fixture(scope="session")
def chexpert_tree(tmp_path_factory: pytest.TempPathFactory) -> CheXpertTree:
    """DATA_ROOT with CheXpert-v1.0-small: real rows of 8 train and 3 valid patients, JPEG images."""
    return write_chexpert(tmp_path_factory.mktemp("chexpert_root"))


@pytest.fixture(scope="session")
def nih_tree(tmp_path_factory: pytest.TempPathFactory) -> NIHTree:
    """DATA_ROOT with ChestX-ray14: real rows of 10 patients, PNGs in images_001 and images_002, official lists."""
    return write_nih(tmp_path_factory.mktemp("nih_root"))


@pytest.fixture(scope="session")
def hospital_root(tmp_path_factory: pytest.TempPathFactory):
    """DATA_ROOT with hospital/reports.csv (real IU report texts) and PNG images."""
    root = tmp_path_factory.mktemp("hospital_root")
    write_hospital(root)
    return root
