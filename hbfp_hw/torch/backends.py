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
- ``"device"``: :class:`DeviceBackend`, an hbfp-hw device through the ``hbfp_hw.Device`` host
  driver (docs/driver.md), over any URL: ``"sim"`` (the default: the simulated board, i.e. the
  real gateware under Verilator), ``"sim://?instance=N&..."``, ``"tcp://HOST:PORT"``,
  ``"serial:///dev/ttyUSB0"``, or an already open ``hbfp_hw.Device`` (which the backend uses
  but never closes). Bit-exact with ``"emulate"``, since both are bit-exact with
  :func:`hbfp_hw.golden.gemm`.

Backends are named by a *key*: ``"emulate"``, ``"fp32"``, or ``"device"`` followed by
``"@URL"`` (for example ``"device@sim://?instance=1"``), so that a key can travel through a
``torch.library`` op as a string (an open Device object is named ``"device@object:ID"``).
:func:`get_backend` builds each key's backend once and caches it. New kinds plug in with
:func:`register_backend`.

Device backend notes:

- The device computes one format (``dev.info().fmt``). Every quantized GEMM role must ask for
  exactly that format, else ``FormatMismatch`` (naming the role and both formats) is raised by
  :func:`~hbfp_hw.torch.convert` (and by the functional API); a role in ``"fp32"`` stays in
  torch. To train another format, open a board built for it, e.g.
  ``sim://?mantissa_bits=4&block_size=16``.
- Stochastic rounding is supported when the device's format is stochastic: the driver
  quantizes on the host with ``golden.quantize`` using ``seed`` for ``a`` and ``seed + 1`` for
  ``b``, the same semantics as ``emulate``.
- Any ``K`` (the reduction length of each GEMM role) works: a ``K`` beyond the device's buffers
  (4096 on the default simulated board) is split by the driver into chunks that the device
  accumulates in the contract's order, so the result stays bit-exact.
- Multi-process (DDP) training: each rank opens its own device, e.g.
  ``device=f"sim://?instance={rank}"`` (or one board per rank / ``hbfp-hw serve`` instance).
