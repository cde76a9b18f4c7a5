"""HBFP modules and :func:`convert`, which swaps them into a model without patching torch.nn."""

from __future__ import annotations

import copy
import fnmatch
import warnings
import zlib

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from hbfp_hw.golden import prng
from hbfp_hw.torch import ops
from hbfp_hw.torch.autograd import linear_impl, role_seeds
from hbfp_hw.torch.backends import check_backend
from hbfp_hw.torch.config import HBFPConfig, LayerRules, as_config, derive_seed
from hbfp_hw.torch.conv import conv_checked, conv_transpose_checked
from hbfp_hw.torch.mode import GemmSequence, HBFPFunctionMode
from hbfp_hw.torch.report import NO_GEMM_TYPES, ConversionReport, FP32LayerWarning, LayerEntry

__all__ = ["HBFPLinear", "HBFPConv1d", "HBFPConv2d", "HBFPConv3d", "HBFPConvTranspose1d",
           "HBFPConvTranspose2d", "HBFPConvTranspose3d", "HBFPMultiheadAttention", "convert",
           "set_seed", "hbfp_modules", "layer_id_for", "strip_hbfp_state", "EVAL_STEP"]


#: The step that inference calls use: ``eval()`` or no-grad forwards draw their seeds from
#: this fixed step and do not advance the counter (deterministic inference).
EVAL_STEP = 0xFFFFFFFF


class _HBFPMixin:
    """Config, layer id and step counter shared by the HBFP modules.

    The step counter counts the layer's training forwards (``module.training`` and grad
    enabled); it is saved in the ``state_dict`` (``hbfp_step``) of layers that round
    stochastically, the only ones whose results depend on it, so that a resumed run is
    reproducible bit for bit. Loading a ``state_dict`` without it keeps the current step.
    """

    def _init_hbfp(self, config, layer_id):
        self.register_buffer("hbfp_step", torch.zeros((), dtype=torch.int64), persistent=False)
        self._hbfp_config = None
        self.layer_id = layer_id
        self.hbfp_config = as_config(config)

    @property
    def layer_id(self):
        """The id that enters the layer's stochastic-rounding seeds."""
        return self._hbfp_layer_id

    @layer_id.setter
    def layer_id(self, layer_id):
        if isinstance(layer_id, bool) or not isinstance(layer_id, int) or \
                not 0 <= layer_id <= 0xFFFFFFFF:
            raise ValueError(f"layer_id must be an integer between 0 and 4294967295, not "
                             f"{layer_id!r}")
        self._hbfp_layer_id = layer_id
        if self._hbfp_config is not None:
            self.hbfp_config = self._hbfp_config          # recompute the layer seed

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
        self._hbfp_stochastic = any(ops.is_stochastic(f) for f in self._hbfp_fmts)
        self._hbfp_eval_call = derive_seed(self._hbfp_layer_seed, EVAL_STEP)

    def _next_seeds(self):
        """Role seeds of this call (see :meth:`_next_call_seed`)."""
        if not self._hbfp_stochastic:
            if self.training and torch.is_grad_enabled():
                self.hbfp_step.add_(1)
            return torch.zeros(3, dtype=torch.int64)
        return role_seeds(self._next_call_seed())

    def _next_call_seed(self):
        """The call seed of this forward; advances the step counter in training forwards.

        A training forward (``self.training`` and grad enabled) uses step ``hbfp_step`` and
        advances it; any other forward uses :data:`EVAL_STEP` and leaves it, so inference is
        deterministic and validation does not change the training run. Under
        ``torch.compile`` the training seeds are computed with tensor ops on the step buffer,
        so the graph does not depend on the step; in eager mode with plain ints (cheaper).
        Without stochastic rounding the seeds are not used and stay 0.
        """
        training = self.training and torch.is_grad_enabled()
        if not training:
            return self._hbfp_eval_call
        if not self._hbfp_stochastic:                   # the seeds are not used
            self.hbfp_step.add_(1)
            return 0
        if torch.compiler.is_compiling():
            call = derive_seed(self._hbfp_layer_seed, self.hbfp_step)
        else:
            call = derive_seed(self._hbfp_layer_seed, int(self.hbfp_step))
        self.hbfp_step.add_(1)
        return call

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._hbfp_stochastic:
            step = self.hbfp_step
            destination[prefix + "hbfp_step"] = step if keep_vars else step.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "hbfp_step"
        if key in state_dict:
            step = state_dict[key]
            if not (isinstance(step, torch.Tensor) and step.dim() == 0
                    and not step.is_floating_point() and int(step) >= 0):
                error_msgs.append(f"{key} must be a non-negative 0-d integer tensor, not "
                                  f"{step!r}")
            else:
                with torch.no_grad():
                    self.hbfp_step.fill_(int(step))
            if key in unexpected_keys:
                unexpected_keys.remove(key)

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


