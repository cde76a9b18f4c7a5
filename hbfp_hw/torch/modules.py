"""HBFP modules and :func:`convert`, which swaps them into a model without patching torch.nn."""

from __future__ import annotations

import copy
import fnmatch

import torch
from torch import nn

from hbfp_hw.golden import prng
from hbfp_hw.torch.autograd import conv2d_checked, linear_impl
from hbfp_hw.torch.backends import check_backend
from hbfp_hw.torch.config import HBFPConfig, as_config, derive_seed

__all__ = ["HBFPLinear", "HBFPConv2d", "convert", "set_seed", "hbfp_modules"]


class _HBFPMixin:
    """Config, layer id and step counter shared by the HBFP modules.

    The step counter is a non-persistent int64 buffer (not in the ``state_dict``), so the
    converted model loads the original ``state_dict`` and ``torch.compile`` sees the per-step
    seeds as data.
    """

    def _init_hbfp(self, config, layer_id):
        if isinstance(layer_id, bool) or not isinstance(layer_id, int) or layer_id < 0:
            raise ValueError(f"layer_id must be a non-negative integer, not {layer_id!r}")
        self.register_buffer("hbfp_step", torch.zeros((), dtype=torch.int64), persistent=False)
        self.layer_id = layer_id
        self.hbfp_config = as_config(config)

    @property
    def hbfp_config(self):
        """The :class:`HBFPConfig` of this layer."""
        return self._hbfp_config

    @hbfp_config.setter
    def hbfp_config(self, config):
        if not isinstance(config, HBFPConfig):
            raise TypeError(f"hbfp_config must be an HBFPConfig, not {config!r}")
        # Plain attributes that the forward reads, so that torch.compile sees constants.
        self._hbfp_config = config
        self._hbfp_fmts = config.gemm_args()
        self._hbfp_key = config.key
        self._hbfp_layer_seed = derive_seed(config.seed, self.layer_id)
        self._hbfp_stochastic = any(f is not None and f[2] == "stochastic"
                                    for f in self._hbfp_fmts)

    def _next_seeds(self):
        """Role seeds of this call; advances the step counter.

        Under ``torch.compile`` the seeds are computed with tensor ops on the step buffer, so
        the graph does not depend on the step; in eager mode with plain ints (cheaper). Without
        stochastic rounding the seeds are not used and stay 0.
        """
        if torch.compiler.is_compiling():
            call = derive_seed(self._hbfp_layer_seed, self.hbfp_step)
            seeds = torch.stack([derive_seed(call, r) for r in range(3)])
        elif self._hbfp_stochastic:
            call = derive_seed(self._hbfp_layer_seed, int(self.hbfp_step))
            seeds = torch.tensor([derive_seed(call, r) for r in range(3)], dtype=torch.int64)
        else:
            seeds = torch.zeros(3, dtype=torch.int64)
        self.hbfp_step.add_(1)
        return seeds

    def extra_repr(self):
        return (f"{super().extra_repr()}, hbfp={self._hbfp_config.describe()}, "
                f"backend={self._hbfp_key}, layer_id={self.layer_id}")


class HBFPLinear(_HBFPMixin, nn.Linear):
    """``nn.Linear`` whose three GEMMs run in HBFP (same parameters and ``state_dict``).

    Parameters
    ----------
    in_features, out_features, bias, device, dtype
        As for :class:`torch.nn.Linear` (``device`` is the torch device of the parameters).
    config : HBFPConfig, preset name, BFPFormat or dict of roles
        Formats, backend and base seed.
    layer_id : int
        Enters the stochastic-rounding seeds (:mod:`hbfp_hw.torch.config`).
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 config="bfp8", layer_id=0):
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_hbfp(config, layer_id)

    @classmethod
    def from_linear(cls, module, config="bfp8", layer_id=0):
        """Return an HBFPLinear that shares ``module``'s parameters."""
        new = cls(module.in_features, module.out_features, module.bias is not None,
                  device="meta", config=config, layer_id=layer_id)
        _adopt(new, module)
        return new

    def forward(self, x):
        return linear_impl(x, self.weight, self.bias, self._next_seeds(), self._hbfp_fmts,
                           self._hbfp_key)


