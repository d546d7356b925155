"""Alias of ``scripts/bench_quality.py shoe`` (same arguments): variants of a real capture side by side.

    python scripts/bench_shoe.py --dataset <prepared>/1024 --preset gpu-default --out OUT --variant base: --jobs 2
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv[1:1] = ["shoe"]
    runpy.run_path(str(Path(__file__).with_name("bench_quality.py")), run_name="__main__")
