"""One typed, validated configuration for a reconstruction run, with presets and nvdiffrec key mapping.

``ReconConfig`` is a tree of dataclasses. :meth:`ReconConfig.from_dict` rejects unknown keys (listing the
valid ones) and bad values; :func:`apply_overrides` takes flat dotted keys (``{"pass1.iterations": 200}``) as
notebooks, widgets and sweeps produce them. Grid resolutions are in nvdiffrec's units (64, 128): the kit's
own tetrahedral grid of ``grid_res // 2`` cubes per axis has about the same number of vertices and tets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it and what is allowed."""


@dataclass
class DataConfig:
    resolution: int = 256
    """Training resolution (square images are resized to it)."""
    val_background: Literal["white", "black"] = "white"
    """Background for previews and metrics: white, black."""
    train_background: Literal["random", "white", "black"] = "random"
    """Background composited behind training targets: random, white, black."""
    use_depth: bool = True
    """Use the capture's depth maps when present (scale/shift-invariant loss)."""


@dataclass
class GeometryConfig:
    method: Literal["dmtet", "flexicubes"] = "dmtet"
    """Pass-1 surface: dmtet (marching tets, nvdiffrec) or flexicubes (dual marching cubes with learned per-cube
    weights, Shen et al. 2023; same lattice and vertex count as dmtet at the same grid_res)."""
    grid_res: int = 64
    """In nvdiffrec units (64 or 128); kit grid = grid_res // 2 cubes per axis (for dmtet and flexicubes)."""
    mesh_scale: float | Literal["auto"] = "auto"
    """Side of the cube the grid spans, centred at the origin; "auto": fitted to the visual hull with a margin when
    training starts (recon_kit.autoscale)."""
    init: Literal["hull", "depth", "sphere", "random"] = "hull"
    """Hull (visual hull of the masks), depth (depth maps fused with the hull), sphere, random (nvdiffrec)."""
    hull_res: int = 96
    """Voxels per axis for the visual hull."""
    sdf_regularizer: float = 0.2
    """Initial weight of the SDF sign-flip regulariser (decays to 0.01)."""
    laplace_scale: float = 3000.0
    """Pass-2 Laplacian weight (relative mode), decays linearly over pass 2 (to laplace_floor x this)."""
    laplace_floor: float = 0.0
    """Share of laplace_scale the decaying pass-2 Laplacian weight never drops below (0 = to 0, as nvdiffrec):
    the weight's last stretch at 0 lets pass 2 roughen the surface. 0.3 in every preset but seed-nvdiffrec
    (docs/benchmarks.md sections 16-17: smoother, lower Chamfer and higher held-out PSNR on CPU and H200)."""
    cull_views: int = 0
    """Before unwrapping, drop the faces that no render shows, from this many directions around the mesh and
    from the training views: the pockets and tunnels DMTet grows inside an object, which no photo constrains
    (docs/benchmarks.md section 18); 0 = keep every face (nvdiffrec). 48 in every preset but seed-nvdiffrec."""
    max_faces: int = 200_000
    """Pass-2 meshes above this are decimated before UV unwrapping."""
    unwrap_faces: int = 0
    """Decimate the pass-1 mesh to this many faces before UV unwrapping (xatlas' time grows faster than the face
    count; pass 2 re-fits the vertices and the baked normal map carries the detail); 0 = only max_faces. 20000
    unwraps a 45k-face surface ~9x faster (docs/benchmarks.md §13); off until its quality on the shoe is measured."""

    def unwrap_target(self) -> int:
        """Face count the pass-1 mesh is decimated to before unwrapping."""
        return min(self.max_faces, self.unwrap_faces) if self.unwrap_faces > 0 else self.max_faces


