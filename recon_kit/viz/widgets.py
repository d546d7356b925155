"""A live training panel for JupyterLab: sliders, Start / Pause / Stop, loss plot and render vs reference.

The optimisation runs in a background thread and the cell that shows the panel returns at once: that is
the only pattern measured to keep slider changes flowing to a running loop with ipykernel 7 and ipywidgets 8
(a loop inside the cell, ``await`` loops and jupyter-ui-poll all fail). Slider values are written into the
trainer's config; the trainer reads learning rates and loss weights at every step (``LIVE`` keys), while the
other keys (grid, resolution, ...) apply when training is started again from scratch.
"""

from __future__ import annotations

import io
import threading
import traceback
from typing import Callable

from recon_kit.config import AUTO_OR_NUMBER, ReconConfig, coerce_auto
from recon_kit.viz.frontend import ErrorLine

#: Config keys a running trainer picks up at its next step.
LIVE = ("pass1.lr_pos", "pass1.lr_mat", "pass2.lr_pos", "pass2.lr_mat", "loss.coverage", "loss.kd_smooth",
        "loss.occlusion", "loss.light_reg", "loss.depth", "geometry.laplace_scale", "geometry.laplace_floor",
        "geometry.sdf_regularizer", "geometry.cull_views",
        "pass1.batch", "pass2.batch", "loss.depth_end")

#: (key, kind, min, max, step) of the sliders and fields the panel shows; a "choice" has its options in place of min.
CONTROLS = (
    ("geometry.method", "choice", ("dmtet", "flexicubes"), None, None),
    ("geometry.init", "choice", ("hull", "depth", "sphere", "random"), None, None),
    ("pass1.iterations", "int", 0, 10000, 10), ("pass2.iterations", "int", 0, 10000, 10),
    ("pass1.lr_pos", "log", -4, -0.5, 0.05), ("pass1.lr_mat", "log", -4, -0.5, 0.05),
    ("pass2.lr_pos", "log", -4, -0.5, 0.05), ("pass2.lr_mat", "log", -4, -0.5, 0.05),
    ("geometry.grid_res", "int", 16, 256, 2), ("geometry.mesh_scale", "float", 0.5, 4.0, 0.05),
    ("geometry.laplace_scale", "float", 0.0, 20000.0, 100.0), ("geometry.laplace_floor", "float", 0.0, 1.0, 0.05),
    ("geometry.cull_views", "int", 0, 256, 8), ("data.resolution", "int", 32, 2048, 32),
    ("pass1.batch", "int", 1, 16, 1), ("pass2.batch", "int", 1, 16, 1),
    ("loss.coverage", "float", 0.0, 10.0, 0.1), ("loss.kd_smooth", "float", 0.0, 1.0, 0.01),
    ("loss.depth", "float", 0.0, 10.0, 0.1), ("loss.depth_end", "float", 0.0, 1.0, 0.05),
    ("loss.edge_px", "float", 0.0, 32.0, 0.5), ("cameras.refine", "bool", 0, 1, 1),
)


