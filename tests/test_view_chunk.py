"""``view_chunk``: a step's views rendered and backpropagated a chunk at a time give the one-call step's gradients."""

import pytest
import torch

from recon_kit import config
from recon_kit.data.dataset import load_viewset
from recon_kit.train.trainer import Trainer


def _step_gradients(dataset, view_chunk: int, pass2: bool = False, method: str = "dmtet") -> tuple[dict, dict]:
    """One step's losses and gradients (the optimisers are not stepped), from the same seed and start."""
    cfg = config.resolve("cpu-small", {"data.resolution": 32, "geometry.grid_res": 16, "pass1.batch": 4,
                                       "pass2.batch": 4, "pass1.iterations": 2, "pass2.iterations": 2,
                                       "data.train_background": "white", "loss.kd_smooth": 0.0,
                                       "cameras.refine": True, "view_chunk": view_chunk, "device": "cpu",
                                       "geometry.method": method})
    torch.manual_seed(0)
    tr = Trainer(cfg, load_viewset(dataset))
    if pass2:
        tr.switch_to_pass2()
    tr._optimizer_step = lambda: None
    losses = tr._step()
    grads = {f"{i}.{j}": p.grad.detach().clone() for i, opt in enumerate(tr._optimizers())
             for j, group in enumerate(opt.param_groups) for p in group["params"] if p.grad is not None}
    return losses, grads


@pytest.mark.parametrize("pass2,method", [(False, "dmtet"), (True, "dmtet"), (False, "flexicubes")],
                         ids=["pass1", "pass2", "pass1-flexicubes"])
def test_chunked_views_match_one_call(demo_dataset, pass2, method):
    """FlexiCubes too: its regulariser shares the extraction's graph with the vertices the chunks render."""
    dataset = demo_dataset(64, 32, 0)
    losses, grads = _step_gradients(dataset, 0, pass2, method)
    for chunk in (1, 3):  # equal chunks, and a short last one
        chunk_losses, chunk_grads = _step_gradients(dataset, chunk, pass2, method)
        assert set(chunk_losses) == set(losses)
        for k in losses:
            assert torch.allclose(chunk_losses[k], losses[k], rtol=1e-5, atol=1e-8), k
        assert set(chunk_grads) == set(grads) and grads
        for k, g in grads.items():
            scale = g.abs().max().clamp_min(1e-12)
            assert ((chunk_grads[k] - g).abs().max() / scale) < 1e-4, (chunk, k)


def test_view_chunk_is_validated():
    with pytest.raises(config.ConfigError, match="view_chunk must be >= 0"):
        config.resolve("cpu-small", {"view_chunk": -1})