- Devices the backend opened are closed by :func:`close_devices`, which also runs at exit.
"""

from __future__ import annotations

import atexit
import threading

import torch

from hbfp_hw.formats import Accumulator, Rounding

__all__ = ["BackendUnavailableError", "register_backend", "get_backend", "backend_key",
           "backend_names", "Fp32Backend", "DeviceBackend", "close_devices", "check_backend"]


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


#: Open Device objects passed as ``device=``, by the token that names them in a key.
_DEVICE_OBJECTS = {}
_OBJECT_PREFIX = "object:"


def _is_device_object(device):
    return not isinstance(device, str) and callable(getattr(device, "gemm", None)) \
        and callable(getattr(device, "info", None))


def _device_token(device):
    """Name an open Device object by a string token (the object is kept alive here)."""
    token = f"{_OBJECT_PREFIX}{id(device)}"
    with _LOCK:
        _DEVICE_OBJECTS[token] = device
    return token


class DeviceBackend:
    """The ``device`` backend: HBFP GEMMs on an hbfp-hw device through ``hbfp_hw.Device``.

    Parameters
    ----------
    device : str or hbfp_hw.Device
        A device URL (default ``"sim"``), opened here and closed by :meth:`close`, or an open
        Device, which is used as it is and never closed here.
    """

    name = "device"

    def __init__(self, device="sim"):
        from hbfp_hw.fpga.host.driver import Device, DeviceError

        if _is_device_object(device):
            self.device, self.url, self._owned = device, getattr(device, "url", repr(device)), \
                False
        else:
            self.url, self._owned = device, True
            try:
                self.device = Device.open(device)
            except DeviceError as e:
                raise type(e)(f"backend='device' could not open {device!r}: {e}") from e
        self.fmt = self.device.info().fmt

    def check_format(self, fmt, role=None):
        """Raise ``FormatMismatch`` unless ``fmt`` (a BFPFormat or ``None``) is the device's."""
        if fmt is None or fmt == self.fmt:
            return
        from hbfp_hw.fpga.host.driver import FormatMismatch, sim_url_for

        what = f"the {role} GEMM" if role else "this GEMM"
        if any(f.accumulator is not Accumulator.FP32
               for f in (fmt if isinstance(fmt, tuple) else (fmt,))):
            acc = (fmt[0] if isinstance(fmt, tuple) else fmt).accumulator
            raise FormatMismatch(
                f"backend='device': {what} asks for the {acc} accumulator, which the GEMM "
                f"system does not implement yet (it accumulates in fp32); use "
                f"backend='emulate' for it")
        if isinstance(fmt, tuple):
            raise FormatMismatch(
                f"backend='device': {what} asks for per-operand formats "
                f"{fmt[0].name} and {fmt[1].name}, which the GEMM system does not implement "
                f"(one format for both operands; {self.url} computes {self.fmt.name}); use "
                f"backend='emulate' for it")
        raise FormatMismatch(
            f"backend='device': {what} asks for {fmt.name} ({fmt}) but {self.url} computes "
            f"{self.fmt.name} ({self.fmt}); use a device built for {fmt.name} (e.g. "
            f"{sim_url_for(fmt)}), give this role the device's format, or keep it in 'fp32'")

    def check_config(self, config):
        """Check every quantized role of an :class:`~hbfp_hw.torch.HBFPConfig`."""
        # The config names its roles (HBFPConfig.role_formats): hbfp_hw.torch.config imports
        # this module, so this module does not import it.
        for role, fmt in config.role_formats.items():
            self.check_format(fmt, role)

    def gemm(self, a, b, fmt, seed):
        """Return the HBFP product ``a @ b`` computed on the device (float32 CPU tensor)."""
        import numpy as np

        self.check_format(fmt)
        a_np = np.ascontiguousarray(a.detach().cpu().numpy(), dtype=np.float32)
        b_np = np.ascontiguousarray(b.detach().cpu().numpy(), dtype=np.float32)
        seed = seed if fmt.rounding is Rounding.STOCHASTIC else None
        out = self.device.gemm(a_np, b_np, wire="bfp", seed=seed)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def close(self):
        """Close the device if this backend opened it."""
        if self._owned:
            self.device.close()

    def __repr__(self):
        return f"DeviceBackend({self.url!r}, {self.fmt.name})"


def _device_factory(device):
    if device is None:
        device = "sim"
    if device.startswith(_OBJECT_PREFIX):
        obj = _DEVICE_OBJECTS.get(device)
        if obj is None:
            raise ValueError(f"unknown device token {device!r}; pass the Device object itself")
        return DeviceBackend(obj)
    return DeviceBackend(device)


def close_devices():
    """Close the devices that cached ``device`` backends opened (and forget those backends).

    Runs at interpreter exit too. The next use of a ``device`` key opens its device again.
    """
    with _LOCK:
        keys = [k for k, v in _CACHE.items() if isinstance(v, DeviceBackend)]
        backends = [_CACHE.pop(k) for k in keys]
    for backend in backends:
        try:
            backend.close()
        except Exception:                               # noqa: BLE001 -- best effort at exit
            pass


atexit.register(close_devices)


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
    if backend == "device" and _is_device_object(device):
        device = _device_token(device)
    if not isinstance(device, str) or not device:
        raise ValueError(f"device must be a device URL string such as 'sim://', not {device!r}")
    return f"{backend}@{device}"


def get_backend(key):
    """Return the (cached) backend object for a key made by :func:`backend_key`.

    Raises
    ------
    hbfp_hw.fpga.DeviceError
        ``"device"``: the device cannot be opened (``DeviceNotFound``, ...).
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


def check_backend(config):
    """Build (or reuse) the backend of an HBFPConfig and check its role formats; return it."""
    backend = get_backend(config.key)
    check = getattr(backend, "check_config", None)
    if check is not None:
        check(config)
    return backend
