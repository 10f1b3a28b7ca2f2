"""In-place activations and element-wise ops: specs, tracing, measurement, and training without them."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latpred import trace
from latpred.errors import SpecError
from latpred.features import feature_names, featurize
from latpred.ops import get_op
from latpred.profiling.devices import CpuDevice, TimingProtocol
from latpred.selection import select
from latpred.spec import ModuleSpec

from .helpers_data import synthetic_data


def _act(fn: str, inplace: bool, batch: int = 1, channels: int = 16, h: int = 8) -> ModuleSpec:
    return get_op("activation").spec(batch_size=batch, fn=fn, channels=channels, h=h, inplace=inplace)


@pytest.mark.parametrize("fn", ["relu", "relu6", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh"])
def test_inplace_activation_writes_its_input_and_stays_away_from_denormals(fn):
    module, (x,) = get_op("activation").instantiate(_act(fn, True))
    with torch.inference_mode():
        for _ in range(300):  # a timing window repeats the call on one tensor
            out = module(x)
    assert out.data_ptr() == x.data_ptr()
    assert float(x.abs().min()) > 1e-3
    m2, (x2,) = get_op("activation").instantiate(_act(fn, False))
    assert m2(x2).data_ptr() != x2.data_ptr()


def test_inplace_elementwise_keeps_magnitude_and_gelu_has_no_inplace_form():
    spec = get_op("elementwise").spec(fn="mul", channels=8, h=4, inplace=True)
    module, (a, b) = get_op("elementwise").instantiate(spec)
    before = a.abs().clone()
    with torch.inference_mode():
        for _ in range(500):
            out = module(a, b)
    assert out.data_ptr() == a.data_ptr()
    torch.testing.assert_close(a.abs(), before)
    with pytest.raises(SpecError, match="'gelu' has no in-place form"):
        _act("gelu", True)


def test_a_stored_spec_from_before_inplace_existed_runs_out_of_place():
    old = ModuleSpec("activation", {"fn": "relu", "channels": 16, "h": 8, "w": 8})
    assert featurize(old)[feature_names("activation").index("inplace")] == 0.0
    module, (x,) = get_op("activation").instantiate(old)
    assert isinstance(module, nn.ReLU) and module(x).data_ptr() != x.data_ptr()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.gelu = nn.GELU()

    def forward(self, x):
        y = self.act(self.conv(x))
        y = F.relu(y, inplace=True)
        y = y.relu_()
        z = torch.relu(y)
        z = z.add_(y)
        return self.gelu(z + y)


def test_tracing_records_which_calls_write_in_place():
    g = trace(_Net().eval(), (torch.randn(1, 3, 8, 8),))
    got = [(n.op, n.spec.params["inplace"]) for n in g.nodes if n.op in ("activation", "elementwise")]
    assert got == [("activation", True), ("activation", True), ("activation", True), ("activation", False),
                   ("elementwise", True), ("elementwise", False), ("activation", False)]


def test_inplace_skips_the_large_output_allocation():
    # 8 x 96 x 112 x 112 floats = 37 MiB. With glibc's defaults an out-of-place ReLU maps and page-faults a
    # fresh output on every call (~19x slower than in place on the 2-core CPU); with the device's reuse pin
    # it reuses its output buffer and still moves twice the memory: 3.8 against 1.8 ms (2026-12-05, cpu2-avx2)
    dev = CpuDevice(TimingProtocol(repeats=3, min_repeats=3, reference_calls=0), threads=1)
    try:
        out_of_place = dev.measure(_act("relu", False, batch=8, channels=96, h=112)).latency_ms
        in_place = dev.measure(_act("relu", True, batch=8, channels=96, h=112)).latency_ms
    finally:
        dev.close()
    assert in_place < 0.7 * out_of_place  # the same op run out of place would read ~1.0


def test_training_without_inplace_samples_ignores_the_column():
    data = synthetic_data()
    assert not any(s.params["inplace"] for s in data.specs["activation"])
    predictor, _ = select(data, families=["ridge"], cv=2)
    assert "inplace" not in predictor.feature_names("activation")
    a, b = _act("relu", False, channels=64, h=14), _act("relu", True, channels=64, h=14)
    assert predictor.predict([a])[0] == predictor.predict([b])[0]
    assert "in_channels.align" in predictor.feature_names("conv2d")


@pytest.mark.cuda
def test_cuda_measures_inplace_ops_with_their_stage_times():
    # a CUDA graph replays the in-place call many times on one buffer: the capture must work and the
    # stage timings must be there, as for the out-of-place form
    from latpred.profiling.devices import CudaDevice

    dev = CudaDevice()
    try:
        for spec in (_act("silu", True, batch=8, channels=96, h=56), _act("silu", False, batch=8, channels=96, h=56),
                     get_op("elementwise").spec(fn="add", channels=96, h=56, batch_size=8, inplace=True)):
            m = dev.measure(spec)
            assert "gpu_error" not in m.extra, m.extra.get("gpu_error")
            assert m.latency_ms > 0 and m.extra["gpu_ms"] > 0 and m.extra["host_ms"] > 0
    finally:
        dev.close()
