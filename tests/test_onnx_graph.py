"""from_onnx: ONNX models exported from small PyTorch modules map to the registry's specs."""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from latpred.errors import SpecError
from latpred.graph.model_graph import fold_chw
from latpred.graph.onnx import from_onnx


def _export(model: nn.Module, x: torch.Tensor, path, dynamic: bool = False) -> str:
    model.eval()
    kw = {"input_names": ["x"], "output_names": ["y"]}
    if dynamic:
        kw["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, training=torch.onnx.TrainingMode.EVAL,
                          do_constant_folding=False, **kw)
    return str(path)


def _randomize(model: nn.Module) -> nn.Module:
    """Distinct values everywhere, so the exporter does not merge equal initializers (BN ones/zeros)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=8)
        self.act = nn.ReLU6()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.act(self.dw(x))
        return self.fc(torch.flatten(self.gap(x), 1))


class ResBlock(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 1)
        self.se = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c2(torch.relu(self.c1(x)))
        gate = torch.sigmoid(self.se(x.mean((2, 3), keepdim=True)))
        return torch.relu(x + y * gate)


class Block(nn.Module):
    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1)
        return x + self.proj((a @ v).transpose(1, 2).reshape(b, t, d))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    cnn = _randomize(SmallCNN())
    res = _randomize(ResBlock())
    blk = _randomize(Block())
    return {
        "cnn": (cnn, _export(cnn, torch.randn(2, 3, 16, 16), d / "cnn.onnx")),
        "res": (res, _export(res, torch.randn(1, 8, 8, 8), d / "res.onnx", dynamic=True)),
        "block": (blk, _export(blk, torch.randn(2, 5, 16), d / "block.onnx", dynamic=True)),
        "dir": d,
    }


def _by_target(g, target):
    return [n for n in g.nodes if n.target == target]


def test_fold_chw():
    assert fold_chw((2, 3, 4, 5)) == (3, 4, 5)
    assert fold_chw((2, 7, 16)) == (7, 16, 1)
    assert fold_chw((2, 16)) == (16, 1, 1)
    assert fold_chw((2,)) == (1, 1, 1)
    assert fold_chw((2, 3, 4, 5, 6)) == (3, 20, 6)


def test_cnn_maps_to_specs(files):
    cnn, path = files["cnn"]
    g = from_onnx(path)
    assert g.source == "onnx" and g.batch_size == 2 and g.name == "cnn"
    onnx_nodes = onnx.load(path).graph.node
    assert len([n for n in g.nodes if n.kind not in ("input", "output")]) == len(onnx_nodes)
    assert [n.kind for n in g.nodes][0] == "input" and g.nodes[-1].kind == "output"
    ops = [n.op for n in g.compute_nodes]
    assert ops == ["conv2d", "batchnorm2d", "activation", "maxpool2d", "conv2d", "activation", "adaptive_avgpool2d",
                   "flatten", "linear"]
    c1, dw = [n.spec.params for n in _by_target(g, "Conv")]
    m = cnn.conv1
    assert dict(c1) == {"in_channels": 3, "out_channels": 8, "kernel_size": 3, "stride": 1, "padding": 1, "dilation": 1,
                        "groups": 1, "bias": False, "h": 16, "w": 16}
    assert (c1["in_channels"], c1["out_channels"], c1["kernel_size"]) == (m.in_channels, m.out_channels, m.kernel_size[0])
    assert dict(dw) == {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2,
                        "groups": 8, "bias": True, "h": 8, "w": 8}
    assert _by_target(g, "Clip")[0].spec.params["fn"] == "relu6"
    assert dict(_by_target(g, "MaxPool")[0].spec.params) == {"channels": 8, "h": 16, "w": 16, "kernel_size": 2, "stride": 2,
                                                              "padding": 0, "ceil_mode": False}
    assert dict(_by_target(g, "Gemm")[0].spec.params) == {"in_features": 8, "out_features": 10, "tokens": 1, "bias": True}
    assert all(n.spec.batch_size == 2 for n in g.compute_nodes)
    assert g.param_bytes == _state_bytes(cnn)
    # every tensor an ONNX node consumes arrives on an edge from its producer
    assert ("x", "/conv1/Conv") in g.edges and g.predecessors("output") == ["/fc/Gemm"]


def test_fixed_batch_rescaled(files):
    _, path = files["cnn"]
    g2 = from_onnx(path)
    g8 = from_onnx(path, batch_size=8)
    assert g8.batch_size == 8 and all(n.spec.batch_size == 8 for n in g8.compute_nodes)
    assert g8.total_flops == pytest.approx(4 * g2.total_flops)
    assert g8.node("x").out_shapes == ((8, 3, 16, 16),)


def test_residual_dynamic_batch(files):
    res, path = files["res"]
    g1 = from_onnx(onnx.load(path), name="res")  # a ModelProto works too; symbolic batch defaults to 1
    g4 = from_onnx(path, batch_size=4)
    assert g1.batch_size == 1 and g4.batch_size == 4 and g4.metadata["dynamic_batch"]
    assert g4.node("x").out_shapes == ((4, 8, 8, 8),)
    assert [n.op for n in g4.compute_nodes] == [n.op for n in g1.compute_nodes]
    assert all(n.spec.batch_size == 4 for n in g4.compute_nodes if n.spec is not None)
    assert g4.total_flops == pytest.approx(4 * g1.total_flops)
    assert g4.total_flops == pytest.approx(g1.with_batch_size(4).total_flops)
    adds = [n.spec.params for n in g4.compute_nodes if n.op == "elementwise"]
    assert {(p["fn"], p["broadcast"]) for p in adds} == {("add", False), ("mul", True)}
    mean = _by_target(g4, "ReduceMean")[0]
    assert mean.spec is None and "ReduceMean" in mean.reason and mean.costs.out_elems == 4 * 8
    assert g4.param_bytes == _state_bytes(res)


def test_transformer_block(files):
    blk, path = files["block"]
    g = from_onnx(path, batch_size=3)
    by_op: dict[str, list] = {}
    for n in g.compute_nodes:
        by_op.setdefault(n.op, []).append(dict(n.spec.params) if n.spec is not None else n.target)
    assert by_op["layernorm"] == [{"tokens": 5, "dim": 16}]
    assert by_op["linear"] == [{"in_features": 16, "out_features": 48, "tokens": 5, "bias": False},
                               {"in_features": 16, "out_features": 16, "tokens": 5, "bias": False}]
    assert by_op["matmul"] == [{"heads": 2, "m": 5, "k": 8, "n": 5, "shared_rhs": False},
                               {"heads": 2, "m": 5, "k": 5, "n": 8, "shared_rhs": False}]
    assert by_op["softmax"] == [{"rows": 10, "cols": 5}]
    assert g.param_bytes == _state_bytes(blk)
    assert len(g.of_kind("view")) > 0 and not g.coverage().fallback
    assert g.node("/Reshape_1").out_shapes == ((3, 5, 16),)


def test_generic_and_asymmetric_padding():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 7, 7])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 3, 3], [0.1] * 144)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 0, 1, 1], name="conv"),
             helper.make_node("Erf", ["c"], ["y"], name="erf")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    g = from_onnx(m, batch_size=2)
    conv, erf = g.node("conv"), g.node("erf")
    assert conv.spec is None and "asymmetric" in conv.reason and conv.param_bytes == 144 * 4
    assert erf.spec is None and erf.reason == "ONNX op Erf has no op type"
    assert g.batch_size == 2 and erf.costs.flops == 2 * 4 * 7 * 7  # fixed batch 1, rescaled to 2


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        from_onnx(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\xffthis is not an onnx model\x13\x37" * 10)
    with pytest.raises(SpecError, match="bad.onnx"):
        from_onnx(bad)
    with pytest.raises(SpecError, match="from_onnx expects"):
        from_onnx(42)


def test_control_flow_rejected():
    def branch(name: str, value: float) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1])
        return helper.make_graph([helper.make_node("Constant", [], [f"{name}_out"],
                                                   value=helper.make_tensor("v", TensorProto.FLOAT, [1], [value]))],
                                 name, [], [out])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", 1.0), else_branch=branch("else", 0.0), name="cond")
    m = helper.make_model(helper.make_graph([node], "g", [c], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(SpecError, match=r"'cond' is an If"):
        from_onnx(m)


def test_symbolic_non_batch_dim_rejected():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(SpecError, match="'seq' at axis 1"):
        from_onnx(m)


def test_torchvision_resnet18(tmp_path):
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(weights=None)
    path = _export(model, torch.randn(1, 3, 64, 64), tmp_path / "resnet18.onnx", dynamic=True)
    g = from_onnx(path, batch_size=2)
    onnx_nodes = onnx.load(path).graph.node
    names = {n.name for n in g.nodes}
    assert all((n.name or n.output[0]) in names for n in onnx_nodes)
    assert len(g.nodes) == len(onnx_nodes) + 2
    convs = _by_target(g, "Conv")
    assert len(convs) == 20 and all(n.op == "conv2d" for n in convs)
    assert not g.coverage().fallback
    assert g.param_bytes == _state_bytes(model)


class Branchy(nn.Module):
    """Activations in each situation the in-place rule tells apart."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6()
        self.hswish = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hswish(x)  # reads the graph input: never in place
        y = self.relu(self.conv(x))  # sole reader of the conv output: in place
        z = self.relu6(y)  # y is also read by the add below: not in place (nor could it be in PyTorch)
        return torch.sigmoid(z + y)  # sigmoid modules have no in-place form


