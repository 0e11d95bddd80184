"""Writing files so that readers never see half of one: a temporary file renamed into place, removed
on failure; and the error a full disk gives a trace folder."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable


class TraceWriteError(OSError):
    """The trace folder could not be written (a full disk): names the folder and the bytes not written."""

    def __init__(self, folder: Path, unwritten_bytes: int, cause: OSError):
        self.folder = Path(folder)
        self.unwritten_bytes = unwritten_bytes
        self.cause = cause
        try:
            free = f"{shutil.disk_usage(self.folder).free:,} B free there"
        except OSError:
            free = "free space unknown"
        super().__init__(cause.errno, f"cannot write the trace folder {self.folder}: {cause.strerror or cause} "
                                      f"(at least {unwritten_bytes:,} B more were needed, {free}); free some space "
                                      "or pick another --out")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a temporary file beside `path`, then rename it onto `path`; on any
    failure the temporary file is removed and `path` is left as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (tmp, str(tmp)):
            exc.filename = str(path)  # the user named `path`; the temporary file is ours
        raise


def write_json_atomic(path: Path, data: dict[str, Any], compact: bool = False) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file. Indented for people
    (meta, summary); `compact` for what only programs read (views.json: json's C encoder, ~5x faster than the
    indenting Python one on its MBs)."""
    text = (json.dumps(data, separators=(",", ":"), default=str) if compact else json.dumps(data, indent=2, default=str)) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_in_place(path: Path, data: dict[str, Any]) -> None:
    """Overwrite a small JSON file where a full disk leaves no room for a temporary copy: the old
    file's blocks are released by the truncation first (used for the final meta of a failed write)."""
    try:
        write_json_atomic(path, data)
    except OSError:
        with open(path, "w") as fh:
            fh.write(json.dumps(data, indent=2, default=str) + "\n")
