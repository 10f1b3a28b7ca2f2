"""Prediction without scikit-learn's per-call overhead, for the models the zoo builds.

Optimizers call the predictor thousands of times with a few dozen rows each, where scikit-learn's
input validation and (for forests) joblib's per-tree dispatch cost far more than the arithmetic: a
200-tree ExtraTrees model took ~35 ms per call on cpu2 whatever the row count. :func:`fast_predict`
walks the fitted model and evaluates the pieces directly — scalers, polynomial features (one gather
per degree), linear models, RBF SVRs, Gaussian-process means (the kernels the GP family builds), kNN
(brute-force distances), tree ensembles and histogram gradient boosting (for a few rows, all trees walked
together level by level over flattened node arrays; for many, once per class of rows that every tree
treats alike), :class:`~latpred.regressors.residual.ResidualRegressor` — and falls back to
``model.predict`` for anything else. Results equal ``model.predict`` to rounding (tests check every
family). Inputs must be finite float arrays of the fitted width (the predictor's
own features are).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, Product, Sum, WhiteKernel
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from sklearn.svm import SVR

from .residual import ResidualRegressor

__all__ = ["distinct_rows", "fast_predict"]


# derived arrays of fitted models (flattened forests, polynomial index tables, ...), built on first use and
# dropped with the model; kept outside the estimators so that saving a model never saves them
_CACHE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

# up to this many (query, training row) distances a kNN model is evaluated here (one distance matrix); above it,
# by scikit-learn (chunked, tree-based)
_KNN_MAX = 4_000_000

# up to this many (row, tree) pairs a forest is walked level by level for all trees at once (a few dozen
# numpy calls); above it, tree by tree (sklearn's compiled walk, one call per tree)
_FLAT_FOREST_MAX = 20_000


def _cached(model: Any, token: Any, build: Any) -> Any:
    """``build(model)``, kept until ``token`` (a fitted attribute that a refit replaces) changes; one entry per
    ``build`` function, so that a model's several derived arrays do not evict each other."""
    per_model = _CACHE.get(model)
    if per_model is None:
        per_model = _CACHE[model] = {}
    got = per_model.get(build)
    if got is None or not (got[0] is token or (isinstance(token, tuple) and got[0] == token)):
        got = per_model[build] = (token, build(model))
    return got[1]


def _empty_memo(model: Any) -> dict[int, Any]:
    return {}


def _sv_sq(model: SVR) -> np.ndarray:
    return (model.support_vectors_ ** 2).sum(axis=1)


def _fit_sq(model: KNeighborsRegressor) -> np.ndarray:
    return (model._fit_X ** 2).sum(axis=1)


def _poly_index(step: PolynomialFeatures) -> np.ndarray:
    """Per output column, the input columns it multiplies (padded with the index of a column of ones)."""
    powers = np.asarray(step.powers_)
    ones = powers.shape[1]
    degree = max(1, int(powers.sum(axis=1).max()))
    idx = np.full((len(powers), degree), ones, dtype=np.intp)
    for j, row in enumerate(powers):
        cols = np.repeat(np.arange(len(row)), row)
        idx[j, :len(cols)] = cols
    return idx


def _transform(step: Any, X: np.ndarray) -> np.ndarray:
    if isinstance(step, StandardScaler):
        out = X
        if step.with_mean and step.mean_ is not None:
            out = out - step.mean_
        if step.with_std and step.scale_ is not None:
            out = out / step.scale_
        return out
    if isinstance(step, PolynomialFeatures) and X.shape[1] == step.n_features_in_:
        idx = _cached(step, (step.n_features_in_, step.n_output_features_, step.degree, step.interaction_only,
                                   step.include_bias), _poly_index)
        XeT = np.vstack([X.T, np.ones((1, len(X)))])  # feature-major: each gather copies whole rows
        out = XeT[idx[:, 0]]
        for k in range(1, idx.shape[1]):
            out *= XeT[idx[:, k]]
        return out.T
    return step.transform(X)


