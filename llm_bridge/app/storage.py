"""The app's only readable files: one folder per upload or result under a private work folder.

Every item has a random 128-bit id (unguessable, so one user cannot list another's files) and a flat folder
of files with fixed, app-chosen names.  :meth:`Store.file` is the single gate through which the server
reads anything: the id and the name must match strict patterns, and the resolved path must stay inside the
work folder (symlinks included), otherwise the file "does not exist".
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_ID = re.compile(r"[0-9a-f]{32}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}")
META = "meta.json"


class Store:
    """Uploads and results in ``root`` (a fresh temporary folder by default, removed by :meth:`close`)."""

    def __init__(self, root: str | Path | None = None, retention_s: float = 3600.0) -> None:
        self._owned = root is None
        self.root = Path(root if root is not None else tempfile.mkdtemp(prefix="glee_app_")).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.retention_s = retention_s
        self._lock = threading.Lock()

    def new(self, kind: str, **meta: Any) -> tuple[str, Path]:
        """A new empty item folder; ``meta`` is saved beside its files."""
        self.purge()
        item_id = secrets.token_hex(16)
        folder = self.root / item_id
        folder.mkdir()
        self.write_meta(item_id, {"kind": kind, "created": time.time(), **meta})
        return item_id, folder

    def folder(self, item_id: str) -> Path:
        """The folder of an existing item; ``KeyError`` for a malformed or unknown id."""
        if not isinstance(item_id, str) or not _ID.fullmatch(item_id):
            raise KeyError(f"no such upload or result: {str(item_id)[:40]!r}")
        folder = self.root / item_id
        if not folder.is_dir():
            raise KeyError(f"no such upload or result: {item_id!r} (uploads are kept for "
                           f"{self.retention_s / 60:.0f} minutes; upload the file again)")
        return folder

    def file(self, item_id: str, name: str) -> Path:
        """A file of an item, only if it is a regular file inside the work folder; ``KeyError`` otherwise."""
        folder = self.folder(item_id)
        if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name == META:
            raise KeyError(f"no such file: {str(name)[:40]!r}")
        path = (folder / name).resolve()
        if path.parent != folder or not path.is_file():  # resolve() follows links: nothing may point outside
            raise KeyError(f"no such file: {name!r}")
        return path

    def meta(self, item_id: str) -> dict[str, Any]:
        return json.loads((self.folder(item_id) / META).read_text())

    def write_meta(self, item_id: str, meta: dict[str, Any]) -> None:
        (self.root / item_id / META).write_text(json.dumps(meta))

    def purge(self) -> int:
        """Delete items older than the retention time; returns how many went."""
        cutoff = time.time() - self.retention_s
        removed = 0
        with self._lock:
            for folder in self.root.iterdir():
                if folder.is_dir() and _ID.fullmatch(folder.name) and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        return removed

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
