"""One pair's folder, `<run>/pairs/<pair_id>/` (or the OUT_DIR of `splice train`): its files and `_SUCCESS`.

`PairFolder` reads and writes everything in it through URL-based `Storage` calls (retried, atomic per file):
output.png, losses.parquet and meta.json, then `_SUCCESS` last, holding the size and sha256 of each file and the
pair's results row (`success_marker`); the checkpoint of a pair in training; attempts.json (one entry per start);
error.txt (a failed pair's error and traceback). `check` tells a done pair from a damaged one by comparing its
files with its marker. A run folder hands out its pairs' folders (`RunFolder.pair`); nothing else builds these paths.

Older pairs (run folders of format 1) have an empty `_SUCCESS`: sizes unknown, so such a pair counts as done if its
output.png exists and is not empty (with verify=True: if it decodes).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
from collections.abc import Callable

import pandas as pd

from pipeline.errors import SpliceError
from pipeline.runs import layout
from pipeline.storage import Storage, redact_url

log = logging.getLogger(__name__)

FORMAT = layout.FORMAT  # the run folder format a marker is written in
RESULT_FILES = (layout.OUTPUT_PNG, layout.LOSSES, layout.META_JSON)


class RunFolderError(SpliceError, ValueError):
    """A run folder (or a file in it) that cannot be used as it stands; the message says which and what to do."""


def success_marker(pair_id: str, files: dict[str, bytes], row: dict) -> bytes:
    """The body of a pair's `_SUCCESS`: size and sha256 of each file written before it, and its results row."""
    return json.dumps(
        {
            "format": FORMAT,
            "pair_id": pair_id,
            "files": {
                name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in files.items()
            },
            "row": row,
        },
        indent=1,
        default=str,
    ).encode()


def parse_marker(body: bytes) -> dict | None:
    """A `_SUCCESS` body as written since format 2, or None (empty, or unreadable)."""
    if not body.strip():
        return None
    try:
        marker = json.loads(body)
    except ValueError:
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) else None


