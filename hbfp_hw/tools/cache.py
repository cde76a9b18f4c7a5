"""The root of hbfp-hw's on-disk caches (simulator builds, simulated boards, sweep results,
the emulate backend's C kernel): ``$HBFP_HW_CACHE``, default ``~/.cache/hbfp-hw``."""

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root():
    """Return the cache root (not created here; each cache makes its own folder)."""
    return Path(os.environ.get("HBFP_HW_CACHE", Path.home() / ".cache" / "hbfp-hw"))
