"""GEMM backends of the PyTorch integration, looked up by name.

A backend is an object with ``gemm(a, b, fmt, seed) -> Tensor``: ``a [M, K]`` and ``b [K, N]``
are 2-D float32 tensors, ``fmt`` a :class:`~hbfp_hw.formats.BFPFormat`, ``seed`` an integer in
``0..2**32-1`` (used by stochastic rounding only: ``a`` with ``seed``, ``b`` with ``seed + 1``),
and the result is the float32 ``[M, N]`` product, bit-exact with
:func:`hbfp_hw.golden.gemm` (docs/numerics.md 3.3).

Built in:

- ``"emulate"``: :class:`hbfp_hw.torch.emulate.EmulateBackend`, a vectorized torch
  implementation;
- ``"fp32"``: plain ``torch.matmul``, the unquantized reference (the format is ignored);
- ``"device"``: an hbfp-hw device through the ``hbfp_hw.Device`` host driver. That driver is not
  available yet, so asking for this backend raises :class:`BackendUnavailableError`.

Backends are named by a *key*: ``"emulate"``, ``"fp32"``, or ``"device"`` followed by
``"@URL"`` (for example ``"device@sim://?instance=1"``), so that a key can travel through a
``torch.library`` op as a string. :func:`get_backend` builds each key's backend once and caches
it. New kinds plug in with :func:`register_backend`.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["BackendUnavailableError", "register_backend", "get_backend", "backend_key",
           "backend_names", "Fp32Backend"]


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run in this installation."""


class Fp32Backend:
    """The ``fp32`` reference backend: ``a @ b`` in float32, no quantization."""

    name = "fp32"

    def gemm(self, a, b, fmt, seed):
        """Return ``a @ b`` (``fmt`` and ``seed`` are ignored)."""
        return torch.matmul(a, b)

    def __repr__(self):
        return "Fp32Backend()"


def _emulate_factory(device):
    from hbfp_hw.torch.emulate import EmulateBackend

    return EmulateBackend()


def _fp32_factory(device):
    return Fp32Backend()


def _device_factory(device):
    # Plug-in point: once hbfp_hw.Device exists, open `device` (a URL such as
    # "sim://?instance=0") here and return an object whose gemm() runs on it.
    raise BackendUnavailableError(
        f"backend='device' (device={device!r}) runs the HBFP GEMMs on an hbfp-hw device "
        f"through the hbfp_hw.Device host driver, which is not available yet; use "
        f"backend='emulate' (bit-exact with the golden model) or backend='fp32'")


_FACTORIES = {"emulate": _emulate_factory, "fp32": _fp32_factory, "device": _device_factory}
_NEEDS_DEVICE = {"device"}
_CACHE = {}
_LOCK = threading.Lock()


def backend_names():
    """Return the names of the registered backends."""
    return sorted(_FACTORIES)


def register_backend(name, factory, *, needs_device=False):
    """Register a backend kind.

    Parameters
    ----------
    name : str
        The backend name (``backend=`` argument of :func:`hbfp_hw.torch.convert`).
    factory : callable
        ``factory(device) -> backend``; ``device`` is the URL string or ``None``.
    needs_device : bool
        Whether the backend takes a device URL.
    """
    if not isinstance(name, str) or not name or "@" in name:
        raise ValueError(f"name must be a non-empty string without '@', not {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, not {factory!r}")
    with _LOCK:
        _FACTORIES[name] = factory
        if needs_device:
            _NEEDS_DEVICE.add(name)
        else:
            _NEEDS_DEVICE.discard(name)
        for key in [k for k in _CACHE if k.split("@", 1)[0] == name]:
            del _CACHE[key]


def backend_key(backend="emulate", device=None):
    """Validate a backend name and device URL and return the key that names them.

    Raises
    ------
    ValueError
        If the backend is unknown, or a device URL is given to a backend that takes none.
    """
    if not isinstance(backend, str) or backend not in _FACTORIES:
        raise ValueError(f"backend must be one of {', '.join(repr(n) for n in backend_names())}, "
                         f"not {backend!r}")
    if device is None:
        return backend
    if backend not in _NEEDS_DEVICE:
        raise ValueError(f"device must be None for backend={backend!r}, not {device!r} "
                         f"(only {', '.join(sorted(_NEEDS_DEVICE))} take a device URL)")
    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be a device URL string such as 'sim://', not {device!r}")
    return f"{backend}@{device}"


def get_backend(key):
    """Return the (cached) backend object for a key made by :func:`backend_key`.

    Raises
    ------
    BackendUnavailableError
        If the backend cannot run here (``"device"`` for now).
    """
    backend = _CACHE.get(key)
    if backend is not None:
        return backend
    name, _, device = key.partition("@")
    backend_key(name, device or None)
    with _LOCK:
        backend = _CACHE.get(key)
        if backend is None:
            backend = _CACHE[key] = _FACTORIES[name](device or None)
    return backend