class PairFolder:
    """The folder of one pair, by URL."""

    def __init__(self, storage: Storage, url: str, pair_id: str | None = None):
        self.storage = storage
        self.url = url.rstrip("/")
        self.pair_id = pair_id or self.url.rsplit("/", 1)[-1]

    def file(self, name: str) -> str:
        return layout.join(self.url, name)

    @property
    def progress_url(self) -> str:
        """progress.json: the pair's last reported step while it trains (pipeline/runs/progress.py)."""
        return self.file(layout.PROGRESS_JSON)

    # --- done or not ---------------------------------------------------------------------------------------

    def is_done(self) -> bool:
        return self.storage.exists(self.file(layout.SUCCESS))

    def unmark(self) -> None:
        """No longer done (its files stay until it is redone)."""
        self.storage.remove(self.file(layout.SUCCESS))

    def forget(self) -> None:
        """Before redoing the pair (--force): its marker, checkpoint and attempts go first, so a crash now cannot
        leave an old _SUCCESS over new files."""
        for name in (layout.SUCCESS, layout.CHECKPOINT, layout.ATTEMPTS):
            self.storage.remove(self.file(name))

    def check(
        self, sizes: dict[str, int | None], verify: bool = False, empty_marker_allowed: bool = True
    ) -> tuple[dict | None, str | None]:
        """(its marker, what is wrong or None) given the sizes of its files from a listing; with verify=True the
        files' sha256 too. A marker is proof or nothing: one that does not parse, lists no output.png, or lists a
        file that is missing or of another size means damaged. An empty marker is format 1's, allowed only in a
        folder of that format (`empty_marker_allowed`); there output.png must exist, and decode with verify=True."""
        try:
            body = self.storage.read_bytes(self.file(layout.SUCCESS))
        except FileNotFoundError:  # removed since the listing: not done
            return None, "its _SUCCESS disappeared while being checked"
        if not body.strip():
            if not empty_marker_allowed:
                return None, f"its {layout.SUCCESS} is empty (truncated?): it records no files"
            if not sizes.get(layout.OUTPUT_PNG):
                return None, f"{layout.OUTPUT_PNG} is missing or empty"
            if verify and not self._decodes(layout.OUTPUT_PNG):
                return None, f"{layout.OUTPUT_PNG} does not decode"
            return None, None
        marker = parse_marker(body)
        if marker is None:
            return None, f"its {layout.SUCCESS} does not parse (truncated?)"
        files = marker["files"]
        if layout.OUTPUT_PNG not in files:
            return marker, f"its {layout.SUCCESS} lists no {layout.OUTPUT_PNG}"
        for name, expected in files.items():
            if not isinstance(expected, dict) or not isinstance(expected.get("size"), int):
                return marker, f"its {layout.SUCCESS} records no size for {name}"
            if name not in sizes:
                return marker, f"{name} is missing"
            if sizes[name] is not None and sizes[name] != expected["size"]:
                return marker, f"{name} has {sizes[name]} bytes, {layout.SUCCESS} recorded {expected['size']}"
            if verify:
                try:
                    data = self.storage.read_bytes(self.file(name))
                except FileNotFoundError:
                    return marker, f"{name} is missing"
                if hashlib.sha256(data).hexdigest() != expected.get("sha256"):
                    return marker, f"{name} differs from what {layout.SUCCESS} recorded (sha256)"
        return marker, None

    def _decodes(self, name: str) -> bool:
        from pipeline.method.images import ImageError, decode_image  # torch: only `--verify` of old folders needs it

        url = self.file(name)
        try:
            decode_image(self.storage.read_bytes(url), redact_url(url))
        except (ImageError, OSError):
            return False
        return True

    # --- the result ----------------------------------------------------------------------------------------

    def write_result(
        self,
        result,
        extra_meta: dict | None = None,
        *,
        row: dict | None = None,
        fence: Callable[[], None] | None = None,
    ) -> None:
        """Write output.png, losses.parquet and meta.json of a method's `result`, then _SUCCESS (their sizes and
        hashes, and the results `row`); finally drop the checkpoint. `fence()` runs before the first and before
        the last write and raises if this writer may no longer write here (its run's lock was taken over). A
        failed write (e.g. disk full) removes what it had written of the pair, so nothing partial stays behind."""
        from pipeline.method.images import encode_png  # torch: only writers of outputs pay for it, not `splice status`

        meta = {**result.meta, **(extra_meta or {}), "status": "done"}
        self.write_files(
            {
                layout.OUTPUT_PNG: encode_png(result.output),
                layout.LOSSES: losses_to_parquet(result.losses),
                layout.META_JSON: json.dumps(meta, indent=2, default=str).encode(),
            },
            row=row,
            fence=fence,
        )
        self.storage.remove(self.file(layout.CHECKPOINT))

    def write_files(
        self, files: dict[str, bytes], *, row: dict | None = None, fence: Callable[[], None] | None = None
    ) -> None:
        """Write `files` (name -> bytes), then _SUCCESS; on a failed write remove them again."""
        if fence:
            fence()
        self.unmark()  # while rewriting, the pair is not done
        try:
            for name, data in files.items():
                self.storage.write_bytes(self.file(name), data)
            if fence:
                fence()
            self.storage.write_bytes(self.file(layout.SUCCESS), success_marker(self.pair_id, files, row or {}))
        except OSError:
            self.remove_result()
            raise

    def remove_result(self) -> None:
        """Best effort: remove the pair's result files (after a failed write; space may be short)."""
        for name in (layout.SUCCESS, *RESULT_FILES):
            try:
                self.storage.remove(self.file(name))
            except (OSError, ValueError):
                pass

    def read_meta(self) -> dict:
        """meta.json, or {} where it is missing or unreadable."""
        url = self.file(layout.META_JSON)
        try:
            meta = self.storage.read_json(url)
        except (OSError, ValueError):
            return {}
        if not isinstance(meta, dict):
            log.warning("ignoring %s: not a JSON object", redact_url(url))
            return {}
        return meta

    def read_losses(self) -> pd.DataFrame:
        """losses.parquet (FileNotFoundError if there is none; RunFolderError if it is unreadable)."""
        return read_parquet(self.storage, self.file(layout.LOSSES))

    # --- while the pair is being done -------------------------------------------------------------------------

    def load_checkpoint(self) -> dict | None:
        """The checkpoint's state, or None if there is none or it is damaged (not worth failing the pair over)."""
        import torch  # only workers that train pay for it, not `splice status`

        try:
            data = self.storage.read_bytes(self.file(layout.CHECKPOINT))
        except FileNotFoundError:
            return None
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception:
            log.warning("ignoring the damaged checkpoint of pair %s: it starts again", self.pair_id)
            return None

    def save_checkpoint(self, state: dict) -> None:
        """Replace the checkpoint whole: a reader never sees a half-written one (Storage.write_bytes)."""
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.storage.write_bytes(self.file(layout.CHECKPOINT), buffer.getvalue())

    def remove_checkpoint(self) -> None:
        self.storage.remove(self.file(layout.CHECKPOINT))

    def record_attempt(self, started_at: str) -> int:
        """Append this start to attempts.json; only one driver (the lock) and one task per pair write it."""
        url = self.file(layout.ATTEMPTS)
        try:
            attempts = self.storage.read_json(url).get("attempts", [])
        except (FileNotFoundError, ValueError, AttributeError):
            attempts = []
        attempts.append(
            {"attempt": len(attempts) + 1, "started_at": started_at, "host": socket.gethostname(), "pid": os.getpid()}
        )
        self.storage.write_json(url, {"pair_id": self.pair_id, "attempts": attempts})
        return len(attempts)

    def write_error(self, error: str, trace: str) -> None:
        """error.txt: the one-line error and the traceback, for the user and `splice status`."""
        try:
            self.storage.write_bytes(self.file(layout.ERROR_TXT), f"{error}\n\n{trace}".encode())
        except Exception as exc:  # the results row still records the error
            log.debug("could not write %s for pair %s: %s", layout.ERROR_TXT, self.pair_id, exc)

    def clear_error(self) -> None:
        """An earlier attempt's error no longer holds."""
        self.storage.remove(self.file(layout.ERROR_TXT))


def read_parquet(storage: Storage, url: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet file of a run folder; FileNotFoundError passes, anything unreadable is a RunFolderError."""
    data = storage.read_bytes(url)
    try:
        return pd.read_parquet(io.BytesIO(data), columns=columns)
    except Exception as exc:
        raise RunFolderError(
            f"{redact_url(url)} is not a readable Parquet file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})"
        ) from exc


def losses_to_parquet(rows: list[dict]) -> bytes:
    from pipeline.method.objective import OBJECTIVE_TERMS  # torch: only writers of outputs pay for it

    frame = pd.DataFrame(rows, columns=["step", "total", *OBJECTIVE_TERMS]).astype({"step": "int64"})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
