"""A live, orbitable 3-D view of a mesh, rendered by the kit's own renderer, inside JupyterLab.

The browser side is a small anywidget (an ``<img>`` that turns drags into orbit and the wheel into zoom messages);
the kernel side renders the mesh with :func:`recon_kit.render.render_mesh` (any backend, on the mesh's device) at
the user's camera and sends a PNG back. Renders happen in a worker thread, one at a time: requests that arrive
while a frame is being drawn are merged into one (frames are skipped, never queued), and the browser sends its
next drag only after a frame arrived, so a slow renderer degrades to fewer frames, not to lag.

Two sources:

* a :class:`~recon_kit.train.trainer.Trainer` (``follow(trainer)``; the training panel of notebook 03): the current mesh,
  material and light, refreshed every ``every`` steps (and at most ``max_fps`` per second) at low resolution;
* a finished run (``LiveView.of_run(run)``; notebook 04): the exported mesh and textures, with a choice of
  environment map for relighting and "snap to training view", which shows the render beside the photo.

Shading: ``pbr`` (split-sum, the trained light), ``albedo`` (kd), ``normals``; ``edges`` overlays the triangle
edges (from the rasteriser's barycentrics) and ``cameras`` the training cameras' frustums.
"""

from __future__ import annotations

import copy
import io
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from recon_kit.cameras import Camera, stack_matrices
from recon_kit.color import linear_to_srgb
from recon_kit.render import get_rasterizer, make_background, render_mesh
from recon_kit.viz.frontend import ErrorLine
from recon_kit.viz.orbit import OrbitCamera

__all__ = ["OrbitCamera", "LiveView", "OrbitImage", "render_view", "SHADINGS"]

#: Shading choices of the view and the ``bsdf`` of :func:`render_mesh` each one uses.
SHADINGS = {"PBR": "pbr", "albedo": "kd", "normals": "normal"}

_ESM = """
function render({ model, el }) {
  const img = document.createElement("img");
  img.className = "rk-live-view";
  img.draggable = false;
  img.alt = "3-D view: drag to orbit, scroll to zoom";
  img.style.cssText = "cursor:grab;touch-action:none;user-select:none;display:block;border:1px solid #bbb;" +
                      "background:#fff;image-rendering:auto";
  let url = null, waiting = false, timer = null, last = null;
  let acc = { dx: 0, dy: 0, zoom: 0 };
  function flush() {
    if (waiting || (!acc.dx && !acc.dy && !acc.zoom)) return;
    model.send({ event: "orbit", dx: acc.dx, dy: acc.dy, zoom: acc.zoom, width: img.clientWidth || 1 });
    acc = { dx: 0, dy: 0, zoom: 0 };
    waiting = true;
    clearTimeout(timer);
    timer = setTimeout(() => { waiting = false; flush(); }, 1500);
  }
  function show() {
    const v = model.get("png");
    img.style.width = model.get("display_width") + "px";
    if (v && v.byteLength) {
      const next = URL.createObjectURL(new Blob([v], { type: "image/png" }));
      img.src = next;
      if (url) URL.revokeObjectURL(url);
      url = next;
    }
    waiting = false;
    flush();
  }
  img.addEventListener("pointerdown", (e) => {
    last = [e.clientX, e.clientY]; img.setPointerCapture(e.pointerId); img.style.cursor = "grabbing";
  });
  img.addEventListener("pointermove", (e) => {
    if (!last) return;
    acc.dx += e.clientX - last[0]; acc.dy += e.clientY - last[1]; last = [e.clientX, e.clientY]; flush();
  });
  const up = (e) => { last = null; img.style.cursor = "grab"; };
  img.addEventListener("pointerup", up);
  img.addEventListener("pointercancel", up);
  img.addEventListener("wheel", (e) => { e.preventDefault(); acc.zoom += Math.sign(e.deltaY); flush(); },
                       { passive: false });
  model.on("change:png", show);
  model.on("change:display_width", show);
  show();
  el.appendChild(img);
  return () => { clearTimeout(timer); if (url) URL.revokeObjectURL(url); };
}
export default { render };
"""


def _orbit_image_class():
    import anywidget
    import traitlets

    class OrbitImage(anywidget.AnyWidget):
        """An image the user drags (``orbit`` messages: pixel deltas) and scrolls (``zoom``: wheel steps)."""

        _esm = _ESM
        png = traitlets.Bytes(b"").tag(sync=True)
        display_width = traitlets.Int(384).tag(sync=True)

    return OrbitImage


def OrbitImage(**kw):  # noqa: N802 - a factory so importing this module does not need anywidget
    """The browser half of :class:`LiveView` (an anywidget); see the module docstring."""
    return _orbit_image_class()(**kw)


