"""The sort-task Transformer: every GEMM runs in HBFP, and the task trains."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hbfp_hw.torch import HBFPLinear, HBFPMultiheadAttention, convert, emulate, seqtask

aten = torch.ops.aten
#: ATen operations that multiply matrices (or hold a matrix product).
GEMM_OPS = {aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default,
            aten.addbmm.default, aten.mv.default, aten.dot.default, aten.addmv.default,
            aten.convolution.default, aten._scaled_dot_product_flash_attention_for_cpu.default,
            aten._scaled_dot_product_attention_math.default,
            aten._transformer_encoder_layer_fwd.default, aten._native_multi_head_attention.default}


class GemmCensus(TorchDispatchMode):
    """Counts ATen matrix products outside the HBFP backend's own calls."""

    def __init__(self):
        super().__init__()
        self.inside = 0
        self.outside = []
        self.hbfp_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMM_OPS and not self.inside:
            self.outside.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def census(monkeypatch):
    mode = GemmCensus()
    for name in ("gemm", "gemm_batched"):
        original = getattr(emulate.EmulateBackend, name)

        def wrapped(self, *args, _original=original):
            mode.inside += 1
            mode.hbfp_calls += 1
            try:
                return _original(self, *args)
            finally:
                mode.inside -= 1

        monkeypatch.setattr(emulate.EmulateBackend, name, wrapped)
    return mode


def _step(model):
    seqs = seqtask.make_data(8, 3)
    loss = seqtask._loss(model, seqs)
    loss.backward()
    model.eval()
    with torch.no_grad():                   # inference too (Transformer fast paths)
        model(seqs[:, :-1])
    model.train()


def test_every_gemm_of_the_transformer_is_hbfp(census):
    torch.manual_seed(0)
    model = convert(seqtask.SortTransformer(), "bfp8")
    assert sum(isinstance(m, HBFPMultiheadAttention) for m in model.modules()) == 2
    assert sum(isinstance(m, HBFPLinear) for m in model.modules()) == 5   # 2x2 FF + head
    assert not [e for e in model.hbfp_report.fp32 if e.warned]
    with census:
        _step(model)
    assert census.outside == []
    assert census.hbfp_calls > 0


def test_the_census_sees_fp32_gemms(census):
    """The check can fail: the same model unconverted runs its GEMMs outside HBFP."""
    torch.manual_seed(0)
    with census:
        _step(seqtask.SortTransformer())
    assert census.outside and census.hbfp_calls == 0


def test_sort_task_trains_and_reports():
    run = seqtask.train_sort(["fp32", "bfp8"], seeds=[0], steps=30, progress=False, evals=2)
    fp32, bfp8 = run["results"]["fp32"], run["results"]["bfp8"]
    first = fp32["runs"][0]["history"]["val_loss"]
    assert first[-1] < first[0] < 2.4                  # it learns (ln 10 = 2.30 at chance)
    assert abs(bfp8["val_loss"] - fp32["val_loss"]) / fp32["val_loss"] < 0.1
    assert "target" in run and "bfp8" in seqtask.format_table(run)
    assert run["results"]["bfp8"]["runs"][0]["conversion"]["converted"]
