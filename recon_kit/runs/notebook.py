"""Execute a numbered notebook headlessly with papermill (parameters checked against its ``parameters`` cell).

The engine behind notebook-driven sweeps (:class:`recon_kit.runs.sweep.Sweep`) and the demo (:mod:`recon_kit.notebooks`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


REPO_ROOT = Path(__file__).resolve().parents[2]


NOTEBOOK_DIR = REPO_ROOT / "notebooks"


KERNEL_NAME = "python3"


class NotebookParameterError(ValueError):
    """A notebook does not declare a parameter the caller must pass."""


class NotebookFailed(RuntimeError):
    """A cell raised while papermill executed the notebook; the executed copy is at ``output``."""

    def __init__(self, name: str, output: Path, cell_index: int | None, ename: str, evalue: str):
        self.name, self.output, self.cell_index, self.ename, self.evalue = name, output, cell_index, ename, evalue
        where = f" in cell {cell_index}" if cell_index is not None else ""
        super().__init__(f"notebook {name} failed{where}: {ename}: {evalue} (executed copy: {output})")


def _resolve_notebook(name: str | os.PathLike[str], notebooks_dir: str | os.PathLike[str] | None = None) -> Path:
    p = Path(name)
    if not p.is_absolute() and not p.exists():
        p = Path(notebooks_dir or NOTEBOOK_DIR) / p
    if not p.exists():
        raise FileNotFoundError(f"notebook {p} does not exist")
    return p


def notebook_parameters(name: str | os.PathLike[str], notebooks_dir: str | os.PathLike[str] | None = None) -> dict:
    """``{name: {"inferred_type_name", "default", "help"}}`` of the notebook's parameters cell."""
    import papermill

    return dict(papermill.inspect_notebook(str(_resolve_notebook(name, notebooks_dir))))


def _describe(params: Mapping[str, Any]) -> str:
    if not params:
        return "(none: the notebook has no cell tagged 'parameters')"
    return ", ".join(f"{k}: {v.get('inferred_type_name', '?')} = {v.get('default')}" for k, v in params.items())


def run_notebook(
    name: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None = None,
    *,
    optional: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike[str] = REPO_ROOT,
    timeout: float | None = None,
    start_timeout: float = 120,
    log_output: bool = False,
    notebooks_dir: str | os.PathLike[str] | None = None,
    stream: bool = False,
) -> Path:
    """Execute ``notebooks/<name>`` into ``out_path`` with papermill (kernel ``python3``, no progress bar).

    ``parameters`` must all be declared by the notebook (else :class:`NotebookParameterError`, listing what it
    declares); ``optional`` ones are passed only if declared. ``timeout`` is papermill's per-cell limit in seconds
    (None: no limit). A failing cell raises :class:`NotebookFailed` naming the executed copy. ``stream``: print
    one line per executed cell and pass the notebook's own output (e.g. the training progress bar) through to this
    process's stdout/stderr as it comes.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    src = _resolve_notebook(name, notebooks_dir)
    declared = notebook_parameters(src)
    parameters = dict(parameters or {})
    missing = [k for k in parameters if k not in declared]
    if missing:
        raise NotebookParameterError(
            f"notebook {src.name} does not declare parameter(s) {', '.join(missing)}; "
            f"its parameters cell has: {_describe(declared)}"
        )
    params = {**{k: v for k, v in (optional or {}).items() if k in declared}, **parameters}
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(src),
            str(out),
            parameters=params,
            kernel_name=KERNEL_NAME,
            cwd=str(cwd),
            progress_bar=False,
            log_output=log_output,
            execution_timeout=timeout,
            start_timeout=start_timeout,
            # hide ipykernel's start-up warnings (e.g. "running over TCP without encryption"); errors still show
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
            **(_streaming(src.name) if stream and not log_output else {}),
        )
    except PapermillExecutionError as err:
        raise NotebookFailed(src.name, out, err.cell_index, err.ename, err.evalue) from err
    return out


def _streaming(name: str) -> dict:
    """papermill/nbclient options that stream a notebook: one line per executed code cell (its first line and the
    time it took) and the notebook's stderr raw, which carries the progress bars (a tqdm bar stays one line on a
    terminal); printed results stay in the executed notebook."""
    started = [time.perf_counter()]

    def cell_done(cell=None, cell_index=None, **_):
        tags = set(cell.metadata.get("tags", [])) if cell is not None else set()
        if cell is None or cell.cell_type != "code" or tags & {"parameters", "injected-parameters"}:
            return
        lines = [ln.strip() for ln in cell.source.splitlines() if ln.strip() and not ln.startswith(("%", "#"))]
        first = next((ln for ln in lines if not ln.startswith(("from ", "import "))), lines[0] if lines else "")
        now = time.perf_counter()
        print(f"      {name} cell {cell_index}: {first[:70]} ({now - started[0]:.1f} s)", flush=True)
        started[0] = now

    def cell_start(**_):
        started[0] = time.perf_counter()

    if not sys.stderr.isatty():  # logs, not a terminal: a bar line every 10 s instead of every 0.1 s
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    return {"stderr_file": sys.stderr, "on_cell_execute": cell_start,
            "on_cell_executed": cell_done}
