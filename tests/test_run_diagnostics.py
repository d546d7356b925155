"""scripts/depth_agreement.py and scripts/psnr_bands.py: diagnostics of a finished run (CPU, tiny run)."""

import sys
from pathlib import Path

import numpy as np

from recon_kit import config
from recon_kit.data import dataset as rk_dataset
from recon_kit.runs import run as rk_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import depth_agreement  # noqa: E402
import psnr_bands  # noqa: E402


def test_fit_recovers_an_affine_encoding_exactly():
    z = np.linspace(2.0, 3.0, 50)
    assert depth_agreement.fit(3.0 * z + 1.0, z)["rms"] < 1e-9
    assert depth_agreement.fit(3.0 / z + 1.0, 1.0 / z)["median_abs"] < 1e-9


def test_agreement_of_a_tiny_run(demo_dataset, tmp_path):
    data = demo_dataset(96, 64, 0)
    cfg = config.resolve("cpu-small", {"pass1.iterations": 4, "pass2.iterations": 2, "data.resolution": 64,
                                       "geometry.grid_res": 32, "geometry.hull_res": 48, "material.texture_res": 64,
                                       "checkpoint_every": 0, "snapshot_every": 0})
    tr = rk_run.new_trainer(cfg, rk_dataset.load_viewset(data), tmp_path / "run")
    tr.run(progress=False)
    rk_run.finish(tr, data)
    rows = depth_agreement.agreement(tmp_path / "run", data, erode=1)
    assert [r["view"] for r in rows] == tr.views.names
    assert all(r["pixels"] > 0 and np.isfinite(r["fit_depth"]["rms"]) for r in rows)
    bands = psnr_bands.bands(tmp_path / "run", data, band_px=2, light_res=32)
    logged = {r["view"]: r["psnr"] for r in tr.evaluate()["train_views"]}
    for r in bands:
        assert abs(r["psnr_full"] - logged[r["view"]]) < 1.0      # the re-render is the evaluation's render
        assert 0 <= r["band_error_share"] <= 1 and np.isfinite(r["psnr_outside_band"])
