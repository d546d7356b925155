"""The command line (python -m recon_kit.cli) and the demo runner's notebook wiring (recon_kit.notebooks)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from recon_kit import notebooks as rk_nb
from recon_kit.cli import main
from recon_kit.config import parse_overrides as _overrides, parse_value as _parse_value

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recon_kit.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_help():
    res = cli("--help")
    assert res.returncode == 0, res.stderr
    for word in ("demo", "prepare", "check-poses", "train"):
        assert word in res.stdout


@pytest.mark.parametrize("command", ["demo", "prepare", "check-poses", "train"])
def test_subcommand_help(command):
    res = cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert f"recon-kit {command}" in res.stdout


def test_parser_imports_nothing_heavy():
    code = ("import sys, recon_kit.cli as c; c.build_parser().parse_args(['demo']); "
            "heavy = [m for m in ('torch', 'papermill', 'numpy', 'pandas') if m in sys.modules]; print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_no_command_is_a_usage_error():
    res = cli()
    assert res.returncode == 2 and "usage:" in res.stderr


@pytest.mark.parametrize("args", [
    ["prepare", "{missing}", "{tmp}/out"],
    ["check-poses", "{missing}"],
    ["train", "cpu-small", "--dataset-dir", "{missing}", "--run-dir", "{tmp}/run"],
    ["demo", "--dataset", "{missing}", "--output-dir", "{tmp}/demo"],
])
def test_bad_path_is_one_line_exit_2(tmp_path, args):
    missing = tmp_path / "no_such_folder"
    res = cli(*[a.format(missing=missing, tmp=tmp_path) for a in args])
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert str(missing) in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_missing_config_file(tmp_path):
    res = cli("train", str(tmp_path / "cfg.yaml"), "--dataset-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 2 and "cfg.yaml" in res.stderr and "Traceback" not in res.stderr


def test_debug_shows_traceback(tmp_path):
    missing = tmp_path / "nope"
    for args in (["--debug", "prepare", str(missing), str(tmp_path / "o")],
                 ["prepare", str(missing), str(tmp_path / "o"), "--debug"]):
        res = cli(*args)
        assert res.returncode != 0
        assert "Traceback" in res.stderr and "FileNotFoundError" in res.stderr


def test_demo_refuses_non_empty_output(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("x")
    assert main(["demo", "--output-dir", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "demo") in err and "--overwrite" in err
    assert (tmp_path / "demo" / "keep.txt").exists()


def test_set_values():
    assert _parse_value("500") == 500 and _parse_value("0.5") == 0.5 and _parse_value("true") is True
    assert _parse_value("[1, 2]") == [1, 2] and _parse_value("cpu-small") == "cpu-small"
    assert _overrides(["steps=10", "lr=1e-3", "name=a=b"]) == {"steps": 10, "lr": 0.001, "name": "a=b"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _overrides(["steps"])


# run_demo wiring, on four stand-in notebooks --------------------------------------------------------------------
def _notebook(path: Path, params: str, body: str) -> None:
    nbformat = pytest.importorskip("nbformat")  # a device machine may lack it; the CLI tests above need none
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


RECORD = ("import json, pathlib\n({target}).mkdir(parents=True, exist_ok=True)\n"
          "({target} / 'params_{n}.json').write_text(json.dumps({{k: v for k, v in globals().items() "
          "if k in {names}}}))\n")


def _fake_notebooks(folder: Path, drop_02_dataset_dir: bool = False, trim: bool = False) -> None:
    folder.mkdir()
    p01 = 'input_dir: str = "demo"  # capture\noutput_dir: str = "x"  # root\nresolutions: list = [256]  # sizes\n' \
          'overwrite: bool = False  # replace\n' + ('trim_px: float = 0.0  # rim\n' if trim else '')
    _notebook(folder / rk_nb.NOTEBOOKS[0], p01,
              RECORD.format(target="pathlib.Path(output_dir)", n="01",
                            names=["input_dir", "output_dir", "resolutions", "overwrite", "trim_px"])
              + "d = pathlib.Path(output_dir) / '64'; d.mkdir(); (d / 'transforms.json').write_text('{}')\n"
              + "g = pathlib.Path(output_dir) / 'demo_capture'; g.mkdir(); (g / 'gt_mesh.obj').write_text('')\n")
    p02 = ('' if drop_02_dataset_dir else 'dataset_dir: str = "x"  # data\n') + \
        'output_dir: str = "y"  # report\ngrid_res: int = 64  # hull grid\n'
    _notebook(folder / rk_nb.NOTEBOOKS[1], p02,
              RECORD.format(target="pathlib.Path(output_dir)", n="02",
                            names=["dataset_dir", "output_dir", "grid_res"]))
    p03 = 'dataset_dir: str = "x"  # data\nrun_dir: str = "r"  # run\npreset: str = "gpu-default"  # preset\n' \
          'overrides: dict = {}  # config keys\ninteractive: bool = True  # widgets\n'
    _notebook(folder / rk_nb.NOTEBOOKS[2], p03,
              RECORD.format(target="pathlib.Path(run_dir)", n="03",
                            names=["dataset_dir", "run_dir", "preset", "overrides", "interactive"])
              + "(pathlib.Path(run_dir) / 'mesh').mkdir()\n(pathlib.Path(run_dir) / 'mesh/model.glb').write_text('')\n"
              + "(pathlib.Path(run_dir) / 'viewer.html').write_text('')\n")
    p04 = 'run_dir: str = "r"  # run\ngt_mesh: str = ""  # ground truth\n'
    _notebook(folder / rk_nb.NOTEBOOKS[3], p04,
              RECORD.format(target="pathlib.Path(run_dir) / 'inspect'", n="04", names=["run_dir", "gt_mesh"]))


def test_demo_missing_wiring_parameter_fails_before_running(tmp_path):
    _fake_notebooks(tmp_path / "nbs", drop_02_dataset_dir=True)
    with pytest.raises(rk_nb.NotebookParameterError) as exc:
        rk_nb.run_demo(tmp_path / "out", notebooks_dir=tmp_path / "nbs", device="cpu", echo=lambda *a: None)
    msg = str(exc.value)
    assert "02_check_poses.ipynb" in msg and "'dataset_dir'" in msg and "grid_res: int = 64" in msg
    assert not (tmp_path / "out" / "notebooks").exists()


def test_run_notebook_rejects_unknown_parameters(tmp_path):
    _fake_notebooks(tmp_path / "nbs")
    with pytest.raises(rk_nb.NotebookParameterError, match="stepz.*grid_res"):
        rk_nb.run_notebook(rk_nb.NOTEBOOKS[1], tmp_path / "o.ipynb", {"stepz": 1}, notebooks_dir=tmp_path / "nbs")


@pytest.mark.slow
def test_demo_trims_a_capture_folders_masks(tmp_path):
    _fake_notebooks(tmp_path / "nbs", trim=True)
    capture = tmp_path / "capture"
    capture.mkdir()
    rk_nb.run_demo(tmp_path / "out", dataset=capture, notebooks_dir=tmp_path / "nbs", device="cpu", quick=True,
                   echo=lambda *a: None, timeout=120)
    p01 = json.loads((tmp_path / "out/data/params_01.json").read_text())
    assert p01["input_dir"] == str(capture) and p01["trim_px"] == rk_nb.CAPTURE_TRIM_PX


@pytest.mark.slow
def test_demo_wires_notebooks(tmp_path):
    _fake_notebooks(tmp_path / "nbs")
    lines: list[str] = []
    res = rk_nb.run_demo(tmp_path / "out", notebooks_dir=tmp_path / "nbs", device="cpu", quick=True,
                         overrides={"steps": 5}, echo=lambda *a: lines.append(" ".join(map(str, a))), timeout=120)
    out = tmp_path / "out"
    p01 = json.loads((out / "data/params_01.json").read_text())
    p02 = json.loads((out / "posecheck/params_02.json").read_text())
    p03 = json.loads((out / "run/params_03.json").read_text())
    p04 = json.loads((out / "run/inspect/params_04.json").read_text())
    assert p01 == {"input_dir": "demo", "output_dir": str(out / "data"), "resolutions": [64], "overwrite": False}
    assert p02 == {"dataset_dir": str(out / "data"), "output_dir": str(out / "posecheck"), "grid_res": 32}
    assert p03 == {"dataset_dir": str(out / "data"), "run_dir": str(out / "run"), "preset": "cpu-small",
                   "overrides": {"steps": 5}, "interactive": False}
    assert p04 == {"run_dir": str(out / "run"), "gt_mesh": str(out / "data/demo_capture/gt_mesh.obj")}
    assert sorted(p.name for p in (out / "notebooks").iterdir()) == sorted(rk_nb.NOTEBOOKS)
    assert set(res.results) == {"mesh", "viewer"} and set(res.missing) == {"turntable"}
    text = "\n".join(lines)
    assert str(out / "run/mesh/model.glb") in text and "not produced" in text
    assert json.loads((out / "demo.json").read_text())["preset"] == "cpu-small"
    # a second run into the same folder needs overwrite
    with pytest.raises(FileExistsError, match="overwrite"):
        rk_nb.run_demo(out, notebooks_dir=tmp_path / "nbs", device="cpu", echo=lambda *a: None)


def test_check_poses_writes_a_calibrated_copy(tmp_path):
    from recon_kit.data import dataset as rk_dataset
    from recon_kit import synth

    cap = synth.write_demo_capture(tmp_path / "capture", resolution=64, n_test=0)
    rk_dataset.prepare_dataset(cap, tmp_path / "data", resolutions=(64,), progress=False)
    ds = tmp_path / "data" / "64"
    before = (ds / "transforms.json").read_text()
    res = cli("check-poses", str(ds), "--grid-res", "32", "--mesh-scale", "2.2", "--write-corrected",
              "--apply-calibration")
    assert res.returncode == 0, res.stderr
    written = json.loads((ds / "transforms_corrected.json").read_text())
    assert "camera_angle_x_was" in written["recon_kit_calibration"] and "corrected transforms written" in res.stdout
    assert (ds / "transforms.json").read_text() == before
    again = cli("check-poses", str(ds), "--grid-res", "32", "--write-corrected", "--apply-calibration")
    assert again.returncode != 0 and "overwrite" in again.stderr


def _notebook_parameters(name: str) -> dict:
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    out = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.AnnAssign):
            out[node.target.id] = ast.literal_eval(node.value)
    return out


def test_cli_names_and_defaults_follow_the_library_and_the_notebooks():
    """One name per parameter: the CLI's fields are the library function's parameters (same defaults) and the
    notebook's parameters cell uses the same names (same defaults where the notebook does not pick its own).
    ``workspace`` is the notebooks' and the CLI's own: the folder the default paths follow from."""
    import dataclasses
    import inspect as pyinspect

    from recon_kit.cli import CheckPoses, Prepare
    from recon_kit.data.dataset import prepare_dataset
    from recon_kit.posecheck import run_check

    for cls, func, notebook, own in ((Prepare, prepare_dataset, "01_prepare_data.ipynb",
                                      {"workspace", "input_dir", "output_dir", "resolutions", "align"}),
                                     (CheckPoses, run_check, "02_check_poses.ipynb",
                                      {"workspace", "dataset_dir", "output_dir"})):
        params = pyinspect.signature(func).parameters
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, default in fields.items():
            if name == "workspace":
                continue
            assert name in params, f"{cls.__name__}.{name} is not a parameter of {func.__name__}"
            if params[name].default is not pyinspect.Parameter.empty and default is not dataclasses.MISSING:
                assert default == params[name].default, (cls.__name__, name)
        nb = _notebook_parameters(notebook)
        for name, value in nb.items():
            assert name in fields, f"{notebook} parameter {name!r} has no CLI flag in {cls.__name__}"
            if name not in own:
                assert fields[name] == value, (notebook, name, fields[name], value)


def test_train_takes_typed_config_flags(tmp_path):
    from recon_kit.cli import parse

    cmd = parse(["train", "cpu-small", "--dataset-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"),
                 "--pass1.iterations", "7", "--material.kd-min", "0", "0.1", "0", "--geometry.init", "sphere",
                 "--set", "pass2.iterations=3"])
    assert cmd.overrides() == {"pass1.iterations": 7, "material.kd_min": [0.0, 0.1, 0.0], "geometry.init": "sphere",
                               "pass2.iterations": 3}
