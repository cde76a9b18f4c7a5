"""The root of hbfp-hw's on-disk caches (simulator builds, simulated boards, sweep results,
the emulate backend's C kernel): ``$HBFP_HW_CACHE``, default ``~/.cache/hbfp-hw``; and the
helpers of a content-addressed JSON cache under it (a key hashed from JSON-ready parts, a read
that treats a missing or broken entry as absent, an atomic write)."""

import hashlib
import json
import os
import threading
from pathlib import Path

__all__ = ["cache_root", "cache_key", "read_json", "write_json_atomic"]


def cache_root():
    """Return the cache root (not created here; each cache makes its own folder)."""
    return Path(os.environ.get("HBFP_HW_CACHE", Path.home() / ".cache" / "hbfp-hw"))


def cache_key(*parts):
    """Return the SHA-256 hex digest of ``parts`` (JSON-ready values) as sorted-key JSON.

    Equal parts give equal keys in every process and on every machine, so the key names a
    cache entry (callers use a prefix of it as a file or folder name).
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_json(path):
    """Return the JSON value stored at ``path``, or None if it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path, payload):
    """Write ``payload`` as indented JSON to ``path`` (its folder must exist) atomically.

    The text goes to a temporary file named after the process and thread, then replaces
    ``path``, so that concurrent writers and readers never see a partial file.
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