class HBFPConv2d(_HBFPMixin, nn.Conv2d):
    """``nn.Conv2d`` computed as im2col GEMMs in HBFP (same parameters and ``state_dict``).

    Parameters are those of :class:`torch.nn.Conv2d`, plus ``config`` and ``layer_id`` as for
    :class:`HBFPLinear`.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *,
                 config="bfp8", layer_id=0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, device, dtype)
        self._init_hbfp(config, layer_id)

    @classmethod
    def from_conv2d(cls, module, config="bfp8", layer_id=0):
        """Return an HBFPConv2d that shares ``module``'s parameters."""
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                  module.padding, module.dilation, module.groups, module.bias is not None,
                  module.padding_mode, device="meta", config=config, layer_id=layer_id)
        _adopt(new, module)
        return new

    def _conv_forward(self, x, weight, bias):
        seeds = self._next_seeds()
        if self.padding_mode != "zeros":
            x = nn.functional.pad(x, self._reversed_padding_repeated_twice,
                                  mode=self.padding_mode)
            return conv2d_checked(x, weight, bias, self.stride, 0, self.dilation, self.groups,
                                  seeds, self._hbfp_fmts, self._hbfp_key)
        return conv2d_checked(x, weight, bias, self.stride, self.padding, self.dilation,
                              self.groups, seeds, self._hbfp_fmts, self._hbfp_key)


def _adopt(new, old):
    """Give ``new`` the parameters (the same objects), device and mode of ``old``."""
    new.weight = old.weight
    new.bias = old.bias
    new.hbfp_step = torch.zeros((), dtype=torch.int64, device=old.weight.device)
    new.train(old.training)


_CONVERTIBLE = {nn.Linear: HBFPLinear.from_linear, nn.Conv2d: HBFPConv2d.from_conv2d}


def _skip_matcher(skip):
    if skip is None:
        skip = ()
    if isinstance(skip, (str, type)):
        skip = (skip,)
    names, types = [], []
    for entry in skip:
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, type) and issubclass(entry, nn.Module):
            types.append(entry)
        else:
            raise TypeError(f"skip entries must be module names (glob patterns allowed) or "
                            f"nn.Module classes, not {entry!r}")

    def skipped(name, module):
        if isinstance(module, tuple(types)):
            return True
        for pattern in names:
            if fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + "."):
                return True
        return False
    return skipped


def convert(model, fmt="bfp8", backend="emulate", device=None, skip=(), *, inplace=False,
            seed=0):
    """Replace the ``nn.Linear`` and ``nn.Conv2d`` modules of ``model`` with HBFP modules.

    Parameters
    ----------
    model : nn.Module
    fmt : preset name, BFPFormat, "fp32", dict of roles or HBFPConfig
        Formats of the forward, grad_input and grad_weight GEMMs (by default one format for
        all three).
    backend : {"emulate", "device", "fp32"}
        Where the GEMMs run. ``"device"`` runs them on an hbfp-hw device through the
        ``hbfp_hw.Device`` host driver, bit-exact with ``"emulate"``; the device is opened
        here (``DeviceNotFound`` etc. propagate) and every quantized role's format must be
        the device's (``FormatMismatch`` otherwise, see :mod:`hbfp_hw.torch.backends`).
    device : str, hbfp_hw.Device or None
        For ``backend="device"``: a device URL (default ``"sim"``, the simulated board; for
        example ``"sim://?instance=RANK"`` to give each DDP rank its own board,
        ``"tcp://127.0.0.1:7777"``, ``"serial:///dev/ttyUSB0"``) or an open Device.
    skip : iterable of str or type
        Modules to keep in FP32: qualified names as in ``model.named_modules()`` (glob patterns
        allowed; a name also skips everything under it) or module classes.
    inplace : bool
        Replace the modules of ``model`` itself (sharing its parameters) instead of a deep copy.
    seed : int
        Base seed of stochastic rounding (ignored if ``fmt`` is an HBFPConfig).

    Returns
    -------
    nn.Module
        The converted model. Exactly ``nn.Linear`` and ``nn.Conv2d`` instances are replaced
        (not subclasses, whose forward may differ); parameter names do not change, so the model
        loads the original ``state_dict``. Bias, normalization, activations, softmax and the
        loss stay FP32. ``torch.nn`` itself is never modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    config = as_config(fmt, backend=backend, device=device, seed=prng.check_seed(seed))
    check_backend(config)                   # fail now, not at the first forward
    skipped = _skip_matcher(skip)
    if not inplace:
        model = copy.deepcopy(model)
    layer_id = 0
    replacements = []
    for name, module in model.named_modules():
        make = _CONVERTIBLE.get(type(module))
        if make is None or skipped(name, module):
            continue
        replacements.append((name, make(module, config, layer_id)))
        layer_id += 1
    for name, new in replacements:
        if not name:
            return new
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model


def hbfp_modules(model):
    """Yield the HBFP modules of ``model``."""
    for module in model.modules():
        if isinstance(module, _HBFPMixin):
            yield module


def set_seed(model, seed=None, step=None):
    """Set the base seed and/or the step counter of every HBFP module of ``model``.

    With the same seed, step and inputs, a training step is reproducible bit for bit.
    """
    if seed is not None:
        prng.check_seed(seed)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"step must be a non-negative integer, not {step!r}")
    for module in hbfp_modules(model):
        if seed is not None:
            module.hbfp_config = module.hbfp_config.replace(seed=seed)
        if step is not None:
            module.hbfp_step.fill_(step)
