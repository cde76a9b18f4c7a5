"""PyTorch integration of hbfp-hw: HBFP layers whose GEMMs are bit-exact with the golden model.

Every dot product of a converted layer, in the forward pass and in both backward GEMMs, is an
HBFP GEMM (docs/numerics.md 3.3) with its operands quantized along that GEMM's reduction axis;
bias, normalization, activations, softmax and the loss stay FP32.

>>> from hbfp_hw.torch import convert
>>> hbfp_model = convert(model, fmt="bfp8")            # a converted copy; emulate backend

This package needs PyTorch (``pip install 'hbfp-hw[torch]'``). The names below are imported
lazily, on first use, so that ``hbfp_hw.cli.train`` (the ``hbfp-hw train`` parser) and the
rest of hbfp_hw never import torch.

Modules: :mod:`~hbfp_hw.torch.emulate` (the bit-exact torch GEMM), :mod:`~hbfp_hw.torch.ops`
(the ``hbfp::gemm`` torch.library op), :mod:`~hbfp_hw.torch.autograd` (functional API),
:mod:`~hbfp_hw.torch.modules` (HBFP modules, :func:`convert`), :mod:`~hbfp_hw.torch.config`
(formats per role, seeds), :mod:`~hbfp_hw.torch.backends` (backend registry),
:mod:`~hbfp_hw.torch.data` and :mod:`~hbfp_hw.torch.train` (``hbfp-hw train``).
"""

import importlib

_EXPORTS = {
    "convert": "modules",
    "HBFPLinear": "modules",
    "HBFPConv1d": "modules",
    "HBFPConv2d": "modules",
    "HBFPConv3d": "modules",
    "HBFPConvTranspose1d": "modules",
    "HBFPConvTranspose2d": "modules",
    "HBFPConvTranspose3d": "modules",
    "HBFPMultiheadAttention": "modules",
    "hbfp_mode": "mode",
    "UnroutedGemmWarning": "mode",
    "set_seed": "modules",
    "hbfp_modules": "modules",
    "layer_id_for": "modules",
    "strip_hbfp_state": "modules",
    "LayerRules": "config",
    "ConversionReport": "report",
    "FP32LayerWarning": "report",
    "HBFPConfig": "config",
    "ROLES": "config",
    "as_config": "config",
    "derive_seed": "config",
    "hbfp_linear": "autograd",
    "hbfp_matmul": "autograd",
    "hbfp_conv1d": "conv",
    "hbfp_conv2d": "conv",
    "hbfp_conv3d": "conv",
    "hbfp_conv_transpose1d": "conv",
    "hbfp_conv_transpose2d": "conv",
    "hbfp_conv_transpose3d": "conv",
    "gemm": "ops",
    "register_backend": "backends",
    "get_backend": "backends",
    "backend_names": "backends",
    "BackendUnavailableError": "backends",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hbfp_hw.torch' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f"hbfp_hw.torch.{module}"), name)
    except ModuleNotFoundError as e:
        if e.name == "torch":
            raise ImportError("hbfp_hw.torch needs PyTorch: pip install 'hbfp-hw[torch]'") \
                from e
        raise
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
