"""ParameterSpace: parsing, every validation error, determinism, restriction, adaptive hook."""

import pytest

from latpred.errors import SpaceError
from latpred.profiling.space import Dist, ParameterSpace, builtin_spaces, load_space

BASE = {
    "name": "t", "seed": 3, "samples": 6,
    "runtime": {"batch_size": [1, 2], "utilization": 0.0, "threads": 1},
    "ops": {"conv2d": {"in_channels": [8, 16], "out_channels": {"log_range": [8, 64], "multiple_of": 8},
                       "kernel_size": [1, 3], "h": {"range": [7, 14]}},
            "linear": {"in_features": 32, "out_features": {"range": [16, 64]}}},
}


def space(**changes):
    data = {**BASE, **changes}
    return ParameterSpace.from_dict(data)


def test_builtin_spaces_validate_and_cover_all_ops():
    assert {"quick", "default"} <= set(builtin_spaces())
    for name in builtin_spaces():
        assert ParameterSpace.builtin(name).specs()


def test_random_draw_is_deterministic_and_respects_ranges():
    a, b = space().specs(), space().specs()
    assert a == b and len(a) == 12 and len({s.key for s in a}) == 12
    convs = [s for s in a if s.op == "conv2d"]
    assert all(s.params["out_channels"] % 8 == 0 and 8 <= s.params["out_channels"] <= 64 for s in convs)
    assert all(7 <= s.params["h"] <= 14 and s.params["w"] == s.params["h"] for s in convs)
    assert {s.batch_size for s in a} <= {1, 2} and all(s.threads == 1 for s in a)
    assert a[0].op == "conv2d" and a[1].op == "linear"  # round-robin interleaving


def test_restricting_ops_or_limit_keeps_other_specs():
    full = space().specs()
    only = space().restricted(ops=["linear"]).specs()
    assert only == [s for s in full if s.op == "linear"]
    assert space().specs(limit=4) == full[:4]


def test_restricted_overrides_runtime():
    s = space().restricted(batch_sizes=[8], utilization=[0.5])
    assert all(x.batch_size == 8 and x.utilization == 0.5 for x in s.specs())


def test_grid_strategy_enumerates_product():
    data = {**BASE, "strategy": "grid", "ops": {"linear": {"in_features": [8, 16], "out_features": {"range": [4, 8], "num": 3}}}}
    specs = ParameterSpace.from_dict(data).specs()
    assert len(specs) == 2 * 3 * 2  # in_features x out_features x batch sizes
    assert {s.params["out_features"] for s in specs} == {4, 6, 8}


def test_variants_and_references():
    data = {**BASE, "samples": 12,
            "ops": {"conv2d": {"in_channels": [8, 16, 24, 32], "out_channels": 32, "kernel_size": 3, "h": [7, 14],
                               "variants": {"dense": {"weight": 1},
                                            "dw": {"weight": 1, "groups": "depthwise", "out_channels": "@in_channels"}}}}}
    specs = ParameterSpace.from_dict(data).specs()
    dw = [s for s in specs if s.params["groups"] > 1]
    dense = [s for s in specs if s.params["groups"] == 1]
    assert dw and all(s.params["groups"] == s.params["in_channels"] == s.params["out_channels"] for s in dw)
    assert dense and all(s.params["out_channels"] == 32 for s in dense)


@pytest.mark.parametrize("where", ["op", "runtime"])
def test_a_lone_variant_is_an_error(where):
    # variants partition the draws, so a lone one would silently replace the base table (the default
    # space drew no linear layer with tokens for that reason until 2026-12-05)
    lone = {"only": {"weight": 0.3, "tokens": 1}} if where == "op" else {"only": {"weight": 2, "threads": 1}}
    op = {"in_features": 64, "out_features": 32, "tokens": [1, 197]}
    data = {**BASE, "ops": {"linear": {**op, "variants": lone} if where == "op" else op}}
    if where == "runtime":
        data["runtime"] = {**data.get("runtime", {}), "variants": lone}
    with pytest.raises(SpaceError, match=r"one variant \('only'\).*base"):
        ParameterSpace.from_dict(data)