def _default_material(gb, rasterizer=None) -> dict:
    grey = torch.full_like(gb.pos, 0.6)
    ks = torch.zeros_like(gb.pos)
    ks[..., 1] = 0.5
    nrm = torch.zeros_like(gb.pos)
    nrm[..., 2] = 1.0
    return {"kd": grey, "ks": ks, "normal": nrm}


@torch.no_grad()
def render_view(mesh, camera: Camera, material: Callable | None = None, light=None, shading: str = "PBR",
                edges: bool = False, rasterizer=None, background: str = "white") -> np.ndarray:
    """sRGB uint8 ``[H,W,3]`` of ``mesh`` seen by ``camera`` with the kit's renderer (``shading``: a key of
    :data:`SHADINGS`; ``edges`` darkens pixels near a triangle edge)."""
    device = mesh.v_pos.device
    H, W = camera.height, camera.width
    bg = make_background(background, (1, H, W), device)
    if mesh.num_faces == 0:
        return np.full((H, W, 3), 255 if background == "white" else 0, np.uint8)
    bsdf = SHADINGS[shading]
    if bsdf == "pbr" and light is None:
        from recon_kit.render.envlight import EnvLight

        light = EnvLight(16, init=1.0, device=device)
    rast = rasterizer or get_rasterizer("auto", device)
    out = render_mesh(rast, mesh, stack_matrices([camera], device=device), (H, W), material or _default_material,
                      light, bg, bsdf=bsdf, compile=False)
    rgb = out["rgb_linear"][0].clamp(0, 1)
    if edges:
        r = out["gbuffer"].rast[0]
        bary = torch.stack([r[..., 0], r[..., 1], 1 - r[..., 0] - r[..., 1]], -1)
        on_edge = ((bary.min(-1).values < 0.06) & (r[..., 3] > 0)).unsqueeze(-1)
        rgb = torch.where(on_edge, rgb * 0.15 + torch.tensor([0.0, 0.05, 0.2], device=device), rgb)
    return (linear_to_srgb(rgb) * 255 + 0.5).byte().cpu().numpy()


def draw_frustums(image: np.ndarray, view: Camera, cameras: Sequence[Camera], depth: float,
                  highlight: int | None = None) -> np.ndarray:
    """``image`` with the training cameras' frustums (apex + image-plane rectangle at ``depth``) drawn in."""
    from PIL import Image, ImageDraw

    from recon_kit.viz.cameras import frustum_corners

    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    sx, sy = image.shape[1] / view.width, image.shape[0] / view.height
    for i, cam in enumerate(cameras):
        pts = np.vstack([cam.position[None], frustum_corners(cam, depth)])
        uv, z = view.project(pts)
        if (z <= view.near).any():
            continue
        uv = uv * [sx, sy]
        colour = (230, 60, 30) if i == highlight else (40, 90, 200)
        for a, b in ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1)):
            draw.line([tuple(uv[a]), tuple(uv[b])], fill=colour, width=2 if i == highlight else 1)
        draw.line([tuple(uv[1]), tuple(uv[2])], fill=(220, 30, 30), width=2)  # the top edge: which way is up
    return np.asarray(pil)


def _no_scene():
    raise RuntimeError("nothing to show yet: press Start")


