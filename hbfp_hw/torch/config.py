"""Per-role formats, backend and seeds of the HBFP layers.

Each HBFP layer runs three GEMMs, each quantized along its own reduction axis:

====================  =============================  ===================================
role                  GEMM (linear layer)            reduces over
====================  =============================  ===================================
``forward``           ``y = x @ W^T``                in_features
``grad_input``        ``dx = dy @ W``                out_features
``grad_weight``       ``dW = dy^T @ x``              the batch (and spatial positions)
====================  =============================  ===================================

:class:`HBFPConfig` holds one format per role (``None`` keeps that GEMM in plain FP32), the
backend and the base seed of stochastic rounding.

Per-operand formats. A role may quantize its two operands differently (FP8 training: E4M3
activations and weights, E5M2 gradients), given by **tensor kind**, not by the position of the
operand in a particular GEMM (a convolution's grad_input is computed as ``W^T @ dy^T``, a
matmul's grad_weight as ``a^T @ dc``): a role's format may be a pair in the fixed kind order

====================  =============================
role                  pair
====================  =============================
``forward``           (activation, weight)
``grad_input``        (gradient, weight)
``grad_weight``       (gradient, activation)
====================  =============================

and :func:`as_config` builds those pairs from ``{"activations": ..., "weights": ...,
"gradients": ...}``. For ``matmul(a, b)`` (attention, say), ``a`` counts as the activation
and ``b`` as the weight. The two formats of a pair must share the block size and the shared
exponent's width (numerics.md 5.4).

Seeds. Every GEMM gets a 32-bit seed, and ``golden.gemm`` uses it for ``A`` and ``seed + 1``
for ``B``. A layer call derives its seeds from the base seed, the layer id (its position among
the layers that :func:`~hbfp_hw.torch.convert` replaced) and the layer's step counter (the
number of its forward calls so far, see :func:`~hbfp_hw.torch.set_seed`)::

    call_seed = derive_seed(seed, layer_id, step)
    gemm seed of role r (0 forward, 1 grad_input, 2 grad_weight) = derive_seed(call_seed, r)

The functional API takes ``call_seed`` directly. Sub-GEMMs of one call (conv groups, batched
matmul) use ``(role seed + 2 * i) mod 2**32`` for sub-GEMM ``i``. :func:`derive_seed` is a
fixed integer hash, so a run is reproducible from its seed, and it accepts int64 tensors as
well as ints so that ``torch.compile`` sees no Python-side state.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, replace

from hbfp_hw.formats import (
    Accumulator,
    BFPFormat,
    as_accumulator,
    check_operand_formats,
    resolve_format,
)
from hbfp_hw.golden import prng
from hbfp_hw.torch.backends import backend_key
from hbfp_hw.torch.ops import format_args

__all__ = ["HBFPConfig", "LayerRule", "LayerRules", "ROLES", "KINDS", "as_config",
           "derive_seed", "format_label", "mix32"]

#: The three GEMMs of a layer, in seed order.
ROLES = ("forward", "grad_input", "grad_weight")
#: The tensor kinds of per-operand formats, and each role's operands as kinds.
KINDS = ("activations", "weights", "gradients")
ROLE_OPERANDS = {"forward": ("activations", "weights"),
                 "grad_input": ("gradients", "weights"),
                 "grad_weight": ("gradients", "activations")}
_M32 = 0xFFFFFFFF


def mix32(x):
    """A 32-bit integer hash (works on ints and on int64 tensors holding 0..2**32-1)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def derive_seed(seed, *values):
    """Fold ``values`` (ints or int64 tensors) into ``seed``; returns a value in 0..2**32-1."""
    s = seed & _M32
    for v in values:
        s = mix32(s ^ mix32(v & _M32))
    return s


