"""What a notebook needs to know about its frontend: is a live one attached, and how to report callback errors.

``live_frontend()`` decides whether a notebook shows interactive widgets or does the work itself: a kernel
started by a Jupyter server (JupyterLab, Notebook, Voila, VS Code) has a user who can press buttons; one started
by papermill, nbclient, nbconvert, nbmake or pytest has not, so notebook 03 then trains to the end in its cell.

``ErrorLine`` is the one red line a widget panel shows when one of its callbacks raised (the traceback folds
out on demand); ``ErrorLine.guard`` wraps a callback so no exception ends up only in JupyterLab's log console.
"""

from __future__ import annotations

import functools
import html
import os
import re
import traceback
from typing import Callable

__all__ = ["live_frontend", "ErrorLine"]

#: Command lines of processes that start kernels for a user in front of a browser or an editor.
_FRONTENDS = re.compile(r"jupyter[-_ ](lab|notebook|server|nbclassic)\b|jupyterlab|jupyter_server|notebook\.app|"
                        r"voila|vscode|code-server|spyder", re.I)
#: Command lines of processes that execute notebooks with nobody watching.
_EXECUTORS = re.compile(r"papermill|nbclient|nbconvert|nbmake|pytest|bin/recon-kit\b|-m recon_kit\b", re.I)


def _ancestors(depth: int = 6) -> list[str]:
    """Command lines of this process's parent, grandparent, ... (nearest first; empty when unknown)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - ipykernel depends on psutil
        return []
    out = []
    try:
        proc = psutil.Process(os.getpid()).parent()
        while proc is not None and len(out) < depth:
            out.append(" ".join(proc.cmdline()))
            proc = proc.parent()
    except (psutil.Error, OSError):
        pass
    return out


def live_frontend() -> bool:
    """True when a user-facing frontend started this kernel (so widgets can be clicked).

    ``RECON_KIT_HEADLESS=1`` (or ``0``) forces the answer. Otherwise the nearest ancestor process that is either a
    Jupyter server / editor (live) or a notebook executor such as papermill (headless) decides; with neither (an
    unknown frontend), the answer is live."""
    forced = os.environ.get("RECON_KIT_HEADLESS")
    if forced is not None and forced.strip() != "":
        return forced.strip().lower() in ("0", "false", "no")
    for cmd in _ancestors():
        if _FRONTENDS.search(cmd):
            return True
        if _EXECUTORS.search(cmd):
            return False
    return True


class ErrorLine:
    """An ``HTML`` widget that is empty until :meth:`show` puts one red line and a folded traceback in it."""

    def __init__(self) -> None:
        import ipywidgets as W

        self.widget = W.HTML(value="")
        self.last: str | None = None

    def show(self, exc: BaseException, doing: str = "") -> None:
        self.last = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        line = f"{type(exc).__name__}: {exc}"
        prefix = f"{doing} failed: " if doing else ""
        self.widget.value = (
            '<details style="color:#b00020"><summary><b>' + html.escape(prefix + line) + "</b> "
            "<small>(details)</small></summary><pre style='font-size:11px;white-space:pre-wrap'>"
            + html.escape(self.last) + "</pre></details>")

    def clear(self) -> None:
        self.last = None
        self.widget.value = ""

    def guard(self, fn: Callable, doing: str = "") -> Callable:
        """``fn`` wrapped so that an exception is shown on this line (and swallowed: a callback has no caller)."""

        @functools.wraps(fn)
        def wrapper(*args, **kw):
            try:
                return fn(*args, **kw)
            except Exception as exc:  # noqa: BLE001 - every callback error belongs in the panel
                self.show(exc, doing)
                return None

        return wrapper
