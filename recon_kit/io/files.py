"""File modes of the results the kit writes: one rule for every atomic (temporary file + ``os.replace``) writer."""

from __future__ import annotations

import os

__all__ = ["shareable"]


def shareable(path: str | os.PathLike[str]) -> None:
    """Give a file written through ``tempfile.mkstemp`` (mode 0600) the mode a plain ``open`` would (0666 minus
    the umask), so results are readable by group and others as the user's other files are."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