def _role_format(name, value):
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "fp32":
        return None
    if isinstance(value, (tuple, list)):
        a, b = ROLE_OPERANDS[name]
        if len(value) != 2:
            raise ValueError(f"{name}: a pair of formats ({a[:-1]}, {b[:-1]}), not {value!r}")
        try:
            fa, fb = (resolve_format(v) for v in value)
            check_operand_formats(fa, fb)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{name}: the pair ({a[:-1]}, {b[:-1]}): {e}") from None
        return fa if fa == fb else (fa, fb)
    try:
        return resolve_format(value)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e} (or 'fp32' to keep this GEMM unquantized)") from None


def format_label(fmt):
    """``"fp32"``, a format's name, or ``"a/b"`` for a pair of operand formats."""
    if fmt is None:
        return "fp32"
    if isinstance(fmt, tuple):
        return "/".join(f.name for f in fmt)
    return fmt.name


@dataclass(frozen=True)
class HBFPConfig:
    """Formats of the three GEMM roles, the backend and the base seed.

    Parameters
    ----------
    forward, grad_input, grad_weight : BFPFormat, preset name, pair of them, "fp32" or None
        Format of each GEMM role; ``"fp32"``/``None`` keeps that GEMM in FP32; a pair gives
        the role's two operands their own formats, in the kind order of the module docstring
        (stored as a tuple; a pair of equal formats is stored as that format).
    backend : str
        ``"emulate"`` (default), ``"device"`` or ``"fp32"`` (see :mod:`hbfp_hw.torch.backends`).
    device : str, hbfp_hw.Device or None
        Device URL for ``backend="device"`` (``None``: ``"sim"``, the simulated board), or an
        open ``hbfp_hw.Device`` (stored as the ``"object:ID"`` token that names it).
    seed : int
        Base seed of stochastic rounding, ``0..2**32-1``.
    """

    forward: BFPFormat | tuple | None = resolve_format("bfp8")
    grad_input: BFPFormat | tuple | None = resolve_format("bfp8")
    grad_weight: BFPFormat | tuple | None = resolve_format("bfp8")
    backend: str = "emulate"
    device: str | None = None
    seed: int = 0

    def __post_init__(self):
        for role in ROLES:
            object.__setattr__(self, role, _role_format(role, getattr(self, role)))
        key = backend_key(self.backend, self.device)
        if "@" in key:
            object.__setattr__(self, "device", key.partition("@")[2])
        prng.check_seed(self.seed)

    @property
    def key(self):
        """The backend key (see :func:`hbfp_hw.torch.backends.backend_key`)."""
        return backend_key(self.backend, self.device)

    @property
    def formats(self):
        """The three role formats as a tuple (``None`` = FP32; a pair of operand formats is a
        tuple)."""
        return tuple(getattr(self, role) for role in ROLES)

    @property
    def role_formats(self):
        """``{role: format}`` for the three roles of :data:`ROLES`, in that order."""
        return dict(zip(ROLES, self.formats))

    def gemm_args(self):
        """Per role the op's format arguments (:func:`hbfp_hw.torch.ops.format_args`: 4 for
        integer elements, 5 for minifloat ones, 6 for a pair of operand formats) or
        ``None``."""
        return tuple(None if f is None or self.backend == "fp32" else format_args(f)
                     for f in self.formats)

    def replace(self, **changes):
        """Return a copy with some fields changed (and validated)."""
        return replace(self, **changes)

    def with_accumulator(self, accumulator):
        """Return a copy whose quantized roles accumulate with ``accumulator`` (a name or an
        :class:`~hbfp_hw.formats.Accumulator`; None: unchanged). A role whose format already
        has another accumulator than FP32 is an error (docs/numerics.md 6)."""
        if accumulator is None:
            return self
        accumulator = as_accumulator(accumulator)

        def change(role, fmt):
            if fmt is None:
                return None
            if isinstance(fmt, tuple):
                return tuple(change(role, f) for f in fmt)
            if fmt.accumulator not in (Accumulator.FP32, accumulator):
                raise ValueError(f"accumulator={accumulator.value!r} conflicts with {role}'s "
                                 f"format {fmt.name}, which accumulates in {fmt.accumulator}")
            return fmt.replace(accumulator=accumulator)

        return self.replace(**{role: change(role, f) for role, f in self.role_formats.items()})

    def describe(self):
        """Short text such as ``bfp8``, ``fwd=bfp8 gi=bfp4 gw=fp32`` or, with operand
        pairs, ``fwd=mxfp8_e4m3 gi=mxfp8_e5m2/mxfp8_e4m3 gw=mxfp8_e5m2/mxfp8_e4m3``."""
        names = [format_label(f) for f in self.formats]
        if len(set(names)) == 1:
            return names[0]
        return f"fwd={names[0]} gi={names[1]} gw={names[2]}"


