"""Small helpers shared by the package: :mod:`~hbfp_hw.tools.cache` (the cache root and the
helpers of a content-addressed JSON cache)."""
