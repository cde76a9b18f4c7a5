"""Small helpers shared by the package: :mod:`~hbfp_hw.tools.cache` (the cache root)."""