def get_key(cfg: ReconConfig, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def set_key(cfg: ReconConfig, key: str, value) -> None:
    section, name = key.split(".")
    if key in AUTO_OR_NUMBER:
        setattr(getattr(cfg, section), name, coerce_auto(key, value))
        return
    setattr(getattr(cfg, section), name, type(getattr(getattr(cfg, section), name))(value))


def loss_plot_png(history: list[dict], width: float = 4.5, height: float = 2.6) -> bytes:
    """PNG of the total loss (log scale) against the global iteration, pass 2 shaded."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    ax = fig.add_subplot(111)
    if history:
        its = [h["global_it"] for h in history]
        ax.plot(its, [h["total"] for h in history], lw=1.2, color="C0", label="total")
        if "color" in history[0]:
            ax.plot(its, [h.get("color", float("nan")) for h in history], lw=0.8, color="C1", label="colour")
        p2 = [h["global_it"] for h in history if h["pass"] == "pass2"]
        if p2:
            ax.axvspan(p2[0], max(its), color="0.9", zorder=0, label="pass 2")
        ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("iteration", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _png(image) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class TrainingPanel:
    """Widgets around a :class:`~recon_kit.train.trainer.Trainer` built by ``make_trainer(cfg)``.

    With ``run_dir`` given, the panel shows the run folder (editable) and a "resume" box, and builds trainers
    with ``make_trainer(cfg, run_dir, resume)``: resuming is the user's explicit choice. Every callback's error
    shows in the panel as one red line (traceback on demand), and ``error`` keeps the last traceback.
    ``live_view`` (a :class:`~recon_kit.viz.live_view.LiveView`) is placed in the panel and follows the trainer.
    ``display()`` shows the panel; ``run_headless()`` trains synchronously (papermill) with the same trainer.
    """

    def __init__(self, cfg: ReconConfig, make_trainer: Callable[..., object], preview_every: int = 10,
                 on_finish: Callable[[object], None] | None = None, run_dir: str | None = None,
                 resume: bool = False, live_view=None) -> None:
        import ipywidgets as W

        self.cfg = cfg
        self.make_trainer = make_trainer
        self.preview_every = preview_every
        self.on_finish = on_finish
        self.trainer = None
        self.thread: threading.Thread | None = None
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._built_from: dict | None = None
        self.error: str | None = None
        self.errors = ErrorLine()
        self.live_view = live_view
        self.controls: dict[str, W.Widget] = {}
        for key, kind, lo, hi, step in CONTROLS:
            value = get_key(cfg, key)
            desc = key + ("" if key in LIVE else " *")
            style = {"description_width": "160px"}
            if key in AUTO_OR_NUMBER:  # "auto" or a number, typed
                w = W.Text(value=str(value), description=desc, style=style, continuous_update=False)
            elif kind == "bool":
                w = W.Checkbox(value=bool(value), description=desc, style=style, indent=False)
            elif kind == "choice":
                w = W.Dropdown(options=list(lo), value=value, description=desc, style=style)
            elif kind == "int":
                w = W.IntSlider(value=value, min=lo, max=max(hi, value), step=step, description=desc, style=style,
                                continuous_update=False)
            elif kind == "log":
                w = W.FloatLogSlider(value=value, base=10, min=lo, max=hi, step=step, description=desc,
                                     style=style, readout_format=".2e", continuous_update=False)
            else:
                w = W.FloatSlider(value=value, min=lo, max=max(hi, value), step=step, description=desc,
                                  style=style, continuous_update=False)
            w.layout = W.Layout(width="440px")
            w.observe(self.errors.guard(lambda change, k=key: self._on_change(k, change["new"]), f"setting {key}"),
                      names="value")
            self.controls[key] = w
        self.start_button = W.Button(description="Start", button_style="success", icon="play")
        self.pause_button = W.ToggleButton(description="Pause", icon="pause")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop")
        self.start_button.on_click(self.errors.guard(lambda _: self.start(), "Start"))
        self.pause_button.observe(self.errors.guard(
            lambda c: self._pause.set() if c["new"] else self._pause.clear(), "Pause"), names="value")
        self.stop_button.on_click(self.errors.guard(lambda _: self.stop(), "Stop"))
        self.run_dir_field = W.Text(value=str(run_dir or ""), description="run folder", style={"description_width": "80px"},
                                    layout=W.Layout(width="440px"))
        self.resume_box = W.Checkbox(value=bool(resume), description="resume the run in this folder", indent=False)
        self._uses_run_dir = run_dir is not None
        self.progress = W.IntProgress(value=0, min=0, max=cfg.pass1.iterations + cfg.pass2.iterations,
                                      description="progress")
        self.status = W.HTML(value="<code>idle</code>")
        self.image = W.Image(format="png", layout=W.Layout(width="512px"))
        self.plot = W.Image(format="png", value=loss_plot_png([]))
        note = W.HTML("<small>* applies at the next Start (a new run); the others apply at the next step.</small>")
        left = W.VBox(list(self.controls.values()) + [note])
        run_row = [W.HBox([self.run_dir_field, self.resume_box])] if self._uses_run_dir else []
        view = [live_view.widget] if live_view is not None else []
        right = W.VBox(run_row + [W.HBox([self.start_button, self.pause_button, self.stop_button]), self.progress,
                                  self.status, self.errors.widget, *view, self.image, self.plot])
        self.widget = W.HBox([left, right])

    # ---- control -----------------------------------------------------------------------------------
    def _on_change(self, key: str, value) -> None:
        set_key(self.cfg, key, value)
        if self.trainer is not None and key in LIVE:
            set_key(self.trainer.cfg, key, value)
            self._set_status(f"{key} = {value:.4g} applies from step {self.trainer.global_iteration()}")

    def _restart_needed(self) -> bool:
        current = {k: get_key(self.cfg, k) for k, *_ in CONTROLS if k not in LIVE}
        return self.trainer is None or self.trainer.done or current != self._built_from

    def _set_status(self, text: str) -> None:
        self.status.value = f"<code>{text}</code>"

    def start(self) -> None:
        """Start (or continue) training in a background thread; the calling cell returns at once."""
        if self.thread is not None and self.thread.is_alive():
            self.pause_button.value = False
            return
        self._stop.clear()
        self.errors.clear()
        self.pause_button.value = False
        if self._restart_needed():
            self._set_status("building the trainer ...")
            try:
                self.trainer = self._make()
            except Exception:
                self._set_status("not started (see the red line below)")
                raise
            self._built_from = {k: get_key(self.cfg, k) for k, *_ in CONTROLS if k not in LIVE}
            self.progress.max = self.trainer.total_iterations()
            if self.live_view is not None:
                self.live_view.follow(self.trainer)
        self.thread = threading.Thread(target=self._loop, name="recon-kit-train", daemon=True)
        self.thread.start()

    def _make(self):
        if not self._uses_run_dir:
            return self.make_trainer(self.cfg)
        run_dir = self.run_dir_field.value.strip()
        if not run_dir:
            raise ValueError("the run folder is empty: type a folder name (a new one, or an existing one with "
                             "'resume' ticked)")
        return self.make_trainer(self.cfg, run_dir, self.resume_box.value)

    def stop(self) -> None:
        self._stop.set()
        self._pause.clear()

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _loop(self) -> None:
        tr = self.trainer
        try:
            while not self._stop.is_set() and not tr.done:
                if self._pause.is_set():
                    self._set_status(f"paused at {tr.pass_name} step {tr.it}")
                    self._stop.wait(0.1)
                    continue
                result = tr.step()
                self.progress.value = tr.global_iteration()
                if tr.it % self.preview_every == 0 or tr.done:
                    self.refresh(result)
                if self.live_view is not None:
                    self.live_view.step_done(tr)
            self._set_status(("finished" if tr.done else "stopped") + f" at {tr.pass_name} step {tr.it}")
            if tr.done and self.on_finish is not None:
                self.on_finish(tr)
                self._set_status(f"finished and exported: {getattr(tr, 'run_dir', '')}")
        except Exception as exc:  # surface the error in the panel instead of dying silently in the thread
            self.error = traceback.format_exc()
            self.errors.show(exc, "training")
            self._set_status(f"stopped by an error at {tr.pass_name} step {tr.it}")

    def refresh(self, result=None) -> None:
        tr = self.trainer
        self.image.value = _png(tr.preview(0, size=min(256, tr.cfg.data.resolution)))
        self.plot.value = loss_plot_png(tr.history)
        if result is not None:
            lr = tr.opt_mat.param_groups[0]["lr"]
            self._set_status(f"{result.pass_name} step={tr.it} loss={float(result.losses['total']):.4f} "
                             f"lr_mat={lr:.3g} lr_setting={get_key(tr.cfg, tr.pass_name + '.lr_mat'):.3g}")

    def display(self):
        from IPython.display import display

        display(self.widget)
        return self

    def run_headless(self, progress: bool = True):
        """Train to the end in this thread (papermill, scripts) and return the trainer."""
        self.trainer = self._make()
        self.trainer.run(progress="text" if progress else False)  # nobody sees a widget bar here
        if self.on_finish is not None:
            self.on_finish(self.trainer)
        return self.trainer
