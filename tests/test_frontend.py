"""Widget callbacks report errors in the panel; the headless rule; overrides as a JSON string; new run folders."""

from __future__ import annotations

import pytest

from recon_kit import config
from recon_kit.runs.folder import new_run_path
from recon_kit.runs.run import new_trainer
from recon_kit.viz import frontend
from recon_kit.viz.frontend import ErrorLine, live_frontend
from recon_kit.viz.widgets import TrainingPanel

pytest.importorskip("ipywidgets")


def test_error_line_guard_shows_one_red_line_with_details():
    line = ErrorLine()
    cb = line.guard(lambda: 1 / 0, "Start")
    assert cb() is None
    assert "Start failed: ZeroDivisionError: division by zero" in line.widget.value
    assert "<details" in line.widget.value and "Traceback" in line.last
    line.clear()
    assert line.widget.value == ""


def test_start_on_an_existing_run_folder_shows_the_error_in_the_panel(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    panel = TrainingPanel(config.resolve("cpu-small"), run_dir=str(run),
                          make_trainer=lambda c, folder, again: new_trainer(c, None, folder, resume=again))
    panel.start_button.click()
    assert "RunDirExistsError" in panel.errors.widget.value and str(run) in panel.errors.widget.value
    assert "not started" in panel.status.value and panel.thread is None


def test_live_frontend_rules(monkeypatch):
    monkeypatch.setenv("RECON_KIT_HEADLESS", "1")
    assert live_frontend() is False
    monkeypatch.setenv("RECON_KIT_HEADLESS", "0")
    assert live_frontend() is True
    monkeypatch.delenv("RECON_KIT_HEADLESS")
    for ancestors, live in [(["python -m ipykernel_launcher", "/v/bin/python /v/bin/jupyter-lab"], True),
                            (["python -m jupyter lab --config x.py", "python -m pytest tests"], True),
                            (["/v/bin/python /v/bin/papermill 03_train.ipynb out.ipynb"], False),
                            (["python -m pytest tests/test_nb03.py", "bash"], False),
                            (["/v/bin/python /v/bin/recon-kit demo"], False),
                            (["bash", "init"], True)]:
        monkeypatch.setattr(frontend, "_ancestors", lambda a=ancestors: a)
        assert live_frontend() is live, ancestors


def test_overrides_as_json_string():
    assert config.resolve("cpu-small", '{"pass1.iterations": 7}').pass1.iterations == 7
    assert config.resolve("cpu-small", "").pass1.iterations == config.resolve("cpu-small").pass1.iterations
    with pytest.raises(ValueError, match="not valid JSON"):
        config.overrides_dict("{pass1.iterations: 7}")
    with pytest.raises(ValueError, match="dict or a JSON object"):
        config.overrides_dict("[1, 2]")


def test_new_run_path_is_fresh_and_timestamped():
    a, b = new_run_path(), new_run_path()
    assert a != b and a.parent.as_posix() == "outputs/runs" and not a.exists()


def test_panel_exposes_the_real_capture_switches():
    import ipywidgets as W

    cfg = config.resolve("cpu-small")
    panel = TrainingPanel(cfg, make_trainer=lambda c: None)
    assert isinstance(panel.controls["cameras.refine"], W.Checkbox)
    panel.controls["cameras.refine"].value = True
    panel.controls["loss.edge_px"].value = 8.0
    panel.controls["loss.depth_end"].value = 0.5
    assert cfg.cameras.refine is True and cfg.loss.edge_px == 8.0 and cfg.loss.depth_end == 0.5
    assert isinstance(panel.controls["geometry.method"], W.Dropdown)
    panel.controls["geometry.method"].value = "flexicubes"
    panel.controls["geometry.init"].value = "depth"
    assert cfg.geometry.method == "flexicubes" and cfg.geometry.init == "depth"