@dataclass
class MaterialConfig:
    encoder: Literal["auto", "torch", "tcnn"] = "auto"
    """Auto (tinycudann when it passes a subprocess probe, else torch), torch, tcnn."""
    hash_levels: int = 16
    """Hash-grid resolution levels."""
    hash_features: int = 2
    """Features per level."""
    hash_log2_size: int = 19
    """Log2 of the hash table size per level."""
    hash_base_res: int = 16
    """Coarsest grid resolution."""
    hash_max_res: int = 4096
    """Finest grid resolution."""
    mlp_width: int = 32
    """Hidden width of the material MLP."""
    kd_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Lowest base colour (linear RGB) the material field can output."""
    kd_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Highest base colour (linear RGB)."""
    ks_min: tuple[float, float, float] = (0.0, 0.08, 0.0)
    """Lowest (occlusion, roughness, metallic); roughness >= 0.08 as nvdiffrec."""
    ks_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Highest (occlusion, roughness, metallic)."""
    texture_res: int = 1024
    """Baked texture size for pass 2 and export."""
    perturb_normal: bool = True
    """Learn a tangent-space normal map."""


@dataclass
class LightConfig:
    env_res: int = 256
    """Cube face size of the learned environment map."""
    learn_light: bool = True
    """Optimise the environment light."""
    lock_light_pass2: bool = False
    """Freeze the light in pass 2."""


@dataclass
class LossConfig:
    color: Literal["logl1", "l1", "mse"] = "logl1"
    """Logl1, l1, mse."""
    coverage: float = 1.0
    """Weight of the mask/coverage MSE."""
    kd_smooth: float = 0.03
    """Albedo smoothness, ramped in over 500 iterations."""
    occlusion: float = 0.001
    """Ks occlusion-channel regulariser, ramped in over 500 iterations."""
    light_reg: float = 0.005
    """Environment white-balance regulariser."""
    depth: float = 1.0
    """Scale/shift-invariant depth loss, used when the data has depth (0 = off)."""
    depth_end: float = 1.0
    """Depth weight factor reached at the end of pass 1 (linear decay from 1), kept in pass 2."""
    edge_px: float = 0.0
    """Band (px at 1024^2, scaled with the resolution) inside mask edges where only photo foreground trains
    colour and depth is not used: keeps the photos' background out of the albedo (white fringes)."""
    depth_prior: float = 0.0
    """Pass 1: weight of a sign prior from the fused depth maps: grid vertices they put clearly outside (in front
    of an observed surface) or inside are pulled to that side, so no surface grows there (extra shells, hidden
    tunnels); follows the depth weight's decay (0 = off; needs depth maps)."""


@dataclass
class CameraRefineConfig:
    refine: bool = False
    """Learn small per-view pose, zoom and principal-point corrections with the scene."""
    lr: float = 5e-4
    """Adam learning rate of the corrections."""
    reg: float = 0.1
    """Weight of the squared-correction penalty (also pins the gauge)."""
    start: float = 0.1
    """Fraction of pass 1 before the corrections start to learn (the surface forms first)."""


@dataclass
class PassConfig:
    iterations: int = 5000
    """Training steps of this pass."""
    batch: int = 2
    """Views per step."""
    lr_pos: float = 0.03
    """Geometry learning rate (SDF/deformation or vertex offsets)."""
    lr_mat: float = 0.03
    """Material + light learning rate."""
    warmup: int = 0
    """Steps of linear learning-rate warm-up."""
    lr_decay: float = 0.0002
    """Lr x 10^(-lr_decay * it) after warm-up, as nvdiffrec."""


