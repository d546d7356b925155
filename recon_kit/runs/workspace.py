"""One place to say where the data is: a workspace folder from which every notebook's paths follow by default.

    <workspace>/                 e.g. outputs/demo (the default) or outputs/shoe
      demo_capture/              the synthetic capture notebook 01 writes for input_dir="demo"
      data/<res>/                prepared datasets (notebook 01), transforms.json per resolution
      posecheck/                 notebook 02's figures, k3d scene and report
      runs/<UTC time>_<id>/      training runs (notebook 03; the newest is notebook 04's default)

Relative paths start at the repository root (:func:`recon_kit.notebooks.at_repo_root`), in JupyterLab, under
papermill and on the CLI alike. Every explicit path parameter of a notebook still wins over the workspace. The CLI's
``--workspace`` (prepare, check-poses, train) follows the same rule through this class.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Workspace"]


def _where(path: Path) -> str:
    return f"{path} (that is {path.resolve()})" if not path.is_absolute() else str(path)


@dataclass(frozen=True)
class Workspace:
    root: Path

    def __init__(self, root: str | os.PathLike[str] = "outputs/demo") -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def posecheck_dir(self) -> Path:
        return self.root / "posecheck"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def dataset(self, resolution: int | None = None) -> Path:
        """``data/<resolution>`` (default: the largest prepared one); not found names the folder it looked in."""
        if resolution is not None:
            folder = self.data_dir / str(resolution)
            if not (folder / "transforms.json").is_file():
                raise FileNotFoundError(f"no prepared dataset at {_where(folder)}; run notebook 01 with "
                                        f"resolutions=[{resolution}] into {self.data_dir}")
            return folder
        subs = sorted((p for p in self.data_dir.glob("*") if p.name.isdigit() and (p / "transforms.json").is_file()),
                      key=lambda p: int(p.name))
        if not subs:
            raise FileNotFoundError(f"no prepared dataset (<res>/transforms.json) in {_where(self.data_dir)}; run "
                                    f"notebook 01 (output_dir={str(self.data_dir)!r}) or recon-kit prepare CAPTURE "
                                    f"--workspace {self.root}, or set dataset_dir")
        return subs[-1]

    def latest_run(self) -> Path:
        """The newest run folder holding ``metrics.json`` under ``runs/`` (or the demo's ``run/``)."""
        candidates = [p for p in [*self.runs_dir.glob("*"), self.root / "run"] if (p / "metrics.json").is_file()]
        if not candidates:
            raise FileNotFoundError(f"no finished run (a folder with metrics.json) in {_where(self.runs_dir)} or "
                                    f"{self.root / 'run'}; train one with notebook 03 or set run_dir")
        return max(candidates, key=lambda p: (p / "metrics.json").stat().st_mtime)