def environment_choices(extra: str | None = None) -> dict:
    """Relighting choices for :meth:`LiveView.of_run`: the run's learned light, the demo's sunny sky, a uniform
    white light, and ``extra`` (a lat-long ``.hdr`` path) when given."""
    from recon_kit.synth import demo_environment

    envs = {"learned light": None, "sunny sky (demo)": demo_environment(64), "uniform white": np.ones((32, 64, 3),
                                                                                                     np.float32)}
    if extra:
        envs[str(extra)] = str(extra)
    return envs


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class LiveView:
    """The orbitable 3-D view: ``widget`` (image + toggles), ``render()`` (one frame, synchronously), and
    ``request()`` (a frame from the worker thread, merged with any request still waiting).

    ``scene()`` returns ``(mesh, material_fn, light, rasterizer)`` of what is shown now; it is called in the
    worker thread. ``cameras``: the training cameras (frustums, snap). ``photos``: sRGB uint8 ``[N,H,W,3]``
    shown beside the render after a snap. ``environments``: name -> lat-long HDR array or ``.hdr`` path for
    relighting (the first entry is the default; ``None`` as a value means the scene's own light).
    """

    def __init__(self, scene: Callable[[], tuple], cameras: Sequence[Camera] = (), photos: np.ndarray | None = None,
                 resolution: int = 160, display_width: int = 384, environments: dict | None = None,
                 every: int = 5, max_fps: float = 4.0, background: str = "white") -> None:
        import ipywidgets as W

        self.scene = scene
        self.cameras = list(cameras)
        self.photos = photos
        self.resolution, self.display_width = resolution, display_width
        self.every, self.min_interval = max(1, every), 1.0 / max_fps
        self.background = background
        self.environments = dict(environments or {})
        self._lights: dict[str, Any] = {}
        self.orbit = OrbitCamera()
        self._framed = False
        self.frames, self.render_seconds, self.skipped = 0, 0.0, 0
        self._want = threading.Event()
        self._busy = threading.Lock()
        self._last_request = 0.0
        self._worker: threading.Thread | None = None
        self.errors = ErrorLine()
        self.image = OrbitImage(display_width=display_width)
        self.image.on_msg(self.errors.guard(self._on_msg, "orbiting"))
        self.shading = W.ToggleButtons(options=list(SHADINGS), value="PBR", description="shading",
                                       style={"button_width": "84px", "description_width": "60px"})
        self.edges = W.Checkbox(value=False, description="edges", indent=False, layout=W.Layout(width="80px"))
        self.show_cameras = W.Checkbox(value=False, description="cameras", indent=False,
                                       layout=W.Layout(width="90px"), disabled=not self.cameras)
        self.reset_button = W.Button(description="reset view", icon="home", layout=W.Layout(width="110px"))
        self.info = W.HTML(value="<small>drag to orbit, scroll to zoom</small>")
        self.show_cameras.observe(lambda _: setattr(self, "_framed", False), names="value")
        for w in (self.shading, self.edges, self.show_cameras):
            w.observe(self.errors.guard(lambda _: self.request(force=True), "changing the view"), names="value")
        self.reset_button.on_click(self.errors.guard(lambda _: self.reset(), "reset view"))
        rows = [W.HBox([self.shading]), W.HBox([self.edges, self.show_cameras, self.reset_button])]
        self.environment = self.view_select = self.snap_button = None
        if self.environments:
            self.environment = W.Dropdown(options=list(self.environments), description="light",
                                          style={"description_width": "60px"}, layout=W.Layout(width="300px"))
            self.environment.observe(self.errors.guard(lambda _: self.request(force=True), "relighting"),
                                     names="value")
            rows.append(self.environment)
        if self.cameras:
            names = [c.name or f"view {i}" for i, c in enumerate(self.cameras)]
            self.view_select = W.Dropdown(options=[(n, i) for i, n in enumerate(names)], description="view",
                                          style={"description_width": "60px"}, layout=W.Layout(width="220px"))
            self.snap_button = W.Button(description="snap to training view", icon="camera",
                                        layout=W.Layout(width="180px"))
            self.snap_button.on_click(self.errors.guard(lambda _: self.snap(self.view_select.value),
                                                        "snap to training view"))
            rows.append(W.HBox([self.view_select, self.snap_button]))
        self.widget = W.VBox([self.image, *rows, self.info, self.errors.widget])

    # ---- sources -----------------------------------------------------------------------------------------
    @classmethod
    def for_trainer(cls, trainer=None, **kw) -> "LiveView":
        """A view that shows ``trainer``'s current mesh (attach another with :meth:`follow`)."""
        view = cls(scene=_no_scene, **kw)
        if trainer is not None:
            view.follow(trainer)
        return view

    def follow(self, trainer) -> "LiveView":
        """Show ``trainer``'s current mesh, material and light (re-read at every frame).

        The light is a shallow copy of the trainer's (the same ``base``, its own pre-integrated maps): the training
        thread rebuilds the maps with gradients while this view renders from another thread, and the two must not
        swap each other's build halfway (that ended training with "cannot register a hook")."""
        lights: dict = {}

        def light():
            if lights.get("of") is not trainer.light:
                lights.update(of=trainer.light, copy=copy.copy(trainer.light))
            return lights["copy"]

        self.scene = lambda: (trainer.current_mesh(), trainer.phase.material_fn(), light(), trainer.rast)
        if not self.cameras:
            self.cameras = list(trainer.views.cameras)
            self.show_cameras.disabled = False
        self._framed = False
        self.request(force=True)
        return self

    @classmethod
    def of_run(cls, run, views=None, environments: dict | None = None, device: str = "cpu", **kw) -> "LiveView":
        """A view of a finished run (:class:`recon_kit.runs.run.Run`): its textured mesh under its learned light
        or one of ``environments``; ``views`` (a :class:`~recon_kit.data.dataset.ViewSet`) enables the snap."""
        mesh, material, light = run.mesh.to(device), run.material(device), run.light
        rast = get_rasterizer("auto", device)
        envs = environments if environments is not None else environment_choices()
        photos = None
        if views is not None:
            bg = 1.0 if run.val_background == "white" else 0.0
            m = views.mask[..., None]
            photos = (linear_to_srgb((views.rgb_linear * m + bg * (1 - m)).clamp(0, 1)) * 255 + 0.5).byte().numpy()
        view = cls(scene=lambda: (mesh, material.material, light, rast),
                   cameras=views.cameras if views is not None else (), photos=photos, environments=envs, **kw)
        return view

    # ---- interaction -------------------------------------------------------------------------------------
    def _on_msg(self, _widget, content, _buffers) -> None:
        if content.get("event") != "orbit":
            return
        width = max(float(content.get("width", 1)), 1.0)
        if content.get("dx") or content.get("dy"):
            self.orbit.orbit(float(content.get("dx", 0)) / width, float(content.get("dy", 0)) / width)
        if content.get("zoom"):
            self.orbit.zoom(float(content["zoom"]))
        self.request(force=True)

    def reset(self) -> None:
        self.orbit = OrbitCamera()
        self._framed = False
        self.request(force=True)

    def snap(self, index: int) -> None:
        """Look through training camera ``index``; the photo is shown beside the render."""
        self.orbit.snap(self.cameras[index])
        self._framed = True
        self.request(force=True)

    def step_done(self, trainer) -> None:
        """Called by the training loop after each step: ask for a frame every ``every`` steps (never blocks)."""
        if trainer.global_iteration() % self.every == 0 or trainer.done:
            self.request()

    # ---- rendering ---------------------------------------------------------------------------------------
    def _light(self, scene_light):
        name = self.environment.value if self.environment is not None else None
        source = self.environments.get(name) if name else None
        if source is None:
            return scene_light
        if name not in self._lights:
            from recon_kit.runs.run import light_from_latlong

            device = scene_light.device if hasattr(scene_light, "device") else "cpu"
            self._lights[name] = light_from_latlong(source, 64, device)
        return self._lights[name]

    @torch.no_grad()
    def render(self) -> np.ndarray:
        """One frame (sRGB uint8), synchronously: the render, the frustums when ticked, the photo after a snap."""
        mesh, material, light, rast = self.scene()
        if not self._framed and mesh.num_faces:
            points = mesh.v_pos.detach().cpu().numpy()
            if self.show_cameras.value and self.cameras:  # the whole rig in the frame
                points = np.vstack([points, [c.position for c in self.cameras]])
            self.orbit.frame(points)
            self._framed = True
        snapped = self.orbit.snapped is not None
        width = self.resolution
        height = self.resolution if not snapped else max(1, round(width * self.orbit.snapped.height
                                                                  / self.orbit.snapped.width))
        cam = self.orbit.camera(width, height)
        img = render_view(mesh, cam, material, self._light(light), self.shading.value, self.edges.value, rast,
                          self.background)
        if self.show_cameras.value and self.cameras:
            depth = 0.15 * float(np.median([np.linalg.norm(c.position - np.asarray(self.orbit.target))
                                            for c in self.cameras]))
            hi = self.view_select.value if (snapped and self.view_select is not None) else None
            img = draw_frustums(img, cam, self.cameras, depth, hi)
        if snapped and self.photos is not None and self.view_select is not None:
            from PIL import Image

            photo = np.asarray(Image.fromarray(self.photos[self.view_select.value]).resize((width, height)))
            img = np.concatenate([img, photo], 1)
        return img

    def refresh(self) -> None:
        """Render now in this thread and send the frame to the browser."""
        t0 = time.perf_counter()
        img = self.render()
        self.render_seconds += time.perf_counter() - t0
        self.frames += 1
        self.image.png = _png(img)
        snapped = self.orbit.snapped is not None
        self.image.display_width = (2 if snapped and self.photos is not None else 1) * self.display_width
        note = "render | photo; drag to orbit away" if snapped and self.photos is not None else \
            "drag to orbit, scroll to zoom"
        self.info.value = (f"<small>{note} · frame {self.frames}, {self.render_seconds / self.frames * 1000:.0f} ms"
                           f"/frame at {self.resolution}px</small>")

    def request(self, force: bool = False) -> None:
        """Ask the worker thread for a frame; merged with a waiting request, skipped while one is drawn unless
        ``force`` (user input), and at most ``max_fps`` per second for training updates."""
        now = time.monotonic()
        if not force and (self._busy.locked() or now - self._last_request < self.min_interval):
            self.skipped += 1
            return
        self._last_request = now
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="recon-kit-live-view", daemon=True)
            self._worker.start()
        self._want.set()

    def _work(self) -> None:
        while True:
            self._want.wait()
            self._want.clear()
            with self._busy:
                try:
                    self.refresh()
                    if self.errors.last is not None:
                        self.errors.clear()
                except Exception as exc:  # noqa: BLE001 - shown in the view, the next frame may succeed
                    self.errors.show(exc, "rendering the 3-D view")

    def display(self):
        from IPython.display import display

        display(self.widget)
        return self
