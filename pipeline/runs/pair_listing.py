"""What the pair folders of a run say: `PairListing`, from one listing of `<run>/pairs/` (cheap: no file is read),
and `Scan`, from checking every `_SUCCESS` against its pair's files (RunFolder.scan). See docs/run-layout.md.

The listing's rule, the one `splice evaluate`, `import` and `report` follow: a pair is done when its output.png and
its `_SUCCESS` are both listed, damaged when `_SUCCESS` is listed without output.png, pending otherwise (the run's
results.parquet may say why: failed, missing). `splice run` and `splice status` check the markers' contents too
(`Scan`: sizes, and sha256 with verify).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.runs import layout
from pipeline.runs.pair_status import PairStatus
from pipeline.storage import Storage

STAMP_KEYS = ("ETag", "etag", "md5Hash", "crc32c", "mtime", "LastModified", "last_modified", "updated", "created")


@dataclass
class Scan:
    """What the pair folders say: pairs done (verified), pairs whose marker does not match their files."""

    done: set[str] = field(default_factory=set)
    damaged: dict[str, str] = field(default_factory=dict)  # pair_id -> what is wrong
    markers: dict[str, dict | None] = field(default_factory=dict)  # pair_id -> marker (None: old, empty marker)


@dataclass
class PairListing:
    """One listing of a run's pair folders: pair_id -> {file name -> the store's listing info (size, ETag or
    mtime, ...)}, and what it says of each pair."""

    files: dict[str, dict[str, dict]] = field(default_factory=dict)

    @classmethod
    def read(cls, storage: Storage, pairs_url: str) -> PairListing:
        """Every file one level under `pairs_url` (<run>/pairs), in one listing."""
        fs, root = storage.fs(pairs_url)
        try:
            fs.invalidate_cache(root)
            found = fs.find(root, detail=True)
        except FileNotFoundError:
            return cls()
        prefix = root.rstrip("/") + "/"
        files: dict[str, dict[str, dict]] = {}
        for path, info in found.items():
            relative = path[len(prefix) :] if path.startswith(prefix) else ""
            if relative.count("/") == 1:
                pair_id, name = relative.split("/")
                files.setdefault(pair_id, {})[name] = info
        return cls(files)

    def state(self, pair_id: str) -> PairStatus:
        """DONE (output.png and _SUCCESS listed), DAMAGED (_SUCCESS without output.png) or PENDING."""
        names = self.files.get(pair_id, {})
        if layout.SUCCESS not in names:
            return PairStatus.PENDING
        return PairStatus.DONE if layout.OUTPUT_PNG in names else PairStatus.DAMAGED

    def is_done(self, pair_id: str) -> bool:
        return self.state(pair_id) == PairStatus.DONE

    def with_file(self, name: str) -> list[str]:
        """The pairs that have a file `name` (e.g. an output.png, done or not; a losses.parquet)."""
        return [pair_id for pair_id, names in self.files.items() if name in names]

    def sizes(self) -> dict[str, dict[str, int | None]]:
        """pair_id -> {file name -> size}."""
        return {
            pair_id: {name: info.get("size") for name, info in names.items()} for pair_id, names in self.files.items()
        }

    def output_stamp(self, pair_id: str) -> str | None:
        """The stamp of the pair's output.png (size and ETag, checksum or modification time), which changes when the
        file is rewritten: evaluation does not re-read an output whose content hash it knows under this stamp."""
        info = self.files.get(pair_id, {}).get(layout.OUTPUT_PNG)
        return None if info is None else stamp(info)


def stamp(info: dict) -> str:
    version = next((info[k] for k in STAMP_KEYS if info.get(k) is not None), "")
    return f"{info.get('size')}:{version}"