def test_toml_roundtrip(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("""
name = "mine"
samples = 3
[runtime]
batch_size = [1, 4]
utilization = [0.0, 0.5]
[extra]
freq_ghz = [1.2, 2.4]
[ops.activation]
fn = { choices = ["relu", "gelu"], weights = [3, 1] }
channels = [8, 16]
h = 7
""")
    s = load_space(p)
    assert s.name == "mine"
    specs = s.specs()
    assert len(specs) == 3 and all(x.extra["freq_ghz"] in (1.2, 2.4) for x in specs)
    again = ParameterSpace.from_dict(s.to_dict())
    assert again.specs() == specs


@pytest.mark.parametrize("changes, message", [
    ({"ops": {"conv3d": {}}}, "ops.conv3d: unknown op type"),
    ({"ops": {}}, "non-empty table"),
    ({"ops": {"linear": {"in_features": 8, "out_features": 8, "kernel": 3}}}, "ops.linear.kernel: unknown parameter"),
    ({"ops": {"linear": {"out_features": 8}}}, r"required parameter\(s\) \['in_features'\]"),
    ({"ops": {"conv2d": {"in_channels": 8, "out_channels": 8, "kernel_size": 7, "padding": 0, "h": 3}}},
     "larger than the padded input"),
    ({"ops": {"linear": {"in_features": {"range": [64, 8]}, "out_features": 8}}}, "ops.linear.in_features.range: low 64"),
    ({"ops": {"linear": {"in_features": {"log_range": [0, 8]}, "out_features": 8}}}, "positive low bound"),
    ({"ops": {"linear": {"in_features": {"range": [1, 8], "step": 2}, "out_features": 8}}}, "unknown key"),
    ({"ops": {"linear": {"in_features": {"choices": [1, 2], "weights": [1]}, "out_features": 8}}}, "as long as choices"),
    ({"ops": {"linear": {"in_features": [], "out_features": 8}}}, "empty list"),
    ({"ops": {"linear": {"in_features": 8, "out_features": 8, "samples": 0}}}, "samples must be a positive integer"),
    ({"runtime": {"utilization": [0.0, 50]}}, r"runtime.utilization: 50 is outside \[0, 1\)"),
    ({"runtime": {"batch_size": [0]}}, "runtime.batch_size: 0 is not a positive integer"),
    ({"runtime": {"dtype": "int8"}}, "runtime.dtype: unknown dtype"),
    ({"runtime": {"threads": [0]}}, "runtime.threads"),
    ({"runtime": {"bandwidth": 3}}, "runtime: unknown key"),
    ({"extra": {"mode": ["fast"]}}, "extra.mode: value 'fast' is not a number"),
    ({"extra": {"batch_size": 3}}, "built-in runtime key"),
    ({"strategy": "bayes"}, "space.strategy"),
    ({"seed": -1}, "space.seed"),
    ({"bogus": 1}, "unknown top-level key"),
    ({"ops": {"conv2d": {"in_channels": 8, "out_channels": 8, "kernel_size": 3, "h": 8, "out": "@nope"}}}, "unknown parameter"),
    ({"ops": {"linear": {"in_features": 8, "out_features": "@tokenz"}}}, "names no parameter"),
])
def test_validation_errors_name_the_field(changes, message):
    with pytest.raises(SpaceError, match=message):
        space(**changes)


def test_mostly_impossible_space_is_rejected():
    ops = {"conv2d": {"in_channels": 8, "out_channels": 8, "kernel_size": [7] * 99 + [1], "padding": 0, "h": 3}}
    with pytest.raises(SpaceError, match="impossible specs"):
        space(ops=ops)


def test_toml_file_errors(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[ops\n")
    with pytest.raises(SpaceError, match="not valid TOML"):
        load_space(bad)
    with pytest.raises(SpaceError, match="unknown space"):
        load_space("nonsense")


def test_restricted_errors():
    with pytest.raises(SpaceError, match="unknown op type"):
        space().restricted(ops=["conv9d"])
    with pytest.raises(SpaceError, match="not in space"):
        space().restricted(ops=["softmax"])
    with pytest.raises(SpaceError, match="utilization"):
        space().restricted(utilization=[1.5])


def test_restricted_seed_draws_another_sample_of_the_same_space():
    """--seed: another draw from the same distributions (more training data), reproducible, validated."""
    first = [sp.key for sp in space().specs()]
    again = [sp.key for sp in space().restricted(seed=space().seed).specs()]
    other = [sp.key for sp in space().restricted(seed=space().seed + 1).specs()]
    assert again == first and [sp.key for sp in space().restricted(seed=space().seed + 1).specs()] == other
    assert len(other) == len(first) and len(set(other) & set(first)) < len(first) // 2
    assert space().restricted(seed=1).seed == 1
    with pytest.raises(SpaceError, match="seed"):
        space().restricted(seed=-1)


def test_neighbours_stay_valid_and_inside_space():
    s = space()
    seed = next(x for x in s.specs() if x.op == "conv2d")
    near = s.neighbours(seed, 5)
    assert near and seed not in near
    for n in near:
        assert n.op == "conv2d" and n.batch_size == seed.batch_size
        assert 8 <= n.params["out_channels"] <= 64 and n.params["in_channels"] in (8, 16)


def test_dist_grid_and_rounding():
    d = Dist.parse({"log_range": [1, 100], "num": 3}, "x", integer=True)
    assert d.grid() == [1, 10, 100]
    with pytest.raises(SpaceError, match="no multiple of 16"):
        Dist.parse({"range": [1, 8], "multiple_of": 16}, "x", integer=True)


def test_runtime_variants_tie_conditions_together():
    data = {**BASE, "samples": 30, "runtime": {"batch_size": [1, 2], "utilization": 0.0, "threads": [1, 2],
                                               "variants": {"idle": {"weight": 1},
                                                            "loaded": {"weight": 1, "utilization": 0.5, "threads": 1}}}}
    s = ParameterSpace.from_dict(data)
    specs = s.specs()
    loaded = [x for x in specs if x.utilization == 0.5]
    assert loaded and all(x.threads == 1 for x in loaded)
    assert {x.threads for x in specs if x.utilization == 0.0} == {1, 2}
    assert ParameterSpace.from_dict(s.to_dict()).specs() == specs
    grid = ParameterSpace.from_dict({**data, "strategy": "grid", "ops": {"linear": {"in_features": 8, "out_features": 8}}})
    conds = {(x.batch_size, x.utilization, x.threads) for x in grid.specs()}
    assert conds == {(b, 0.0, t) for b in (1, 2) for t in (1, 2)} | {(b, 0.5, 1) for b in (1, 2)}
    with pytest.raises(SpaceError, match=r"runtime.variants.loaded.utilization: 2"):
        ParameterSpace.from_dict({**data, "runtime": {**data["runtime"], "variants": {"idle": {}, "loaded": {"utilization": 2}}}})
    with pytest.raises(SpaceError, match="unknown key"):
        ParameterSpace.from_dict({**data, "runtime": {**data["runtime"], "variants": {"idle": {}, "x": {"bandwidth": 1}}}})
