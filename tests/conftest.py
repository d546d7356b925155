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


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """``demo_dataset(capture_res, res, n_test)``: the built-in demo capture prepared at ``res`` (made once per
    session for each setting; tests only read it)."""
    from recon_kit import synth
    from recon_kit.data.dataset import prepare_dataset

    made: dict[tuple[int, int, int], Path] = {}

    def make(capture_res: int = 96, res: int = 64, n_test: int = 2) -> Path:
        key = (capture_res, res, n_test)
        if key not in made:
            root = tmp_path_factory.mktemp(f"demo{capture_res}_{res}")
            cap = synth.write_demo_capture(root / "capture", resolution=capture_res, n_test=n_test)
            prepare_dataset(cap, root / "data", [res], progress=False)
            made[key] = root / "data" / str(res)
        return made[key]

    return make
