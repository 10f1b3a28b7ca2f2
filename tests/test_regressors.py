"""One shared battery over every regression model family (scikit-learn conventions)."""

import numpy as np
import pytest
import skops.io as sio
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from latpred.errors import SpecError
from latpred.regressors import FAMILIES, MEDNRegressor, candidate_params, make_regressor
from latpred.regressors.fast import fast_predict

from .helpers_data import synthetic_data

DATA = synthetic_data()
X = DATA.X("conv2d")
Y = np.log(DATA.latency_ms["conv2d"])
FAST = {"mlp": {"max_iter": 300}, "medn": {"max_epochs": 60, "patience": 20}, "rf": {"n_estimators": 30},
        "gbdt": {"max_iter": 60}}


def model(family, seed=0):
    return make_regressor(family, "conv2d", seed=seed, **FAST.get(family, {}))


def roundtrip(m):
    if isinstance(m, MEDNRegressor):
        config, arrays = m.to_state()
        return MEDNRegressor.from_state(config, arrays)
    blob = sio.dumps(m)
    return sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))


def _fast_tolerance(family: str) -> float:
    # kNN on a training row: scikit-learn's distance expansion leaves ~1e-7 where the row sits, a weight of ~1e7
    # next to the others' ~0.3; the fast path measures it as exactly 0 and takes the row's value alone
    return 1e-6 if family == "knn" else 1e-9


@pytest.mark.parametrize("family", list(FAMILIES))
def test_battery(family):
    m = model(family)
    params = m.get_params()
    assert clone(m).get_params().keys() == params.keys()
    with pytest.raises(NotFittedError):
        m.predict(X[:3])
    m.fit(X, Y)
    p = m.predict(X)
    assert p.shape == Y.shape and np.all(np.isfinite(p))
    assert np.corrcoef(p, Y)[0, 1] > 0.9  # it learned something real
    assert np.allclose(roundtrip(m).predict(X), p)
    if not isinstance(m, MEDNRegressor):  # the predictor's overhead-free path gives the same numbers
        tol = _fast_tolerance(family)
        assert np.allclose(fast_predict(m, X), p, rtol=tol, atol=tol)
        assert np.allclose(fast_predict(m, X[:1]), p[:1], rtol=tol, atol=tol)
    again = model(family).fit(X, Y).predict(X)
    assert np.allclose(again, p)  # deterministic under a seed


@pytest.mark.parametrize("family", ["rf", "ridge_trees", "gbdt", "poly", "gp", "svr", "knn"])
def test_fast_paths_agree_for_few_and_many_rows(family, monkeypatch):
    """Forests are walked all trees at once for a few rows and tree by tree for many; polynomial features
    are gathered per degree (degree 3 here): both give sklearn's numbers."""
    import latpred.regressors.fast as fast

    params = {"degree": 3} if family == "poly" else {}
    m = make_regressor(family, "conv2d", seed=0, **{**FAST.get(family, {}), **params}).fit(X, Y)
    p = m.predict(X)
    tol = _fast_tolerance(family)
    for limit in (0, 10**9):
        monkeypatch.setattr(fast, "_FLAT_FOREST_MAX", limit)
        assert np.allclose(fast_predict(m, X), p, rtol=tol, atol=tol)
        assert np.allclose(fast_predict(m, X[3:5]), p[3:5], rtol=tol, atol=tol)
    off = X[3:5] + 0.01  # off the training rows: plain 1 / distance weights
    assert np.allclose(fast_predict(m, off), m.predict(off), rtol=1e-9, atol=1e-9)
    m.fit(X, -Y)  # a refit of the same object: nothing derived from the first fit is reused
    assert np.allclose(fast_predict(m, X[3:5]), m.predict(X[3:5]), rtol=tol, atol=tol)


@pytest.mark.parametrize("family", ["gbdt", "rf", "ridge_trees"])
def test_tree_models_predict_once_per_class_of_rows_they_cannot_tell_apart(family, monkeypatch):
    """Specs x many utilizations: a tree ensemble splits utilization at a few thresholds, so the rows fall into
    far fewer classes than rows; each class is predicted once, and the numbers are sklearn's."""
    import latpred.regressors.fast as fast

    m = make_regressor(family, "conv2d", seed=0, **FAST.get(family, {})).fit(X, Y)
    conds = np.array([[u, t] for u in np.linspace(0.0, 0.95, 200) for t in (1.0, 2.0)])
    rows = np.hstack([np.repeat(X[:6, :-2], len(conds), axis=0), np.tile(conds, (6, 1))])
    rows[::7, 0] = np.nan if family == "gbdt" else rows[::7, 0]  # missing values keep their own class
    got = []
    real = fast._split_classes
    monkeypatch.setattr(fast, "_split_classes", lambda *a: got.append(real(*a)) or got[-1])
    p = fast_predict(m, rows)
    assert got and got[0] is not None and len(got[0][0]) <= len(rows) // 2
    assert np.allclose(p, m.predict(rows), rtol=1e-12, atol=1e-12)


