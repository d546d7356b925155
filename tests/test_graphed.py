"""Pass 2 replayed from a CUDA graph (``cuda_graph``): the three-part step matches the plain step (on the CPU
without the graph, on CUDA with it), the fixed-capacity pixel index, and the one-line error where it cannot run."""

import pytest
import torch

from recon_kit import config
from recon_kit.data import dataset as rk_dataset
from recon_kit.render.renderer import compact_indices
from recon_kit.train.graphed import GraphedViews
from recon_kit.train.trainer import Trainer


@pytest.fixture(scope="module")
def views(demo_dataset):
    return rk_dataset.load_viewset(demo_dataset(64, 48, 0))


def _cfg(device: str, **over):
    return config.resolve("cpu-small", {"pass1.iterations": 3, "pass2.iterations": 3, "pass2.batch": 3,
                                        "data.resolution": 48, "geometry.grid_res": 24, "geometry.hull_res": 32,
                                        "material.texture_res": 32, "data.train_background": "white",
                                        "cameras.refine": True, "device": device, "snapshot_every": 0,
                                        "checkpoint_every": 0, **over})


def _one_step(tr: Trainer, idx: list[int]) -> tuple[dict, dict]:
    """Losses and gradients of one step on views ``idx`` (the optimiser step is held back: parameters stay)."""
    grads = {}

    def grab() -> None:
        grads.update({f"{i}.{j}.{k}": p.grad.detach().clone() for i, opt in enumerate(tr._optimizers())
                      for j, g in enumerate(opt.param_groups) for k, p in enumerate(g["params"]) if p.grad is not None})
    tr._optimizer_step, tr._next_batch = grab, lambda batch: torch.tensor(idx)
    torch.manual_seed(1)
    losses = tr._step()
    return {k: float(v) for k, v in losses.items()}, grads


def _assert_same_step(tr: Trainer, graphed: GraphedViews, idx: list[int]) -> None:
    tr.graphed = None
    plain, plain_grads = _one_step(tr, idx)
    tr.graphed = graphed
    got, got_grads = _one_step(tr, idx)
    assert set(got) == set(plain) and {"color", "laplace", "total"} <= set(got)
    for k, v in plain.items():
        assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-7), k
    assert set(got_grads) == set(plain_grads) and len(plain_grads) >= 4   # offsets, 3 textures (+ light, cameras)
    for k, g in plain_grads.items():
        assert (got_grads[k] - g).abs().max() <= 1e-3 * g.abs().max().clamp_min(1e-12), k


def _pass2(cfg, views) -> Trainer:
    torch.manual_seed(0)
    tr = Trainer(cfg, views)
    tr.run(cfg.pass1.iterations, progress=False)
    tr.switch_to_pass2()
    tr.it = 300                                     # the smoothness ramp at 0.6: a tensor inside the graph
    return tr


@pytest.mark.parametrize("over", [{}, {"shade_chunk": 700},
                                  {"cameras.refine": False, "light.learn_light": False}],
                         ids=["refine+light", "shade_chunk", "fixed-cameras-and-light"])
def test_three_part_step_matches_the_plain_step_on_cpu(views, over):
    """Cameras and light learned or not (their gradients go back through the eager part or are not needed),
    and with the shading in checkpointed chunks."""
    tr = _pass2(_cfg("cpu", **over), views)
    graphed = GraphedViews(tr, capture=False)
    _assert_same_step(tr, graphed, [0, 2, 4])
    _assert_same_step(tr, graphed, [5, 1, 3])      # other views, the same capacity
    assert graphed.recordings == 1 and graphed.capacity >= 1


def test_a_failed_capture_falls_back_to_the_same_step(views, monkeypatch, caplog):
    """A graph that cannot be recorded (an operation the capture refuses) leaves a warning and the three-part
    step without the graph, whose results are the plain step's."""
    tr = _pass2(_cfg("cpu"), views)

    def refuse(self) -> None:
        raise RuntimeError("operation not permitted when stream is capturing")
    monkeypatch.setattr(GraphedViews, "_capture", refuse)
    graphed = GraphedViews(tr, capture=True)
    with caplog.at_level("WARNING"):
        _assert_same_step(tr, graphed, [0, 2, 4])
    assert not graphed.capture and graphed.graph is None
    assert "recording the CUDA graph failed (operation not permitted" in caplog.text


@pytest.mark.gpu
def test_cuda_graph_step_matches_the_eager_step(views):
    """Recorded once, replayed on other views; then a graphed run trains through pass 2. Without the kd
    smoothness term: its random offsets come from the graph's own draws, not the eager step's."""
    tr = _pass2(_cfg("cuda", cuda_graph="on", **{"loss.kd_smooth": 0.0}), views)
    graphed = tr.graphed
    assert graphed is not None and graphed.capture
    _assert_same_step(tr, graphed, [0, 2, 4])
    _assert_same_step(tr, graphed, [5, 1, 3])
    assert graphed.graph is not None and graphed.recordings == 1
    tr2 = Trainer(_cfg("cuda", cuda_graph="on", **{"pass2.iterations": 20}), views)
    tr2.run(progress=False)
    assert tr2.done and tr2.graphed is not None and tr2.graphed.graph is not None
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in tr2.history)


@pytest.mark.gpu
def test_cuda_graph_with_chunked_shading(views):
    """Shading in checkpointed chunks inside the graph (the checkpoints must not read the RNG state, which a
    capture refuses): the graph is recorded, not given up."""
    tr = _pass2(_cfg("cuda", cuda_graph="on", shade_chunk=500, **{"pass2.iterations": 310}), views)
    start = tr.global_iteration()
    tr.run(5, progress=False)
    assert tr.global_iteration() == start + 5     # _pass2 set the iteration to 300: steps left to run
    assert tr.graphed is not None and tr.graphed.graph is not None
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in tr.history)


def test_cuda_graph_where_it_cannot_run(views, caplog):
    """``on`` on the CPU is a one-line error naming the fix; ``auto`` (the GPU presets') trains without it."""
    with pytest.raises(ValueError, match=r"cuda_graph=on needs a CUDA device .*set cuda_graph=auto .* or off"):
        Trainer(_cfg("cpu", cuda_graph="on"), views)
    with caplog.at_level("INFO"):
        tr = _pass2(_cfg("cpu", cuda_graph="auto"), views)
    assert tr.graphed is None and "pass 2 runs without the CUDA graph, which needs a CUDA device" in caplog.text


def test_no_covered_pixel_runs_the_plain_step(views):
    """Views that miss the mesh: the graphed step hands the step back to the plain one."""
    tr = _pass2(_cfg("cpu"), views)
    graphed = GraphedViews(tr, capture=False)
    mesh = tr.current_mesh()
    far = mesh.with_positions(mesh.v_pos + 100.0)
    bg = torch.ones(1, 48, 48, 3)
    assert graphed.step(far, torch.tensor([0]), bg, 0.5) is None and graphed.recordings == 0


def test_compact_indices_fixed_capacity():
    flags = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    gather, scatter = compact_indices(flags, 6)
    assert gather.tolist() == [1, 3, 4, 7, 1, 3] and scatter.tolist() == [1, 3, 4, 7, 8, 8]
    gather, scatter = compact_indices(flags, 3)     # over capacity: the first three
    assert gather.tolist() == scatter.tolist() == [1, 3, 4]
    gather, scatter = compact_indices(torch.zeros(5, dtype=torch.bool), 2)
    assert gather.tolist() == [4, 4] and scatter.tolist() == [5, 5]