class _HBFPConvMixin(_HBFPMixin):
    """The convolution of ``nn.Conv1d/2d/3d`` as im2col GEMMs in HBFP."""

    def _conv_forward(self, x, weight, bias):
        seeds = self._next_seeds()
        if self.padding_mode != "zeros":
            x = nn.functional.pad(x, self._reversed_padding_repeated_twice,
                                  mode=self.padding_mode)
            return conv_checked(x, weight, bias, self.stride, 0, self.dilation, self.groups,
                                seeds, self._hbfp_fmts, self._hbfp_key)
        return conv_checked(x, weight, bias, self.stride, self.padding, self.dilation,
                            self.groups, seeds, self._hbfp_fmts, self._hbfp_key)


class HBFPConv2d(_HBFPConvMixin, nn.Conv2d):
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


class _HBFPBuilt:
    """Constructor of the HBFP layers that :func:`convert` makes in place: the base class's
    arguments, plus ``config`` and ``layer_id`` as for :class:`HBFPLinear`."""

    def __init__(self, *args, config="bfp8", layer_id=0, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_hbfp(config, layer_id)


class HBFPConv1d(_HBFPBuilt, _HBFPConvMixin, nn.Conv1d):
    """``nn.Conv1d`` as im2col GEMMs in HBFP (:mod:`hbfp_hw.torch.conv`)."""


class HBFPConv3d(_HBFPBuilt, _HBFPConvMixin, nn.Conv3d):
    """``nn.Conv3d`` as im2col GEMMs in HBFP (:mod:`hbfp_hw.torch.conv`)."""


class _HBFPConvTransposeMixin(_HBFPMixin):
    """``nn.ConvTranspose1d/2d/3d`` as GEMMs and col2im in HBFP (:mod:`hbfp_hw.torch.conv`)."""

    def forward(self, x, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError(f"Only 'zeros' padding mode is supported for "
                             f"{type(self).__name__}")
        nd = len(self.kernel_size)
        output_padding = self._output_padding(x, output_size, self.stride, self.padding,
                                              self.kernel_size, nd, self.dilation)
        return conv_transpose_checked(x, self.weight, self.bias, self.stride, self.padding,
                                      output_padding, self.groups, self.dilation,
                                      self._next_seeds(), self._hbfp_fmts, self._hbfp_key)


class HBFPConvTranspose1d(_HBFPBuilt, _HBFPConvTransposeMixin, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` in HBFP."""


class HBFPConvTranspose2d(_HBFPBuilt, _HBFPConvTransposeMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` in HBFP."""


class HBFPConvTranspose3d(_HBFPBuilt, _HBFPConvTransposeMixin, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` in HBFP."""


class HBFPMultiheadAttention(_HBFPMixin, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose projections and attention products are HBFP GEMMs.

    The forward is ``nn.MultiheadAttention``'s own (all of its options), run under an
    :class:`~hbfp_hw.torch.mode.HBFPFunctionMode`: the input projection (one GEMM, or three
    with separate key/value dimensions), ``q @ k^T``, ``weights @ v`` and the output projection
    are HBFP GEMMs (``hbfp_hw.torch.attention``), operation ``i`` of a call with call seed
    ``op_seed(call seed, i)`` (:func:`hbfp_hw.torch.mode.op_seed`); softmax, masks, dropout
    and biases are FP32. ``convert`` turns an ``nn.MultiheadAttention`` into this class in
    place (same parameters and ``state_dict``); its ``out_proj`` is part of it.
    """

    def forward(self, *args, **kwargs):
        sequence = GemmSequence(self._next_call_seed(), self._hbfp_fmts, self._hbfp_key)
        with HBFPFunctionMode(sequence):
            return super().forward(*args, **kwargs)


class _SlowPathMode(TorchFunctionMode):
    """A torch function mode that changes nothing; while it is on, ``has_torch_function`` is
    true, so PyTorch's fused Transformer inference kernels (which would read the HBFP layers'
    weights and compute in FP32) are not taken."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _NoFastPath:
    """Mixin for ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` holding HBFP
    layers: inference runs the ordinary forward (through the HBFP layers), never the fused
    fast path."""

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            return super().forward(*args, **kwargs)         # the fast path is inference-only
        with _SlowPathMode():
            return super().forward(*args, **kwargs)


_SWAPPED = {}


def _swapped_class(mixin, base):
    """The class ``(mixin, base)`` named ``HBFP<base>``, made once and kept importable here."""
    cls = _SWAPPED.get((mixin, base))
    if cls is None:
        name = f"HBFP{base.__name__}"
        cls = type(name, (mixin, base), {"__module__": __name__})
        cls.__qualname__ = name
        if name not in globals():
            globals()[name] = cls
        _SWAPPED[(mixin, base)] = cls
    return cls


def _swap_in(module, mixin, config, layer_id):
    """Turn ``module`` into ``HBFP<its class>`` in place, keeping its parameters, buffers,
    hooks and parametrizations."""
    module.__class__ = _swapped_class(mixin, type(module))
    device = next(module.parameters()).device
    module._init_hbfp(config, layer_id)
    module.hbfp_step = module.hbfp_step.to(device)
    return module


def _adopt(new, old):
    """Give ``new`` the parameters (the same objects), device and mode of ``old``."""
    new.weight = old.weight
    new.bias = old.bias
    new.hbfp_step = torch.zeros((), dtype=torch.int64, device=old.weight.device)
    new.train(old.training)


_CONVERTIBLE = {nn.Linear: HBFPLinear.from_linear, nn.Conv2d: HBFPConv2d.from_conv2d}
#: Classes converted in place, with the methods a subclass must not override to be converted
#: too (its computation is then the base class's).
_CONV = ("forward", "_conv_forward")
_IN_PLACE = {nn.MultiheadAttention: (HBFPMultiheadAttention, ("forward",)),
             nn.Linear: (HBFPLinear, ("forward",)),
             nn.Conv1d: (HBFPConv1d, _CONV), nn.Conv2d: (HBFPConv2d, _CONV),
             nn.Conv3d: (HBFPConv3d, _CONV),
             nn.ConvTranspose1d: (HBFPConvTranspose1d, ("forward",)),
             nn.ConvTranspose2d: (HBFPConvTranspose2d, ("forward",)),
             nn.ConvTranspose3d: (HBFPConvTranspose3d, ("forward",))}
#: Containers with fused inference kernels that would bypass their HBFP layers.
_FAST_PATH = (nn.TransformerEncoderLayer, nn.TransformerEncoder)


def _inherits(cls, base, methods):
    return all(getattr(cls, m) is getattr(base, m) for m in methods)


def _converter(module):
    """How :func:`convert` turns ``module`` into an HBFP module, or None."""
    kind = type(module)
    if kind in _CONVERTIBLE:
        return _CONVERTIBLE[kind]
    for base, (hbfp, methods) in _IN_PLACE.items():
        if isinstance(module, base) and _inherits(kind, base, methods):
            if kind is base:
                return lambda m, cfg, lid, hbfp=hbfp: _swap_to(m, hbfp, cfg, lid)
            return lambda m, cfg, lid, hbfp=hbfp: _swap_in(m, hbfp, cfg, lid)
    return None


def _swap_to(module, cls, config, layer_id):
    """Turn a module of exactly ``cls``'s base class into ``cls`` in place."""
    module.__class__ = cls
    device = next(module.parameters()).device
    module._init_hbfp(config, layer_id)
    module.hbfp_step = module.hbfp_step.to(device)
    return module


def layer_id_for(name):
    """The layer id that :func:`convert` gives the module named ``name``: CRC-32 of the
    qualified name (UTF-8), so it does not depend on which other layers are converted."""
    return zlib.crc32(name.encode("utf-8"))


class _Skip:
    """The ``skip`` argument of :func:`convert`: names (globs, prefixes) and module types."""

    def __init__(self, skip):
        if skip is None:
            skip = ()
        if isinstance(skip, (str, type)):
            skip = (skip,)
        self.names, self.types = [], []
        for entry in skip:
            if isinstance(entry, str):
                self.names.append(entry)
            elif isinstance(entry, type) and issubclass(entry, nn.Module):
                self.types.append(entry)
            else:
                raise TypeError(f"skip entries must be module names (glob patterns allowed) or "
                                f"nn.Module classes, not {entry!r}")

    @staticmethod
    def name_matches(pattern, name):
        return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern + ".")

    def reason(self, name, module):
        """Why ``module`` is skipped, or ``None``."""
        if isinstance(module, tuple(self.types)):
            return f"skip={type(module).__name__} keeps it in FP32"
        for pattern in self.names:
            if self.name_matches(pattern, name):
                return f"skip entry {pattern!r} keeps it in FP32"
        return None

    def check_names(self, names):
        """Raise ValueError for name entries that match no module of the model."""
        unknown = [p for p in self.names if not any(self.name_matches(p, n) for n in names)]
        if unknown:
            raise ValueError(f"skip names {', '.join(map(repr, unknown))} match no module of "
                             f"the model (names as in model.named_modules(), e.g. "
                             f"{', '.join(repr(n) for n in list(names)[1:4])})")


def _has_own_parameters(module):
    return next(module.parameters(recurse=False), None) is not None


def _fp32_reason(module):
    """Why a parameter-bearing module that convert does not replace stays FP32, and whether
    that is worth a warning (it may hold GEMMs)."""
    kind = type(module)
    if isinstance(module, NO_GEMM_TYPES):
        return f"{kind.__name__} has no GEMM (FP32 by design in HBFP)", False
    for base in _IN_PLACE:
        if isinstance(module, base):
            return (f"a subclass of nn.{base.__name__} that overrides its forward is not "
                    f"converted", True)
    return (f"convert() does not replace {kind.__name__} (it converts "
            f"{', '.join('nn.' + t.__name__ for t in _IN_PLACE)} and their subclasses that "
            f"keep their forward)", True)


def convert(model, fmt="bfp8", backend="emulate", device=None, skip=(), *, layers=None,
            inplace=False, seed=0, accumulator=None):
    """Replace the ``nn.Linear`` and ``nn.Conv2d`` modules of ``model`` with HBFP modules.

    Parameters
    ----------
    model : nn.Module
    fmt : preset name, BFPFormat, "fp32", dict of roles or HBFPConfig
        Formats of the forward, grad_input and grad_weight GEMMs (by default one format for
        all three) of every layer that no ``layers`` rule matches.
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
        allowed; a name also skips everything under it) or module classes. A name that matches
        no module raises ``ValueError``.
    layers : dict or sequence of (pattern, format) pairs, optional
        Per-layer formats, first match wins (:class:`~hbfp_hw.torch.config.LayerRules`):
        ``{"features.0": "fp32", "re:classifier\\..*": {"grad_weight": "bfp4"}}``. A pattern
        that matches no layer that convert can replace raises ``ValueError``.
    inplace : bool
        Replace the modules of ``model`` itself (sharing its parameters) instead of a deep copy.
    seed : int
        Base seed of stochastic rounding (ignored if ``fmt`` is an HBFPConfig).
    accumulator : str or None
        How every converted GEMM sums its block products over K (docs/numerics.md 6):
        ``"fp32"``, ``"fp32-kahan"``, ``"bf16-rne"``, ``"bf16-sr"`` or ``"exact"``; None keeps
        the formats' own (FP32 unless a format says otherwise). A format with another
        accumulator than FP32 that differs from it is a ``ValueError``. The emulate backend
        runs the non-FP32 accumulators through the golden model (numpy; slower than its fused
        FP32 kernel); the device backend sums in FP32 only.

    Returns
    -------
    nn.Module
        The converted model, with its :class:`~hbfp_hw.torch.report.ConversionReport` as
        ``model.hbfp_report``. Exactly ``nn.Linear`` and ``nn.Conv2d`` instances are replaced
        (not subclasses, whose forward may differ); HBFP modules already in the model (from an
        earlier convert) get the new formats and keep their step counters. Parameter names
        do not change, so the model loads the original ``state_dict``. Bias, normalization,
        activations, softmax and the loss stay FP32. ``torch.nn`` itself is never modified.
        Every converted layer's id is :func:`layer_id_for` its qualified name.

    Warns
    -----
    FP32LayerWarning
        When a module that may hold GEMMs (with parameters of its own, of a type convert does
        not replace) stays in FP32; the report has the list.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    config = as_config(fmt, backend=backend, device=device, seed=prng.check_seed(seed))
    rules = LayerRules(layers if layers is not None else (), config)
    if accumulator is not None:
        rules = rules.with_accumulator(accumulator)
        config = rules.default
    for cfg in [config] + [r.config for r in rules if r.config is not None]:
        check_backend(cfg)                   # fail now, not at the first forward
    skip = _Skip(skip)
    names = [name for name, _ in model.named_modules()]
    skip.check_names(names)
    plan = _plan(model, skip, rules)
    if not inplace:
        model = copy.deepcopy(model)
    entries, replacements, warned = [], [], []
    for name, module, cfg, reason in plan:
        module = model.get_submodule(name) if name else model
        if cfg is None:
            warn = reason is None
            if reason is None:
                reason, warn = _fp32_reason(module)
            entry = LayerEntry(name, type(module).__name__, False, reason=reason, warned=warn)
            if warn:
                warned.append(entry)
        else:
            layer_id = layer_id_for(name)
            kind = type(module).__name__
            if isinstance(module, _HBFPMixin):
                module.layer_id = layer_id
                module.hbfp_config = cfg
            else:
                new = _converter(module)(module, cfg, layer_id)
                if new is not module:
                    replacements.append((name, new))
            entry = LayerEntry(name, kind, True, formats=cfg.describe(), layer_id=layer_id)
        entries.append(entry)
    for name, new in replacements:
        if not name:
            model = new
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    for module in model.modules():
        if (type(module) in _FAST_PATH and any(isinstance(m, _HBFPMixin)
                                                for m in module.modules())):
            module.__class__ = _swapped_class(_NoFastPath, type(module))
    model.hbfp_report = ConversionReport(entries)
    if warned:
        listed = "; ".join(f"{e.name or '(model)'} ({e.type}): {e.reason}" for e in warned)
        warnings.warn(f"convert: {len(warned)} module(s) with parameters stay in FP32: {listed}. "
                      f"See model.hbfp_report; pass them in skip= to silence this.",
                      FP32LayerWarning, stacklevel=2)
    return model


def _plan(model, skip, rules):
    """Decide each module's fate: ``(name, module, config or None, fp32 reason or None)``
    for the convertible modules and those with parameters of their own; check the rules."""
    plan, used = [], set()
    inside = None                        # the name of a converted module whose parts we pass
    for name, module in model.named_modules():
        if inside is not None and (inside == "" or name.startswith(inside + ".")):
            continue
        inside = None
        convertible = isinstance(module, _HBFPMixin) or _converter(module) is not None
        if not convertible and not _has_own_parameters(module):
            continue
        if convertible:
            inside = name
        reason = skip.reason(name, module)
        if reason is not None:
            plan.append((name, module, None, reason))
            continue
        if not convertible:
            plan.append((name, module, None, None))
            continue
        rule = rules.match(name)
        if rule is None:
            plan.append((name, module, rules.default, None))
            continue
        used.add(rule.pattern)
        if rule.config is None:
            plan.append((name, module, None, f"rule {rule.pattern!r} keeps it in FP32"))
        else:
            plan.append((name, module, rule.config, None))
    unused = [r.pattern for r in rules if r.pattern not in used]
    if unused:
        raise ValueError(f"layers patterns {', '.join(map(repr, unused))} match no layer that "
                         f"convert replaces, or an earlier pattern matches all of them first")
    return plan


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


def strip_hbfp_state(state_dict):
    """Return a copy of ``state_dict`` without the HBFP step counters (``*.hbfp_step``), for
    loading an HBFP model's checkpoint into the plain FP32 model with ``strict=True``."""
    return type(state_dict)((k, v) for k, v in state_dict.items()
                            if not (k == "hbfp_step" or k.endswith(".hbfp_step")))