def as_config(fmt="bfp8", backend="emulate", device=None, seed=0, accumulator=None):
    """Build an :class:`HBFPConfig`.

    ``fmt`` is a preset name, a :class:`BFPFormat`, ``"fp32"``, a dict with some of the keys
    ``forward``, ``grad_input``, ``grad_weight`` (missing roles use ``"bfp8"``), a dict with
    some of the tensor kinds ``activations``, ``weights``, ``gradients`` (per-operand
    formats, see the module docstring; missing kinds use ``"bfp8"``; ``"fp32"`` is not a
    kind's format), the string ``"A/G"`` (``"mxfp8_e4m3/mxfp8_e5m2"``: activations and
    weights in ``A``, gradients in ``G``, the FP8 training recipe), or an
    :class:`HBFPConfig`, which is returned as it is. ``accumulator`` (a name of
    :class:`~hbfp_hw.formats.Accumulator`) is given to every quantized role
    (:meth:`HBFPConfig.with_accumulator`).
    """
    if accumulator is not None:
        return as_config(fmt, backend, device, seed).with_accumulator(accumulator)
    if isinstance(fmt, HBFPConfig):
        return fmt
    if isinstance(fmt, str) and "/" in fmt:
        parts = [p.strip() for p in fmt.split("/")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"fmt 'A/G' gives activations and weights A and gradients G "
                             f"(two preset names), not {fmt!r}")
        fmt = {"activations": parts[0], "weights": parts[0], "gradients": parts[1]}
    if isinstance(fmt, dict) and set(fmt) & set(KINDS):
        unknown = set(fmt) - set(KINDS)
        if unknown:
            raise ValueError(f"fmt's keys must be roles ({', '.join(ROLES)}) or tensor kinds "
                             f"({', '.join(KINDS)}), not both; got "
                             f"{', '.join(sorted(map(str, fmt)))}")
        kinds = {}
        for kind in KINDS:
            spec = fmt.get(kind, "bfp8")
            if _is_fp32(spec):
                raise ValueError(f"{kind}: a format, not {spec!r} (keep a role in FP32 with "
                                 f"the role keys instead)")
            kinds[kind] = spec
        roles = {role: tuple(kinds[k] for k in ROLE_OPERANDS[role]) for role in ROLES}
    elif isinstance(fmt, dict):
        unknown = set(fmt) - set(ROLES)
        if unknown:
            raise ValueError(f"fmt's keys must be among {', '.join(ROLES)} (or the tensor "
                             f"kinds {', '.join(KINDS)}), not "
                             f"{', '.join(sorted(map(str, unknown)))}")
        roles = {role: fmt.get(role, "bfp8") for role in ROLES}
    else:
        roles = dict.fromkeys(ROLES, fmt)
    return HBFPConfig(**roles, backend=backend, device=device, seed=seed)


_FP32_WORDS = ("fp32",)


def _is_fp32(spec):
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in _FP32_WORDS)