def test_gp_factors_its_kernel_over_specs_and_conditions(monkeypatch):
    """Rows that are specs x conditions (the trailing utilization/threads columns): the GP's kernel is
    factored over the two column blocks, and the numbers are sklearn's."""
    import latpred.regressors.fast as fast

    m = make_regressor("gp", "conv2d", seed=0).fit(X, Y)
    specs = X[:8]
    conds = np.array([[u, t] for u in np.linspace(0.0, 0.9, 10) for t in (1.0, 2.0)])
    rows = np.hstack([np.repeat(specs[:, :-2], len(conds), axis=0), np.tile(conds, (len(specs), 1))])
    calls = []
    real = fast._factored_gp_mean
    monkeypatch.setattr(fast, "_factored_gp_mean", lambda *a: calls.append(real(*a)) or calls[-1])
    got = fast_predict(m, rows, condition_tail=2)
    assert len(calls) == 1 and calls[0] is not None  # the factored path ran
    assert np.allclose(got, m.predict(rows), rtol=1e-9, atol=1e-9)
    assert np.allclose(fast_predict(m, rows), got, rtol=1e-9, atol=1e-9)  # the hint changes nothing but the cost


def test_svr_factors_its_kernel_over_specs_and_conditions(monkeypatch):
    import latpred.regressors.fast as fast

    m = make_regressor("svr", "conv2d", seed=0).fit(X, Y)
    conds = np.array([[u, t] for u in np.linspace(0.0, 0.9, 10) for t in (1.0, 2.0)])
    rows = np.hstack([np.repeat(X[:8, :-2], len(conds), axis=0), np.tile(conds, (8, 1))])
    calls = []
    real = fast._rbf
    monkeypatch.setattr(fast, "_rbf", lambda *a: calls.append(1) or real(*a))
    got = fast_predict(m, rows, condition_tail=2)
    assert len(calls) == 2  # the spec block's kernel and the condition block's
    assert np.allclose(got, m.predict(rows), rtol=1e-9, atol=1e-9)
    assert np.allclose(fast_predict(m, rows), got, rtol=1e-9, atol=1e-9) and len(calls) == 2


def test_medn_predicts_the_same_in_chunks_and_interleaved(monkeypatch):
    """Large inputs go through the network in chunks (a chunk boundary may split a task's run); interleaved
    tasks are sorted and put back: the numbers do not change."""
    import latpred.regressors.medn as medn

    m = MEDNRegressor(max_epochs=20, patience=5).fit(np.vstack([X, X]), np.concatenate([Y, Y + 1.0]),
                                                       tasks=np.repeat([0, 1], len(X)))
    rows = np.vstack([X, X])
    tasks = np.tile([0, 1], len(X))  # interleaved
    whole = m.predict(rows, tasks)
    monkeypatch.setattr(medn, "_CHUNK", 7)
    assert np.allclose(m.predict(rows, tasks), whole, rtol=1e-6, atol=1e-6)
    sorted_rows = np.argsort(tasks, kind="stable")
    assert np.allclose(m.predict(rows[sorted_rows], tasks[sorted_rows]), whole[sorted_rows], rtol=1e-6, atol=1e-6)


def test_candidate_table_is_data_with_per_op_overrides():
    table = {"knn": {"params": {"n_neighbors": 5}, "ops": {"linear": {"n_neighbors": 9}}}}
    assert candidate_params("knn", "conv2d", table) == {"n_neighbors": 5}
    assert candidate_params("knn", "linear", table) == {"n_neighbors": 9}
    assert make_regressor("knn", "linear", table=table).get_params()["knn__n_neighbors"] == 9
    with pytest.raises(SpecError, match="unknown regressor family"):
        make_regressor("xgb")
    with pytest.raises(SpecError, match="bad hyper-parameters"):
        make_regressor("ridge", bogus=1)