def _flat_forest(model: Any) -> tuple[np.ndarray, ...]:
    """Every tree's nodes in one set of arrays; a leaf points to itself, so extra levels keep it."""
    feats, thrs, lefts, rights, values, roots = [], [], [], [], [], []
    offset, depth = 0, 0
    for est in model.estimators_:
        t = est.tree_
        n = t.node_count
        leaf = t.children_left < 0
        own = np.arange(n) + offset
        lefts.append(np.where(leaf, own, t.children_left + offset))
        rights.append(np.where(leaf, own, t.children_right + offset))
        feats.append(np.where(leaf, 0, t.feature))
        thrs.append(np.where(leaf, np.inf, t.threshold))
        values.append(t.value.reshape(n, -1)[:, 0])
        roots.append(offset)
        offset += n
        depth = max(depth, t.max_depth)
    return (np.concatenate(feats), np.concatenate(thrs), np.concatenate(lefts), np.concatenate(rights),
            np.concatenate(values), np.asarray(roots), depth)


def _forest(model: Any, X: np.ndarray) -> np.ndarray:
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    n_trees = len(model.estimators_)
    if len(X) * n_trees <= _FLAT_FOREST_MAX:
        feat, thr, left, right, value, roots, depth = _cached(model, model.estimators_, _flat_forest)
        Xd = X32.astype(np.float64)  # sklearn compares the float32 features against float64 thresholds
        rows = np.repeat(np.arange(len(X)), n_trees)
        node = np.tile(roots, len(X))
        for _ in range(depth):
            node = np.where(Xd[rows, feat[node]] <= thr[node], left[node], right[node])
        return value[node].reshape(len(X), n_trees).mean(axis=1)
    total = np.zeros(len(X))
    for tree in model.estimators_:
        total += tree.tree_.predict(X32).reshape(len(X), -1)[:, 0]
    return total / n_trees


def _hgb_ok(model: HistGradientBoostingRegressor) -> bool:
    """A fitted squared-error model on numeric features, one tree per iteration: what :func:`_hgb` evaluates."""
    return (hasattr(model, "_predictors") and model.loss == "squared_error" and model.n_trees_per_iteration_ == 1
            and getattr(model, "is_categorical_", None) is None)


def _split_values(model: Any) -> list[np.ndarray]:
    """Per input column, the sorted distinct thresholds any tree of ``model`` (a forest or a histogram gradient
    boosting model) splits that column at."""
    if isinstance(model, HistGradientBoostingRegressor):
        pairs = [(n["feature_idx"][~n["is_leaf"].astype(bool)], n["num_threshold"][~n["is_leaf"].astype(bool)])
                 for n in (tree.nodes for (tree,) in model._predictors)]
    else:
        pairs = [(t.feature[t.children_left >= 0], t.threshold[t.children_left >= 0])
                 for t in (est.tree_ for est in model.estimators_)]
    feats = np.concatenate([f for f, _ in pairs]).astype(np.int64)
    thrs = np.concatenate([t for _, t in pairs]).astype(np.float64)
    return [np.unique(thrs[feats == j]) for j in range(model.n_features_in_)]


