"""sha256 of every fetched weight file, recorded at the first `tokbench fetch --verify` and checked at
every later one, so that a replaced or truncated file is caught even where upstream publishes no hash.

The record is `SHA256SUMS.json` in the `--to` folder (it travels with the bundle), or, for files in
the caches, in `$TOKBENCH_WEIGHTS` or `~/.cache/tokbench/`. Files are keyed `<artifact>/<file name>`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .weights import weights_dir

RECORD_NAME = "SHA256SUMS.json"


def record_path(to: Path | None) -> Path:
    if to is not None:
        return to / RECORD_NAME
    if (root := weights_dir()) is not None:
        return root / RECORD_NAME
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tokbench" / RECORD_NAME


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_files(artifact_name: str, paths: list[Path], to: Path | None) -> list[str]:
    """Record the sha256 and size of files seen for the first time; return a line for each file whose
    content differs from its record (empty: all verified or newly recorded)."""
    where = record_path(to)
    record = json.loads(where.read_text()) if where.is_file() else {}
    problems = []
    for path in paths:
        key = f"{artifact_name}/{path.name}"
        digest, size = sha256_of(path), path.stat().st_size
        known = record.get(key)
        if known is None:
            record[key] = {"sha256": digest, "size": size}
        elif known["sha256"] != digest:
            problems.append(f"{path} changed since it was fetched: sha256 {digest[:16]}... and {size} bytes, recorded "
                            f"{known['sha256'][:16]}... and {known['size']} bytes in {where}; delete it and fetch "
                            "again (or remove its entry from the record if the new file is intended)")
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_name(where.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, where)
    return problems