def test_activations_are_in_place_where_pytorch_could_run_them_so(tmp_path):
    path = _export(Branchy(), torch.randn(2, 4, 8, 8), tmp_path / "branchy.onnx")
    acts = {n.target: n.spec.params["inplace"] for n in from_onnx(path).compute_nodes if n.op == "activation"}
    assert acts == {"HardSwish": False, "Relu": True, "Clip": False, "Sigmoid": False}
    assert not any(n.spec.params["inplace"] for n in from_onnx(path, inplace_activations=False).compute_nodes
                   if n.op == "activation")
    with pytest.raises(SpecError, match="inplace_activations must be True or False"):
        from_onnx(path, inplace_activations="yes")


def test_torchvision_mobilenet_v2_predicts_as_its_fx_trace(tmp_path):
    tv = pytest.importorskip("torchvision")
    from latpred.graph.trace import trace

    model = tv.models.mobilenet_v2(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    onnx_g = from_onnx(_export(model, x, tmp_path / "mobilenet_v2.onnx"))
    fx_g = trace(model, (x,))

    def acts(g):
        return sorted((n.spec.params["fn"], n.spec.params["inplace"]) for n in g.compute_nodes if n.op == "activation")

    # the 35 ReLU6(inplace=True) of the traced module are in place in the ONNX graph too (Clip(0, 6) there)
    assert acts(onnx_g) == acts(fx_g) and acts(fx_g).count(("relu6", True)) == 35