@dataclass
class ReconConfig:
    data: DataConfig = field(default_factory=DataConfig)
    """Images and backgrounds."""
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    """Tet grid, initialisation and mesh regularisers."""
    material: MaterialConfig = field(default_factory=MaterialConfig)
    """Hash-grid material field and baked textures."""
    light: LightConfig = field(default_factory=LightConfig)
    """Learned environment light."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights."""
    cameras: CameraRefineConfig = field(default_factory=CameraRefineConfig)
    """Per-view camera refinement."""
    pass1: PassConfig = field(default_factory=PassConfig)
    """Pass 1: DMTet geometry + neural materials."""
    pass2: PassConfig = field(default_factory=lambda: PassConfig(lr_pos=0.01, lr_mat=0.01, warmup=100))
    """Pass 2: fixed mesh + baked textures."""
    seed: int = 0
    """Random seed (views order, init, backgrounds)."""
    device: str = "auto"
    """Auto, cpu, cuda."""
    backend: Literal["auto", "torch", "nvdiffrast"] = "auto"
    """Auto, torch, nvdiffrast."""
    compile: Literal["auto", "on", "off"] = "auto"
    """Torch.compile of shading and hash grid: auto (on CUDA only), on, off."""
    cuda_graph: Literal["auto", "on", "off"] = "off"
    """Pass 2: replay each step's rendering, losses and backward from one CUDA graph around nvdiffrast's
    rasteriser, which stays eager (needs CUDA, nvdiffrast, one process): auto (where it can run), on, off."""
    shade_chunk: int = 0
    """Shade covered pixels this many at a time under activation checkpointing (0 = all at once): lower peak
    memory at high resolution (2048², batch 6) for one more shading forward per step."""
    view_chunk: int = 0
    """Render a step's views this many at a time, each chunk's losses backpropagated before the next is rendered,
    one optimiser step for all (0 = all at once): the same gradients with one chunk's per-pixel buffers alive."""
    checkpoint_every: int = 500
    """Checkpoint every N steps (0 = off)."""
    snapshot_every: int = 50
    """Training-animation frames (0 = off)."""
    log_every: int = 10
    """History.jsonl line every N steps."""
    guard_factor: float = 100.0
    """Divergence guard: a loss above this x its running median is divergence (0 = off)."""
    guard_every: int = 1
    """Divergence guard: read the losses back every N steps (1 = every step). Larger N lets the GPU run ahead of
    Python (one host sync less per step); a bad step is then caught up to N-1 steps late, but always before it
    reaches the history, a checkpoint or the good state (one process; distributed runs judge every step)."""

    # ---- construction and validation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "ReconConfig":
        cfg = _build(cls, data, source)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "ReconConfig":
        """Load a kit config JSON, or an nvdiffrec config JSON (detected by its keys) mapped to ours."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data.pop("_history", None)  # a run's config.json records its resume changes there
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); fix the file or pass a preset name") from None
        if _looks_like_nvdiffrec(data):
            return from_nvdiffrec(data, source=str(path))
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict:
        """Plain JSON data, as config.json holds it (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def validate(self) -> None:
        checks = [
            (self.data.resolution >= 16, "data.resolution must be >= 16"),
            (self.compile in ("auto", "on", "off"), "compile must be auto, on or off"),
            (self.cuda_graph in ("auto", "on", "off"), "cuda_graph must be auto, on or off"),
            (self.shade_chunk >= 0, "shade_chunk must be >= 0 (0 = shade every covered pixel at once)"),
            (self.view_chunk >= 0, "view_chunk must be >= 0 (0 = render a step's views at once)"),
            (self.loss.depth_prior >= 0, "loss.depth_prior must be >= 0 (0 = off)"),
            (self.loss.depth_prior == 0 or self.data.use_depth,
             "loss.depth_prior uses the depth maps, which data.use_depth=false turns off; set loss.depth_prior=0"),
            (self.data.val_background in ("white", "black"), "data.val_background must be white or black"),
            (self.data.train_background in ("random", "white", "black"),
             "data.train_background must be random, white or black"),
            (self.geometry.method in ("dmtet", "flexicubes"),
             f"geometry.method must be dmtet or flexicubes, got {self.geometry.method!r}"),
            (self.geometry.grid_res >= 8 and self.geometry.grid_res % 2 == 0, "geometry.grid_res must be even and >= 8"),
            (self.geometry.mesh_scale == "auto" or (isinstance(self.geometry.mesh_scale, float)
                                                    and self.geometry.mesh_scale > 0),
             "geometry.mesh_scale must be > 0 or 'auto'"),
            (self.geometry.init in ("hull", "depth", "sphere", "random"),
             "geometry.init must be hull, depth, sphere or random"),
            (self.geometry.unwrap_faces >= 0, "geometry.unwrap_faces must be >= 0 (0 = no extra decimation)"),
            (self.geometry.cull_views >= 0,
             "geometry.cull_views must be >= 0 (directions to look for hidden faces from; 0 = keep every face)"),
            (0 <= self.geometry.laplace_floor <= 1,
             "geometry.laplace_floor must be a share of geometry.laplace_scale in [0, 1] (0 = decay to 0)"),
            (self.material.encoder in ("auto", "torch", "tcnn"), "material.encoder must be auto, torch or tcnn"),
            (all(len(x) == 3 for x in (self.material.kd_min, self.material.kd_max, self.material.ks_min,
                                       self.material.ks_max)), "material kd/ks ranges need 3 values each"),
            (self.material.texture_res >= 16, "material.texture_res must be >= 16"),
            (self.loss.color in ("logl1", "l1", "mse"), "loss.color must be logl1, l1 or mse"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device must be auto, cpu or cuda"),
            (self.backend in ("auto", "torch", "nvdiffrast"), "backend must be auto, torch or nvdiffrast"),
            (self.checkpoint_every >= 0 and self.snapshot_every >= 0, "checkpoint_every/snapshot_every must be >= 0"),
            (self.guard_every >= 1, "guard_every must be >= 1 (1 = judge every step)"),
            (self.guard_factor >= 0, "guard_factor must be >= 0 (0 turns the divergence guard off)"),
        ]
        for p in ("pass1", "pass2"):
            pc: PassConfig = getattr(self, p)
            checks += [(pc.iterations >= 0, f"{p}.iterations must be >= 0"), (pc.batch >= 1, f"{p}.batch must be >= 1"),
                       (pc.lr_pos >= 0 and pc.lr_mat >= 0, f"{p} learning rates must be >= 0")]
        checks += [(self.cameras.lr >= 0 and self.cameras.reg >= 0, "cameras.lr and cameras.reg must be >= 0"),
                   (0 <= self.cameras.start <= 1, "cameras.start must be a fraction of pass 1 in [0, 1]")]
        for w in fields(self.loss):
            if w.name != "color":
                checks.append((getattr(self.loss, w.name) >= 0, f"loss.{w.name} must be >= 0"))
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ConfigError("invalid config: " + "; ".join(errors))


def _build(cls, data: dict, source: str, prefix: str = "", defaults=None):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: section {prefix or 'root'} must be a JSON object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(known))}")
    kwargs = {}
    defaults = cls() if defaults is None else defaults
    for name, value in data.items():
        current = getattr(defaults, name)
        if is_dataclass(current):  # start from this section's own defaults (pass2 differs from pass1)
            kwargs[name] = _build(type(current), value, source, f"{prefix}{name}.", current)
        else:
            kwargs[name] = _coerce(value, current, f"{prefix}{name}", source)
    return dataclasses.replace(defaults, **kwargs)


