"""Quality benchmark (recon_kit/runs/benchmark.py does the work), two parts:

synth: synthetic objects with ground truth, rendered in the user's capture format (6 axis views at R², 8-bit
depth at R/2, 24 random held-out views), reconstructed, and scored next to the visual-hull and fused-depth
baselines of the same capture. Writes quality.json and quality.md into --out.

shoe: variants of a real capture (a prepared dataset, e.g. the user's shoe) trained side by side, each a run in
OUT/<name>/ with bench.json (6-view PSNR / SSIM / IoU under the learned and the written cameras, depth residual,
fringe score, camera corrections, phase times, peak memory) and novel.png; OUT/summary.json and summary.md:

    python scripts/bench_quality.py shoe --dataset <prepared>/1024 --preset gpu-default --out OUT \\
        --variant base: --variant refine:cameras.refine=true,loss.edge_px=8 --jobs 4 [--set key=value ...]

CPU, small (what docs/benchmarks.md "Quality benchmark" reports; CI runs a tinier one on the demo object):

    python scripts/bench_quality.py synth --objects demo spot bob --res 128 --preset cpu-small \\
        --inits hull depth --out outputs/quality_cpu

GPU (the issue's settings; objects in parallel on one GPU):

    python scripts/bench_quality.py synth --objects spot bob demo --res 512 --preset gpu-default \\
        --iterations 2000 1500 --inits hull depth --baseline-res 192 --device cuda --jobs 3 --out $OUT/q

(--res sets data.resolution; add --set key=value for the lead's trainer switches, e.g. --set loss.depth=0.3.)

spot and bob are read from ../shared/assets (--shared to point elsewhere); demo needs no files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from recon_kit.runs import benchmark


def parse_set(items: list[str]) -> dict:
    """``key=value`` pairs; values are JSON when they parse (numbers, true/false, lists), else strings."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected key=value, e.g. --set pass1.iterations=2000")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_variants(specs: list[str], common: dict) -> dict[str, dict]:
    """``NAME:key=value,key=value`` (``NAME:`` = the preset as it is) -> name -> overrides, ``common`` first."""
    variants = {}
    for spec in specs or ["base:"]:
        name, _, over = spec.partition(":")
        variants[name] = {**common, **parse_set([s for s in over.split(",") if s])}
    return variants


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    s = sub.add_parser("synth", help="spot, bob and the demo object against their ground truth")
    s.add_argument("--objects", nargs="+", default=list(benchmark.OBJECTS), choices=benchmark.OBJECTS)
    s.add_argument("--res", type=int, default=128, help="photo resolution R (depth maps at R/2), also training res")
    s.add_argument("--preset", default="cpu-small")
    s.add_argument("--iterations", type=int, nargs=2, metavar=("PASS1", "PASS2"),
                   help="shorthand for --set pass1.iterations=.. --set pass2.iterations=..")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    s.add_argument("--inits", nargs="+", default=["hull"], choices=["hull", "depth", "sphere", "random"],
                   help="one reconstruction per geometry.init")
    s.add_argument("--n-test", type=int, default=24, help="held-out views")
    s.add_argument("--baseline-res", type=int, default=96, help="grid of the hull / fused-depth baselines")
    s.add_argument("--n-points", type=int, default=50_000, help="surface samples for Chamfer / F-score")
    s.add_argument("--no-recon", action="store_true", help="baselines only")
    s.add_argument("--device", default="cpu")
    s.add_argument("--jobs", type=int, default=1, help="objects run as this many parallel processes")
    s.add_argument("--shared", default=None, help="folder holding assets/spot and assets/bob (default ../shared)")
    s.add_argument("--out", default="outputs/quality")
    h = sub.add_parser("shoe", help="variants of a real capture side by side (no ground truth)")
    h.add_argument("--dataset", required=True, help="a prepared dataset folder, e.g. <prepared>/1024")
    h.add_argument("--preset", default="gpu-default")
    h.add_argument("--out", required=True)
    h.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    h.add_argument("--variant", action="append", default=[], help="NAME:key=value,key=value (NAME: = the preset)")
    h.add_argument("--jobs", type=int, default=1, help="variants run as this many parallel processes")
    a = ap.parse_args(argv)
    overrides = parse_set(a.set)
    if a.part == "shoe":
        rows = benchmark.run_shoe(a.dataset, a.out, parse_variants(a.variant, overrides), a.preset, a.jobs)
        print(benchmark.shoe_table(rows))
        return rows
    if a.iterations:
        overrides.update({"pass1.iterations": a.iterations[0], "pass2.iterations": a.iterations[1]})
    settings = benchmark.BenchSettings(res=a.res, preset=a.preset, overrides=overrides, inits=tuple(a.inits),
                                       n_test=a.n_test, baseline_res=a.baseline_res, n_points=a.n_points,
                                       device=a.device, reconstruct=not a.no_recon)
    doc = benchmark.run_synth(a.objects, a.out, settings, jobs=a.jobs, shared_dir=a.shared)
    print(benchmark.markdown_table(doc["rows"]))
    print(f"wrote {Path(a.out) / 'quality.json'} and quality.md")
    return doc


if __name__ == "__main__":
    main()