def _split_classes(model: Any, X: np.ndarray, token: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(first, inverse)``: rows of ``X`` that every tree of ``model`` sends down the same paths share a class;
    ``X[first]`` holds one row per class and ``inverse`` each row's class. None where classes would not save work.

    A tree only asks ``x <= threshold``, so a value is known to a tree ensemble by how many of the thresholds
    of its column lie below it (NaN apart): rows equal in those counts get identical predictions. Runtime
    conditions make this pay: the 400-tree generic model splits utilization at one value and log2(batch) at
    five, so resnet50's specs x 1,000 (batch, utilization, threads) conditions (31,002 rows) fall into about
    a thousand classes."""
    if len(X) < 64:
        return None
    values = _cached(model, token, _split_values)
    codes = np.zeros(X.shape)
    for j, thr in enumerate(values):
        if len(thr):
            col = X[:, j]
            codes[:, j] = np.searchsorted(thr, col, side="left")
            codes[np.isnan(col), j] = -1.0
    first, inverse = distinct_rows(codes)
    return (first, inverse) if len(first) <= len(X) // 2 else None


def _flat_hgb(model: HistGradientBoostingRegressor) -> tuple[np.ndarray, ...]:
    """Every iteration's tree in one set of arrays (as :func:`_flat_forest`): per node its feature, threshold,
    children interleaved (``child[2 n]`` left, ``child[2 n + 1]`` right; a leaf's both point to itself) and
    whether a NaN goes left."""
    feats, thrs, children, nan_left, values, roots = [], [], [], [], [], []
    offset, depth = 0, 0
    for (tree,) in model._predictors:
        nodes = tree.nodes
        n = len(nodes)
        leaf = nodes["is_leaf"].astype(bool)
        own = np.arange(n) + offset
        child = np.empty(2 * n, dtype=np.int64)
        child[0::2] = np.where(leaf, own, nodes["left"].astype(np.int64) + offset)
        child[1::2] = np.where(leaf, own, nodes["right"].astype(np.int64) + offset)
        children.append(child)
        feats.append(np.where(leaf, 0, nodes["feature_idx"]))
        thrs.append(np.where(leaf, np.inf, nodes["num_threshold"]))
        nan_left.append(leaf | nodes["missing_go_to_left"].astype(bool))
        values.append(nodes["value"])
        roots.append(offset)
        offset += n
        depth = max(depth, int(nodes["depth"].max()))
    return (np.concatenate(feats), np.concatenate(thrs), np.concatenate(children), np.concatenate(nan_left),
            np.concatenate(values), np.asarray(roots), depth)


def _hgb(model: HistGradientBoostingRegressor, X: np.ndarray) -> np.ndarray:
    """The baseline plus every tree's leaf value (leaves hold learning-rate-scaled values; the link is the
    identity for squared error); a NaN feature goes where the split sent the training rows' missing values.

    All (row, tree) pairs descend one level per step; the pairs still moving are gathered out once enough
    of them have reached a leaf (trees are unbalanced: depth 11 at the median, 21 at most)."""
    feat, thr, child, nan_left, value, roots, depth = _cached(model, model._predictors, _flat_hgb)
    n_trees = len(roots)
    Xf = np.ascontiguousarray(X, dtype=np.float64).ravel()
    has_nan = bool(np.isnan(Xf).any())
    cur = np.tile(roots, len(X))
    base = np.repeat(np.arange(len(X)) * X.shape[1], n_trees)  # each pair's row offset in Xf
    out: np.ndarray | None = None  # every pair's node, once the moving ones are kept apart
    pos = np.empty(0, dtype=np.int64)  # where the moving pairs sit in ``out``
    for _ in range(depth):
        x = Xf[base + feat[cur]]
        right = x > thr[cur]
        if has_nan:
            nan = np.isnan(x)
            right[nan] = ~nan_left[cur[nan]]
        nxt = child[2 * cur + right]
        moved = nxt != cur
        n_moved = int(np.count_nonzero(moved))
        if n_moved == 0:
            cur = nxt
            break
        if n_moved < 0.6 * len(cur):
            if out is None:
                out, pos = nxt.copy(), np.flatnonzero(moved)
            else:
                out[pos] = nxt
                pos = pos[moved]
            cur, base = nxt[moved], base[moved]
        else:
            cur = nxt
    if out is None:
        out = cur
    else:
        out[pos] = cur
    return value[out].reshape(len(X), n_trees).sum(axis=1) + float(np.ravel(model._baseline_prediction)[0])


def _sqdist(X: np.ndarray, Y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    d = (X * X).sum(axis=1)[:, None] + y_sq[None, :] - 2.0 * (X @ Y.T)
    return np.maximum(d, 0.0)


def _kernel(kernel: Any, X: np.ndarray, Y: np.ndarray, memo: dict[int, Any] | None = None) -> np.ndarray | float:
    """``kernel(X, Y)`` for X != Y, evaluated directly for the kernels the GP family builds (constant
    parts as scalars, broadcast by the sums and products around them). ``memo`` keeps what depends on
    ``Y`` alone (the GP's training rows) between calls."""
    if isinstance(kernel, Sum):
        return _kernel(kernel.k1, X, Y, memo) + _kernel(kernel.k2, X, Y, memo)
    if isinstance(kernel, Product):
        return _kernel(kernel.k1, X, Y, memo) * _kernel(kernel.k2, X, Y, memo)
    if isinstance(kernel, ConstantKernel) and np.ndim(kernel.constant_value) == 0:
        return float(kernel.constant_value)
    if isinstance(kernel, WhiteKernel):
        return 0.0  # white noise only on the diagonal of k(X, X)
    if isinstance(kernel, DotProduct):
        return X @ Y.T + kernel.sigma_0 ** 2
    if isinstance(kernel, RBF):
        ls = np.asarray(kernel.length_scale, dtype=np.float64)
        if memo is None or id(kernel) not in memo:
            Ys = Y / ls
            got = (Ys, (Ys * Ys).sum(axis=1))
            if memo is not None:
                memo[id(kernel)] = got
        Ys, ysq = got if memo is None else memo[id(kernel)]
        return np.exp(-0.5 * _sqdist(X / ls, Ys, ysq))
    return kernel(X, Y)


def _rbf(X: np.ndarray, Y: np.ndarray, ls: np.ndarray) -> np.ndarray:
    Ys = Y / ls
    return np.exp(-0.5 * _sqdist(X / ls, Ys, (Ys * Ys).sum(axis=1)))


def _terms(kernel: Any) -> list[Any]:
    return _terms(kernel.k1) + _terms(kernel.k2) if isinstance(kernel, Sum) else [kernel]


def distinct_rows(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)``: the index of each distinct row's first occurrence in ``A`` (float64, rows compared
    bytewise) and each row's index among the distinct rows.

    Rows are grouped by a 64-bit hash of their bytes (sorting integers is far cheaper than sorting
    row-sized keys), and the grouping is checked exactly; a hash collision falls back to the bytewise sort."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    words = A.view(np.uint64)
    mult = np.uint64(0x9E3779B97F4A7C15) ^ np.arange(1, A.shape[1] + 1, dtype=np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
    with np.errstate(over="ignore"):
        h = ((words ^ (words >> np.uint64(29))) * mult).sum(axis=1, dtype=np.uint64)
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if np.array_equal(words[first][inverse], words):
        return first, inverse
    keys = A.view(np.dtype((np.void, A.dtype.itemsize * A.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def _unique_rows(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``A`` (float64) and each row's index among them."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    first, inverse = distinct_rows(A)
    return A[first], inverse


def _blocks(X: np.ndarray, tail: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(A, ia, B, ib)``: the distinct leading rows (specs x batch sizes) and trailing rows (the ``tail``
    condition columns) of ``X`` and each row's index among them, or None where factoring cannot pay
    (no tail, few rows, or rows that share too little)."""
    if not (0 < tail < X.shape[1] and len(X) >= 64):
        return None
    A, ia = _unique_rows(X[:, :-tail])
    B, ib = _unique_rows(X[:, -tail:])
    return (A, ia, B, ib) if len(A) * len(B) <= 8 * len(X) else None


def _factored_rbf(blocks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], Y: np.ndarray, ls: np.ndarray,
                  coef: np.ndarray) -> np.ndarray:
    """``sum_j rbf(x_i, Y_j) coef_j`` for every row of the factored ``X`` (:func:`_blocks`).

    A graph's rows are specs x conditions: the leading columns take few distinct values and so do the
    trailing ones, but their pairs are many. An RBF is a product over columns, so ``k(x, y) = k_lead(x, y) *
    k_tail(x, y)`` and, with ``KA``/``KB`` the kernels of the distinct leading/trailing rows,
    ``sum_j k(x_i, y_j) c_j = (KA diag(c) KB^T)[ia_i, ib_i]``: one matrix product instead of an exp per
    (row, training row)."""
    A, ia, B, ib = blocks
    tail = B.shape[1]
    KA, KB = _rbf(A, Y[:, :-tail], ls[:-tail]), _rbf(B, Y[:, -tail:], ls[-tail:])
    return ((KA * coef) @ KB.T)[ia, ib]


def _factored_gp_mean(model: GaussianProcessRegressor, X: np.ndarray, tail: int) -> np.ndarray | None:
    """The GP's (normalised) mean for rows whose last ``tail`` columns vary independently of the others
    (:func:`_factored_rbf` per RBF term). Returns None where the kernel has another form or the rows share
    too little for this to pay."""
    blocks = _blocks(X, tail)
    Y, alpha = model.X_train_, np.asarray(model.alpha_, dtype=np.float64)
    if blocks is None or alpha.ndim != 1:
        return None
    y = np.zeros(len(X))
    for term in _terms(model.kernel_):
        scale, rbf = 1.0, term
        if isinstance(term, Product) and isinstance(term.k1, ConstantKernel) and np.ndim(term.k1.constant_value) == 0:
            scale, rbf = float(term.k1.constant_value), term.k2
        if isinstance(term, WhiteKernel):
            continue
        if isinstance(term, ConstantKernel) and np.ndim(term.constant_value) == 0:
            y += float(term.constant_value) * alpha.sum()
        elif isinstance(term, DotProduct):
            y += X @ (Y.T @ alpha) + term.sigma_0 ** 2 * alpha.sum()
        elif isinstance(rbf, RBF):
            ls = np.broadcast_to(np.asarray(rbf.length_scale, dtype=np.float64), (X.shape[1],))
            y += scale * _factored_rbf(blocks, Y, ls, alpha)
        else:
            return None
    return y


def _gp(model: GaussianProcessRegressor, X: np.ndarray, tail: int = 0) -> np.ndarray:
    y = _factored_gp_mean(model, X, tail)
    if y is None:
        memo = _cached(model, model.X_train_, _empty_memo)  # per fitted model: its training rows never change
        k = np.broadcast_to(_kernel(model.kernel_, X, model.X_train_, memo), (len(X), len(model.X_train_)))
        y = k @ model.alpha_
    y = model._y_train_std * y + model._y_train_mean
    return y.reshape(len(X), -1)[:, 0] if y.ndim > 1 else y


def _svr(model: SVR, X: np.ndarray, tail: int = 0) -> np.ndarray:
    sv = model.support_vectors_
    blocks = _blocks(X, tail)
    if blocks is not None:  # an RBF SVR factors over specs x conditions as a GP does
        ls = np.full(X.shape[1], 1.0 / np.sqrt(2.0 * model._gamma))  # exp(-gamma d^2) = RBF of that length scale
        return _factored_rbf(blocks, sv, ls, model.dual_coef_[0]) + model.intercept_[0]
    sv_sq = _cached(model, sv, _sv_sq)
    k = np.exp(-model._gamma * _sqdist(X, sv, sv_sq))
    return k @ model.dual_coef_[0] + model.intercept_[0]


def _knn_ok(model: KNeighborsRegressor) -> bool:
    """The kNN models the zoo builds: Euclidean, uniform or distance weights, one output."""
    metric_ok = model.effective_metric_ == "euclidean" or (model.effective_metric_ == "minkowski"
                                                          and (model.effective_metric_params_ or {}).get("p", 2) == 2)
    return metric_ok and model.weights in ("uniform", "distance") and np.ndim(model._y) == 1


def _knn(model: KNeighborsRegressor, X: np.ndarray) -> np.ndarray:
    """Brute-force neighbours (the training sets are a few thousand rows), weighted as scikit-learn weighs
    them: by 1 / distance, and a query on a training row takes that row's value alone."""
    fit_X, y, k = model._fit_X, np.asarray(model._y, dtype=np.float64), model.n_neighbors
    fit_sq = _cached(model, fit_X, _fit_sq)
    d2 = _sqdist(X, fit_X, fit_sq)
    idx = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else np.broadcast_to(np.arange(d2.shape[1]), d2.shape)
    near = y[idx]
    if model.weights == "uniform":
        return near.mean(axis=1)
    # the chosen neighbours' distances exactly (the expansion above leaves rounding residue where a query sits
    # on a training row, and scikit-learn's trees measure those as exactly 0)
    dist = np.sqrt(((X[:, None, :] - fit_X[idx]) ** 2).sum(axis=2))
    exact = dist == 0
    with np.errstate(divide="ignore"):
        w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), 1.0 / dist)
    return (w * near).sum(axis=1) / w.sum(axis=1)


def fast_predict(model: Any, X: np.ndarray, condition_tail: int = 0) -> np.ndarray:
    """``model.predict(X)`` for a fitted zoo model, without per-call validation and dispatch overhead.

    ``condition_tail``: how many trailing columns vary independently of the others (the runtime
    conditions of specs x conditions rows); a Gaussian process or an RBF SVR then factors its kernel
    over the two column blocks. Only a hint: the result is the same without it."""
    X = np.asarray(X, dtype=np.float64)
    if isinstance(model, Pipeline):
        for _, step in model.steps[:-1]:
            if not isinstance(step, StandardScaler):  # a column-wise scaler keeps the column blocks apart
                condition_tail = 0
            X = _transform(step, X)
        return fast_predict(model.steps[-1][1], X, condition_tail)
    if isinstance(model, ResidualRegressor):
        return fast_predict(model.base_, X, condition_tail) + fast_predict(model.residual_, X, condition_tail)
    if isinstance(model, (Ridge, RidgeCV)) and np.ndim(model.coef_) == 1:
        return X @ model.coef_ + model.intercept_
    if isinstance(model, (ExtraTreesRegressor, RandomForestRegressor)) and model.n_outputs_ == 1:
        # sklearn's trees compare float32 features: classes of the float32 values
        classes = (_split_classes(model, X.astype(np.float32).astype(np.float64), model.estimators_)
                   if len(X) * len(model.estimators_) > _FLAT_FOREST_MAX else None)
        return _forest(model, X) if classes is None else _forest(model, X[classes[0]])[classes[1]]
    if isinstance(model, HistGradientBoostingRegressor) and _hgb_ok(model):
        n_trees = len(model._predictors)
        classes = _split_classes(model, X, model._predictors) if len(X) * n_trees > _FLAT_FOREST_MAX else None
        rows = X if classes is None else X[classes[0]]
        y = _hgb(model, rows) if len(rows) * n_trees <= _FLAT_FOREST_MAX else np.asarray(model.predict(rows), dtype=np.float64)
        return y if classes is None else y[classes[1]]
    if isinstance(model, GaussianProcessRegressor) and getattr(model, "alpha_", None) is not None:
        return _gp(model, X, condition_tail)
    if isinstance(model, SVR) and model.kernel == "rbf" and not getattr(model, "_sparse", False) and hasattr(model, "_gamma"):
        return _svr(model, X, condition_tail)
    if isinstance(model, KNeighborsRegressor) and hasattr(model, "_fit_X") and _knn_ok(model) and len(X) * len(model._fit_X) <= _KNN_MAX:
        return _knn(model, X)
    return np.asarray(model.predict(X), dtype=np.float64)
