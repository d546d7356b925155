"""Time the hash-grid encoder's forward+backward: the custom autograd op vs autograd through ``table[idx]``.

All variants share the batched corner lookup, so the autograd row isolates the gather/scatter strategy;
"lookup" times the eager index/weight computation alone; "compiled" is the torch.compile path the encoder
takes on CUDA by default. Usage: ``python scripts/bench_hashgrid.py --device cuda --n 1048576``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from recon_kit.model.hashgrid import HashGridEncoder


def reference_forward(enc: HashGridEncoder, x: torch.Tensor) -> torch.Tensor:
    """Same encoding with plain autograd: gather ``table[idx]`` (backward = index_put with accumulate)."""
    idx, w = enc.corner_lookup(x)
    n_levels, _, n_feat = enc.table.shape
    rows = enc.table.view(-1, n_feat)[idx.long()]                               # [L,N,8,F]
    out = (rows * w.unsqueeze(-1)).sum(2)
    return out.permute(1, 0, 2).reshape(x.shape[0], n_levels * n_feat)


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Mean wall time in ms over ``repeat`` calls after one warm-up, synchronising CUDA around the loop."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=262144, help="number of points")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant on CUDA")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    enc = HashGridEncoder(device=device, compile=False)
    x = torch.rand(args.n, 3, device=device)
    print(f"{enc}\ndevice={device} threads={torch.get_num_threads()} n={args.n} "
          f"lookups/pass={args.n * enc.n_levels * 8:,}")

    def step(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for module in encoders:
                module.zero_grad(set_to_none=True)
            forward().square().sum().backward()
        return run

    encoders = [enc]
    variants: dict[str, Callable[[], torch.Tensor]] = {"custom op (eager)": lambda: enc(x)}
    if device.type == "cuda" and not args.no_compile:
        compiled = HashGridEncoder(device=device, compile=True)
        compiled.load_state_dict(enc.state_dict())
        encoders.append(compiled)
        variants["custom op (compiled)"] = lambda: compiled(x)
    variants["autograd table[idx]"] = lambda: reference_forward(enc, x)
    print(f"{'variant':22s} {'fwd ms':>9s} {'fwd+bwd ms':>11s}")
    print(f"{'lookup only':22s} {timed(lambda: enc.corner_lookup(x), device, args.repeat):9.2f} {'':>11s}")
    for name, fwd in variants.items():
        with torch.no_grad():
            t_fwd = timed(fwd, device, args.repeat)
        t_all = timed(step(fwd), device, args.repeat)
        print(f"{name:22s} {t_fwd:9.2f} {t_all:11.2f}")
    if device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
