"""What :func:`~hbfp_hw.torch.convert` did to a model: the conversion report.

``convert`` attaches a :class:`ConversionReport` to the model it returns
(``model.hbfp_report``): one :class:`LayerEntry` per converted module (with its formats) and
per module that holds parameters of its own and stays in FP32 (with the reason). It warns
(:class:`FP32LayerWarning`) when a module that may hold GEMMs stays in FP32 without being
asked to: a layer type that ``convert`` does not replace. Modules kept in FP32 on purpose
(``skip``, a ``layers`` rule with ``"fp32"``) and modules without a GEMM (normalization,
embeddings: FP32 by design in HBFP) are reported but not warned about.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

__all__ = ["ConversionReport", "LayerEntry", "FP32LayerWarning", "NO_GEMM_TYPES"]


class FP32LayerWarning(UserWarning):
    """A module that may hold GEMMs stays in FP32 after :func:`~hbfp_hw.torch.convert`."""


#: Parameter-bearing modules without a GEMM; they stay FP32 by design (HBFP quantizes only the
#: dot products).
NO_GEMM_TYPES = tuple(t for t in (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None),
    nn.LocalResponseNorm, nn.Embedding, nn.EmbeddingBag, nn.PReLU) if t is not None)


@dataclass(frozen=True)
class LayerEntry:
    """One module of the report.

    Members
    -------
    name : str
        Qualified name (``""`` for the model itself).
    type : str
        Class name of the original module.
    hbfp : bool
        Whether the module's GEMMs run in HBFP.
    formats : str or None
        The formats (:meth:`HBFPConfig.describe`), for converted modules.
    reason : str or None
        Why the module stays in FP32.
    warned : bool
        Whether this entry is part of the warning (FP32 without being asked to).
    layer_id : int or None
        The converted layer's id (it enters its stochastic-rounding seeds).
    """

    name: str
    type: str
    hbfp: bool
    formats: str | None = None
    reason: str | None = None
    warned: bool = False
    layer_id: int | None = None


class ConversionReport:
    """The modules that :func:`~hbfp_hw.torch.convert` converted and those left in FP32."""

    def __init__(self, entries):
        self.entries = tuple(entries)

    @property
    def converted(self):
        """Entries of the converted modules."""
        return [e for e in self.entries if e.hbfp]

    @property
    def fp32(self):
        """Entries of the parameter-bearing modules left in FP32."""
        return [e for e in self.entries if not e.hbfp]

    def to_dict(self):
        """The report as JSON-ready data."""
        return {"converted": [asdict(e) for e in self.converted],
                "fp32": [asdict(e) for e in self.fp32]}

    def __str__(self):
        width = max([len(e.name or "(model)") for e in self.entries] + [6])
        twidth = max([len(e.type) for e in self.entries] + [4])
        lines = [f"{'module':{width}}  {'type':{twidth}}  HBFP formats / why FP32"]
        for e in self.entries:
            what = e.formats if e.hbfp else f"FP32: {e.reason}"
            lines.append(f"{e.name or '(model)':{width}}  {e.type:{twidth}}  {what}")
        lines.append(f"{len(self.converted)} converted, {len(self.fp32)} with parameters in "
                     f"FP32")
        return "\n".join(lines)

    def __repr__(self):
        return (f"ConversionReport({len(self.converted)} converted, {len(self.fp32)} in FP32)")
