"""Every registry entry builds, runs (real CPU), matches its declared shape, costs and featurizes."""

import math

import numpy as np
import pytest
import torch

from latpred.errors import SpecError, UnknownOpError
from latpred.features import feature_names, featurize
from latpred.ops import REGISTRY, get_op, resolve_spec
from latpred.profiling.space import ParameterSpace
from latpred.spec import ModuleSpec

QUICK = ParameterSpace.builtin("quick")
EXAMPLES = {}
for _s in QUICK.specs():
    EXAMPLES.setdefault(_s.op, _s)


def test_quick_space_covers_every_op():
    assert set(EXAMPLES) == set(REGISTRY)


@pytest.mark.parametrize("op_name", list(REGISTRY))
def test_builds_runs_and_matches_declared_shape(op_name):
    op = get_op(op_name)
    spec = EXAMPLES[op_name].with_conditions(batch_size=2)
    module, inputs = op.instantiate(spec)
    assert not module.training
    assert [tuple(x.shape) for x in inputs] == op.input_shapes(spec)
    with torch.inference_mode():
        y = module(*inputs)
    assert tuple(y.shape) == op.output_shape(spec)
    c = op.costs(spec)
    assert c.flops >= 0 and c.weights >= 0 and c.bytes_moved("float32") >= 0
    n_params = sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())
    if op_name in ("conv2d", "linear", "conv_transpose2d", "embedding", "layernorm", "groupnorm", "mha"):
        assert c.weights == n_params


@pytest.mark.parametrize("op_name", list(REGISTRY))
def test_featurize_matches_schema_and_is_finite(op_name):
    spec = EXAMPLES[op_name]
    x = featurize(spec)
    assert x.shape == (len(feature_names(op_name)),)
    assert np.all(np.isfinite(x))
    bigger = spec.with_conditions(batch_size=spec.batch_size * 4)
    names = feature_names(op_name)
    i = names.index("log2_batch_size")
    assert featurize(bigger)[i] == pytest.approx(x[i] + 2)


def test_conv_flops_match_hand_count():
    op = get_op("conv2d")
    s = op.spec(batch_size=2, in_channels=16, out_channels=32, kernel_size=3, stride=2, h=15, w=9)
    assert op.output_shape(s) == (2, 32, 8, 5)
    assert op.costs(s).flops == 2 * 2 * 32 * 8 * 5 * 16 * 9


def test_depthwise_and_same_padding_symbols():
    s = get_op("conv2d").spec(in_channels=32, out_channels=32, kernel_size=5, groups="depthwise", h=14, dilation=2)
    assert s.params["groups"] == 32 and s.params["padding"] == 4 and s.params["w"] == 14


@pytest.mark.parametrize("params, message", [
    (dict(in_channels=8, out_channels=8, kernel_size=7, padding=0, h=3), "larger than the padded input"),
    (dict(in_channels=6, out_channels=8, kernel_size=3, groups=4, h=8), "must divide in_channels"),
    (dict(in_channels=8, out_channels=8, kernel_size=3, h=8, bogus=1), "unknown parameter"),
    (dict(in_channels=8, out_channels=8, h=8), "kernel_size is required"),
    (dict(in_channels=8.5, out_channels=8, kernel_size=3, h=8), "must be an integer"),
    (dict(in_channels=0, out_channels=8, kernel_size=3, h=8), "must be >= 1"),
])
def test_conv_spec_errors_name_the_field(params, message):
    with pytest.raises(SpecError, match=message):
        get_op("conv2d").spec(**params)


def test_unknown_op_is_a_keyerror_listing_known_ops():
    with pytest.raises(UnknownOpError, match="conv2d") as e:
        get_op("conv3d")
    assert isinstance(e.value, KeyError)


def test_resolve_spec_is_idempotent():
    s = EXAMPLES["maxpool2d"]
    assert resolve_spec(s) == s


def test_spec_validation_and_roundtrip():
    s = ModuleSpec("linear", {"in_features": 4, "out_features": 2, "tokens": 1, "bias": True}, batch_size=3,
                   utilization=0.5, threads=1, extra={"freq_ghz": 2.4})
    assert ModuleSpec.from_dict(s.to_dict()) == s and hash(ModuleSpec.from_dict(s.to_dict())) == hash(s)
    for bad in (dict(batch_size=0), dict(utilization=1.0), dict(dtype="int8"), dict(threads=0)):
        with pytest.raises(SpecError):
            ModuleSpec("linear", {}, **bad)
    with pytest.raises(SpecError, match="finite"):
        ModuleSpec("linear", {"x": math.nan})


def test_embedding_uses_index_inputs():
    spec = EXAMPLES["embedding"]
    (x,) = get_op("embedding").make_inputs(spec)
    assert x.dtype == torch.long and int(x.max()) < spec.params["num_embeddings"]