#: Keys that take "auto" or a number.
AUTO_OR_NUMBER = ("geometry.mesh_scale",)


def coerce_auto(key: str, value: Any) -> Any:
    """``"auto"`` as is, numbers and numeric strings as float, for the keys of :data:`AUTO_OR_NUMBER`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number or 'auto', got {value!r}") from None


def _coerce(value: Any, default: Any, key: str, source: str) -> Any:
    """Accept values of the default's type (ints for floats; 'true'/'false' strings for booleans)."""
    if key in AUTO_OR_NUMBER:
        return coerce_auto(key, value)
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}; use a plain number")
        return float(value)
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, tuple) and isinstance(value, (list, tuple)) and len(value) == len(default) \
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if not all(math.isfinite(v) for v in value):
            raise ConfigError(f"{source}: {key} must hold finite numbers, got {value!r}")
        return tuple(float(v) for v in value)
    elif isinstance(default, (str, list)) and isinstance(value, type(default)):
        if isinstance(value, list) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ConfigError(f"{source}: {key} must hold finite numbers, got {value!r}")
        return list(value) if isinstance(value, list) else value
    raise ConfigError(f"{source}: {key} must be {type(default).__name__}, got {value!r}")


def apply_overrides(cfg: ReconConfig, overrides: dict | None) -> ReconConfig:
    """A copy of ``cfg`` with flat dotted overrides applied and validated, e.g. ``{"pass1.batch": 4}``."""
    data = cfg.to_dict()
    for key, value in (overrides or {}).items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"override {key!r}: no section {part!r}; sections: "
                                  f"{', '.join(k for k, v in data.items() if isinstance(v, dict))}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {key!r}: unknown key; valid keys here: {', '.join(sorted(node))}")
        node[parts[-1]] = value
    return ReconConfig.from_dict(data, source="overrides")


