"""Shared fixtures: paths, the ../shared folder, and torch settings for 2-core CI machines."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHOE = SHARED / "datasets" / "shoe"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on the device machine with: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shoe_dir() -> Path:
    if not SHOE.exists():
        pytest.skip(f"{SHOE} not found (the user's shoe capture lives in ../shared beside the project)")
    return SHOE