def test_medn_multitask_is_small_and_learns_every_task():
    ops = DATA.ops
    width = max(DATA.X(op).shape[1] for op in ops)
    rows, tasks, ys = [], [], []
    for i, op in enumerate(ops):
        x = DATA.X(op)
        pad = np.full((len(x), width), np.nan)
        pad[:, :x.shape[1]] = x
        rows.append(pad)
        tasks.append(np.full(len(x), i))
        ys.append(np.log(DATA.latency_ms[op]))
    Xp, T, Yl = np.vstack(rows), np.concatenate(tasks), np.concatenate(ys)
    m = MEDNRegressor(max_epochs=150, patience=30).fit(Xp, Yl, tasks=T)
    assert m.n_parameters() <= 100_000
    p = m.predict(Xp, tasks=T)
    for i in range(len(ops)):
        assert np.corrcoef(p[T == i], Yl[T == i])[0, 1] > 0.9
    # the inference path (task runs, heads into one buffer) gives the training network's numbers, for
    # interleaved rows (sorted internally) as for grouped ones, and nothing for no rows
    mix = np.random.default_rng(0).permutation(len(T))
    Z, _ = m._normalise(Xp[mix], T[mix])
    with torch.no_grad():
        ref, _ = m._net()(torch.from_numpy(Z), torch.from_numpy(T[mix]), decode=False)
    ref = ref.numpy() * m.y_std_[T[mix]] + m.y_mean_[T[mix]]
    np.testing.assert_allclose(m.predict(Xp[mix], tasks=T[mix]), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.predict(Xp[mix], tasks=T[mix])[np.argsort(mix)], p, rtol=1e-5, atol=1e-5)
    assert m.predict(Xp[:0], tasks=T[:0]).shape == (0,)
    with pytest.raises(SpecError, match="task index"):
        m.predict(Xp[:2], tasks=np.array([0, 7]))
    with pytest.raises(SpecError, match="features"):
        m.predict(Xp[:, :3], tasks=T)


def test_knn_fast_path_matches_uniform_weights_and_falls_back_for_other_metrics():
    from sklearn.neighbors import KNeighborsRegressor

    off = X[:7] + 0.01
    uniform = KNeighborsRegressor(3).fit(X, Y)
    assert np.allclose(fast_predict(uniform, off), uniform.predict(off), rtol=1e-9, atol=1e-9)
    manhattan = KNeighborsRegressor(3, weights="distance", p=1).fit(X, Y)  # not Euclidean: scikit-learn's own path
    assert np.allclose(fast_predict(manhattan, off), manhattan.predict(off), rtol=1e-12, atol=1e-12)


def test_medn_options_are_checked_and_older_files_load_with_their_own_settings():
    Xs, Ys = X, Y
    for bad, match in (({"loss_space": "linear"}, "loss_space"), ({"huber_delta": 0.0}, "huber_delta"),
                       ({"lr_decay": 1.5}, "lr_decay")):
        with pytest.raises(SpecError, match=match):
            MEDNRegressor(max_epochs=2, **bad).fit(Xs, Ys)
    # a file written before the linear path, the log-space loss and the decay existed names none of them
    old = MEDNRegressor(max_epochs=30, patience=10, loss_space="standardised", huber_delta=None, linear_skip=False,
                        lr_decay=None).fit(Xs, Ys)
    config, arrays = old.to_state()
    for key in ("head_dim", "loss_space", "huber_delta", "linear_skip", "lr_decay"):
        del config["params"][key]
    loaded = MEDNRegressor.from_state(config, arrays)
    assert loaded.linear_skip is False and "skip" not in loaded.state_
    np.testing.assert_allclose(loaded.predict(Xs), old.predict(Xs), rtol=1e-6)
    # the current settings: a linear path per task (saved and restored with the weights), one scale for all tasks
    tasks = np.arange(len(Xs)) % 2
    new = MEDNRegressor(max_epochs=30, patience=10).fit(Xs, Ys, tasks=tasks)
    assert "skip" in new.state_ and new.state_["skip"].shape == (2, X.shape[1])
    assert new.y_std_[0] == new.y_std_[1]
    config, arrays = new.to_state()
    np.testing.assert_allclose(MEDNRegressor.from_state(config, arrays).predict(Xs, tasks=tasks),
                               new.predict(Xs, tasks=tasks), rtol=1e-6)


def test_fast_gradient_boosting_sends_missing_values_where_training_did():
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    Xn = rng.normal(size=(400, 4))
    Xn[rng.random(Xn.shape) < 0.2] = np.nan  # splits learn a side for missing values
    m = HistGradientBoostingRegressor(max_iter=40, random_state=0).fit(Xn, np.nan_to_num(Xn) @ [1.0, -2.0, 0.5, 3.0])
    q = rng.normal(size=(30, 4))
    q[rng.random(q.shape) < 0.3] = np.nan
    assert np.allclose(fast_predict(m, q), m.predict(q), rtol=1e-12, atol=1e-12)