@dataclass(frozen=True)
class LayerRule:
    """One rule of :class:`LayerRules`: a name pattern and what matching layers get.

    Members
    -------
    pattern : str
        As given: a glob (``fnmatch``, case-sensitive) on the qualified module name, or
        ``"re:REGEX"`` for a regular expression that must match the whole name.
    config : HBFPConfig or None
        The layer's formats, backend and seed; ``None`` keeps the layer in FP32.
    """

    pattern: str
    config: HBFPConfig | None

    def matches(self, name):
        """Whether the qualified module ``name`` matches this rule's pattern."""
        if self.pattern.startswith("re:"):
            return re.fullmatch(self.pattern[3:], name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)


class LayerRules:
    """Per-layer formats: name patterns mapped to formats, first match wins.

    Parameters
    ----------
    rules : dict or sequence of (pattern, spec) pairs
        In order. A pattern is a glob on the qualified module name (as in
        ``model.named_modules()``, e.g. ``"features.0"``, ``"blocks.*.mlp.*"``) or
        ``"re:REGEX"`` (``re.fullmatch``). A spec is ``"fp32"``/``None`` (keep the layer in
        FP32), a preset name or format object (all three roles), a dict of some roles
        (``{"grad_weight": "bfp4"}``; the other roles keep the default's formats), a dict of
        tensor kinds (``{"activations": "mxfp8_e4m3", "gradients": "mxfp8_e5m2", ...}``, see
        :func:`as_config`), or an :class:`HBFPConfig`.
    default : HBFPConfig
        The configuration of layers that no rule matches; also gives the backend, device and
        seed of every rule that is not an HBFPConfig itself.

    Raises
    ------
    TypeError, ValueError
        For a pattern that is not a string, an invalid regular expression or an invalid spec;
        the message names the pattern.
    """

    def __init__(self, rules, default):
        if isinstance(rules, dict):
            rules = list(rules.items())
        elif isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
            raise TypeError(f"layers must be a dict or a sequence of (pattern, format) pairs, "
                            f"not {rules!r}")
        self.default = default
        self.rules = tuple(self._rule(item) for item in rules)

    def _rule(self, item):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"layers entries must be (pattern, format) pairs, not {item!r}")
        pattern, spec = item
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"layers patterns must be non-empty strings, not {pattern!r}")
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as e:
                raise ValueError(f"layers pattern {pattern!r} is not a valid regular "
                                 f"expression: {e}") from None
        if _is_fp32(spec):
            return LayerRule(pattern, None)
        d = self.default
        try:
            if isinstance(spec, HBFPConfig):
                config = spec
            elif isinstance(spec, dict) and set(spec) & set(KINDS):
                config = as_config(spec, backend=d.backend, device=d.device, seed=d.seed)
            elif isinstance(spec, dict):
                unknown = set(spec) - set(ROLES)
                if unknown:
                    raise ValueError(f"its role keys must be among {', '.join(ROLES)}, not "
                                     f"{', '.join(sorted(map(str, unknown)))}")
                config = d.replace(**spec)
            else:
                config = d.replace(**dict.fromkeys(ROLES, spec))
        except (TypeError, ValueError) as e:
            raise type(e)(f"layers[{pattern!r}]: {e}") from None
        return LayerRule(pattern, config)

    def with_accumulator(self, accumulator):
        """These rules with :meth:`HBFPConfig.with_accumulator` applied to every
        configuration (the default's included)."""
        out = LayerRules((), self.default.with_accumulator(accumulator))
        out.rules = tuple(LayerRule(r.pattern, None if r.config is None
                                    else r.config.with_accumulator(accumulator))
                          for r in self.rules)
        return out

    def match(self, name):
        """Return the first :class:`LayerRule` whose pattern matches ``name``, or ``None``."""
        for rule in self.rules:
            if rule.matches(name):
                return rule
        return None

    def __iter__(self):
        return iter(self.rules)

    def __repr__(self):
        rules = ", ".join(f"{r.pattern!r}: {'fp32' if r.config is None else r.config.describe()}"
                          for r in self.rules)
        return f"LayerRules({{{rules}}}, default={self.default.describe()})"