# What makes the kit behave like nvdiffrec: its random SDF start and no depth loss.
NVDIFFREC_BEHAVIOUR = {"geometry": {"init": "random"}, "data": {"use_depth": False}}

def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` laid over it, section by section (presets built on other presets)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


# The user's shoe settings on a GPU (1024^2, batch 2, grid 128, 5000 + 5000 iterations); for real captures,
# hand-framed views are corrected and depth shapes pass 1, then hands over to the photos. With masks trimmed to
# the photos (prepare --trim-px 8) the shoe reaches 37.4-37.9 dB (docs/benchmarks.md section 23; edge weights,
# loss.edge_px, cost 0.7 dB in section 10 for half the fringe score). laplace_floor 0.3: section 17 (512² synthetic
# objects: Chamfer and held-out PSNR better on two of three, the shoe unchanged). cuda_graph auto: pass 2 replayed
# from a CUDA graph, 183 -> 84 s on the shoe at the same quality (section 23).
_GPU_DEFAULT = {"data": {"resolution": 1024},
                "geometry": {"grid_res": 128, "mesh_scale": "auto", "laplace_floor": 0.3, "cull_views": 48},
                "pass1": {"iterations": 5000, "batch": 2, "lr_pos": 0.03, "lr_mat": 0.03},
                "pass2": {"iterations": 5000, "batch": 2, "lr_pos": 0.01, "lr_mat": 0.01, "warmup": 100},
                "material": {"texture_res": 1024}, "snapshot_every": 100, "guard_every": 10,
                "loss": {"depth_end": 0.0}, "cameras": {"refine": True}, "cuda_graph": "auto"}

PRESETS: dict[str, dict] = {
    # Minutes on a 2-core CPU: the demo, CI and notebooks under papermill.
    "cpu-small": {"data": {"resolution": 128}, "geometry": {"grid_res": 48, "hull_res": 64, "laplace_scale": 1000.0,
                                                            "laplace_floor": 0.3, "cull_views": 48},
                  "material": {"texture_res": 256, "hash_levels": 8, "hash_log2_size": 15, "hash_max_res": 256},
                  "light": {"env_res": 32},
                  "pass1": {"iterations": 150, "batch": 2}, "pass2": {"iterations": 60, "batch": 2, "warmup": 10},
                  "checkpoint_every": 50, "snapshot_every": 10},
    "gpu-default": _GPU_DEFAULT,
    # gpu-default converging faster (issue 15): all 6 views per step, a short pass 1 and a longer pass 2 with
    # their schedules scaled to their length, eager shading (torch.compile's start-up costs more than it saves in
    # a run this short). The shoe: 39.1 dB 6-view PSNR in 165 s end to end, rougher in novel views
    # (docs/benchmarks.md section 12).
    "gpu-fast": _merged(_GPU_DEFAULT, {"pass1": {"iterations": 1000, "batch": 6, "lr_decay": 0.001},
                                       "pass2": {"iterations": 1600, "batch": 6, "warmup": 50, "lr_decay": 0.000625},
                                       "snapshot_every": 0, "compile": "off"}),
    # gpu-fast's recipe cut to the one-minute budget of issue 15: 300 + 400 steps of all 6 views, each pass's
    # learning-rate decay scaled to its length (lr_decay = 1 / iterations: 0.1 at pass 1's end, 0.13 at pass 2's
    # after its 50 warm-up steps). The shoe: 36.4-37.4 dB on an H200, rougher in novel views like gpu-fast
    # (docs/benchmarks.md sections 12, 15). The CUDA graph takes pass 2 19.6 -> 11.3 s (section 21); the pass-1
    # mesh decimated to 20,000 faces before xatlas, bake 4.2 -> 3.2 s; 45-54 s end to end (section 23).
    "gpu-minute": _merged(_GPU_DEFAULT, {"pass1": {"iterations": 300, "batch": 6, "lr_decay": 0.00333},
                                         "pass2": {"iterations": 400, "batch": 6, "warmup": 50, "lr_decay": 0.0025},
                                         "geometry": {"unwrap_faces": 20000},
                                         "snapshot_every": 0, "compile": "off"}),
    # gpu-default for captures whose cameras and depth maps are exact (synthetic renders, calibrated rigs): no
    # camera corrections, the depth weight kept, edge weights on (docs/benchmarks.md section 9: Chamfer 0.37-0.48 %
    # at 512², against 2.2-3.1 % with the corrections).
    "gpu-calibrated": _merged(_GPU_DEFAULT, {"cameras": {"refine": False}, "loss": {"depth_end": 1.0, "edge_px": 8.0}}),
    # nvdiffrec's own behaviour as closely as the kit allows (random SDF init, no depth, no camera or edge
    # corrections) at the user's nvdiffrec settings (1024^2, batch 2, grid 128, 5000 + 5000, lr 0.03 / 0.01).
    "seed-nvdiffrec": {"geometry": {"init": "random", "grid_res": 128, "mesh_scale": 2.1, "unwrap_faces": 0},  # NVDIFFREC_BEHAVIOUR +
                       "data": {"use_depth": False, "resolution": 1024},
                       "pass1": {"iterations": 5000, "batch": 2, "lr_pos": 0.03, "lr_mat": 0.03},
                       "pass2": {"iterations": 5000, "batch": 2, "lr_pos": 0.01, "lr_mat": 0.01, "warmup": 100},
                       "material": {"texture_res": 1024}},
}


def preset(name: str) -> ReconConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return ReconConfig.from_dict(PRESETS[name], source=f"preset {name}")


def overrides_dict(overrides: dict | str | None) -> dict:
    """Overrides as a dict: a dict as is, a JSON object string (``papermill -p overrides '{"pass1.iterations": 50}'``)
    parsed, empty or None as ``{}``."""
    if overrides is None:
        return {}
    if isinstance(overrides, str):
        if not overrides.strip():
            return {}
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"overrides {overrides!r} is not valid JSON ({err}); write e.g. "
                             '\'{"pass1.iterations": 300}\'') from None
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict or a JSON object string, got {type(overrides).__name__}: "
                         f"{overrides!r}")
    return overrides


def resolve(config: str | Path | ReconConfig | None, overrides: dict | str | None = None) -> ReconConfig:
    """A preset name, a JSON path (kit or nvdiffrec format), or a config object, plus overrides (a dict or a JSON
    object string, see :func:`overrides_dict`)."""
    overrides = overrides_dict(overrides)
    if isinstance(config, ReconConfig):
        base = config
    elif config is None or config == "":
        base = ReconConfig()
    elif str(config) in PRESETS:
        base = preset(str(config))
    else:
        base = ReconConfig.load(config)
    return apply_overrides(base, overrides)


# ---- nvdiffrec JSON ------------------------------------------------------------------------------------
_NVDIFFREC_IGNORED = {"ref_mesh", "out_dir", "display", "save_interval", "display_interval", "validate",
                      "random_textures", "spp", "layers", "custom_mip", "min_roughness", "local_rank",
                      "multi_gpu", "pre_load", "display_res", "isosurface", "camera_space_light", "envmap",
                      "env_scale", "mtl_override", "base_mesh", "cam_near_far", "laplace", "loss", "nrm_min",
                      "nrm_max"}


def _looks_like_nvdiffrec(data: dict) -> bool:
    return isinstance(data, dict) and bool({"ref_mesh", "dmtet_grid", "train_res", "iter"} & set(data))


def from_nvdiffrec(data: dict, source: str = "nvdiffrec config") -> ReconConfig:
    """Map an nvdiffrec JSON config onto a :class:`ReconConfig` (nvdiffrec's own random SDF init, no depth).

    Keys with no counterpart (display panels, output folders, ...) are accepted and ignored; keys nvdiffrec
    itself does not know are rejected, as nvdiffrec should have done.
    """
    known = _NVDIFFREC_IGNORED | {"iter", "batch", "train_res", "texture_res", "learning_rate", "ks_min",
                                  "ks_max", "kd_min", "kd_max", "dmtet_grid", "mesh_scale", "laplace_scale",
                                  "sdf_regularizer", "background", "learn_light", "lock_light", "lock_pos",
                                  "config"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown nvdiffrec key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    cfg = ReconConfig.from_dict(NVDIFFREC_BEHAVIOUR, source=source).to_dict()
    it = data.get("iter", 5000)
    batch = data.get("batch", 1)
    for p in ("pass1", "pass2"):
        cfg[p]["iterations"], cfg[p]["batch"] = it, batch
    lr = data.get("learning_rate", 0.01)
    lrs = lr if isinstance(lr, list) else [lr, lr]
    for p, value in zip(("pass1", "pass2"), lrs + lrs[-1:] * (2 - len(lrs))):
        pos, mat = (value if isinstance(value, list) else [value, value])
        cfg[p]["lr_pos"], cfg[p]["lr_mat"] = float(pos), float(mat)
    if "train_res" in data:
        res = data["train_res"]
        cfg["data"]["resolution"] = int(res[0] if isinstance(res, list) else res)
    if "texture_res" in data:
        tr = data["texture_res"]
        cfg["material"]["texture_res"] = int(tr[0] if isinstance(tr, list) else tr)
    for key in ("ks_min", "ks_max", "kd_min", "kd_max"):
        if key in data:
            cfg["material"][key] = [float(x) for x in data[key][:3]]
    if "dmtet_grid" in data:
        cfg["geometry"]["grid_res"] = int(data["dmtet_grid"])
    for key in ("mesh_scale", "laplace_scale", "sdf_regularizer"):
        if key in data:
            cfg["geometry"][key] = float(data[key])
    if data.get("background") in ("white", "black"):
        cfg["data"]["val_background"] = data["background"]
    if "learn_light" in data:
        cfg["light"]["learn_light"] = bool(data["learn_light"])
    if "lock_light" in data:
        cfg["light"]["lock_light_pass2"] = bool(data["lock_light"])
    if data.get("lock_pos"):
        cfg["pass2"]["lr_pos"] = 0.0
    return ReconConfig.from_dict(cfg, source=source)


def setting_matches(saved: Any, wanted: Any) -> bool:
    """Whether a run's saved setting satisfies the wanted one: equal, or wanted ``"auto"`` and saved the number
    it was fitted to (``geometry.mesh_scale``), so resumes and re-run sweeps accept their own fitted values."""
    if wanted == "auto" and isinstance(saved, (int, float)) and not isinstance(saved, bool):
        return True
    return saved == wanted


def flatten(cfg: ReconConfig) -> dict:
    """``{"pass1.iterations": 5000, ...}``: the dotted keys :func:`apply_overrides` takes."""
    out = {}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            out[section] = values
    return out


def table(cfg: ReconConfig):
    """The config as a two-column pandas table (key, value), for notebooks."""
    import pandas as pd

    return pd.DataFrame(list(flatten(cfg).items()), columns=["key", "value"]).set_index("key")


def parse_value(text: str) -> Any:
    """``--set key=value`` values: JSON when it parses (numbers, true/false, lists, quoted strings), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        lowered = text.lower()
        if lowered in {"true", "false"}:
            return lowered == "true"
        if lowered in {"none", "null"}:
            return None
        return text


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` (the CLI's ``--set`` and torchrun's) as an overrides dict for :func:`resolve`."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. --set steps=500), got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a config dataclass (the string literal under each field): help for the CLI,
    tooltips for widgets."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = nxt.value.value
    return docs
