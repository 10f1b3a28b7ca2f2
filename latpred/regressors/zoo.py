"""The regression-model zoo: scikit-learn estimators built from the candidate table."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, WhiteKernel
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.neighbors import KNeighborsRegressor
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from sklearn.svm import SVR

from ..errors import SpecError
from .medn import MEDNRegressor
from .residual import ResidualRegressor

__all__ = ["FAMILIES", "candidate_table", "candidate_params", "make_regressor"]


def _ridge(alpha: float = 1.0, seed: int = 0) -> BaseEstimator:
    return Pipeline([("scale", StandardScaler()), ("ridge", Ridge(alpha=alpha))])


def _poly(degree: int = 2, alpha: float = 1.0, seed: int = 0) -> BaseEstimator:
    return Pipeline([("scale", StandardScaler()), ("poly", PolynomialFeatures(degree)),
                     ("scale2", StandardScaler()), ("ridge", Ridge(alpha=alpha))])


def _knn(n_neighbors: int = 5, seed: int = 0) -> BaseEstimator:
    return Pipeline([("scale", StandardScaler()), ("knn", KNeighborsRegressor(n_neighbors, weights="distance"))])


def _svr(C: float = 10.0, epsilon: float = 0.02, gamma: Any = "scale", seed: int = 0) -> BaseEstimator:
    return Pipeline([("scale", StandardScaler()), ("svr", SVR(C=C, epsilon=epsilon, gamma=gamma))])


def _rf(n_estimators: int = 200, min_samples_leaf: int = 1, max_features: Any = 0.5, seed: int = 0) -> BaseEstimator:
    return RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                                 max_features=max_features, random_state=seed, n_jobs=1)


def _gbdt(max_iter: int = 400, learning_rate: float = 0.06, max_leaf_nodes: int = 31, min_samples_leaf: int = 5,
          seed: int = 0) -> BaseEstimator:
    return HistGradientBoostingRegressor(max_iter=max_iter, learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                                         min_samples_leaf=min_samples_leaf, random_state=seed)


def _mlp(hidden_layer_sizes: Any = (128, 64), alpha: float = 1e-4, max_iter: int = 2000,
         learning_rate_init: float = 2e-3, seed: int = 0) -> BaseEstimator:
    return Pipeline([("scale", StandardScaler()),
                     ("mlp", MLPRegressor(hidden_layer_sizes=tuple(hidden_layer_sizes), alpha=alpha, max_iter=max_iter,
                                          learning_rate_init=learning_rate_init, early_stopping=True,
                                          n_iter_no_change=30, random_state=seed))])


def _gp(length_scale: float = 3.0, noise: float = 0.01, restarts: int = 0, seed: int = 0) -> BaseEstimator:
    # smooth (RBF) deviations around a linear trend (DotProduct), plus white measurement noise; the
    # kernel's hyper-parameters are fitted by maximum likelihood on every fit
    kernel = (ConstantKernel(1.0) * RBF(length_scale=length_scale, length_scale_bounds=(1e-2, 1e3))
              + DotProduct(sigma_0=1.0) + WhiteKernel(noise, noise_level_bounds=(1e-5, 1.0)))
    return Pipeline([("scale", StandardScaler()),
                     ("gp", GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=restarts,
                                                     random_state=seed))])


def _ridge_trees(n_estimators: int = 200, min_samples_leaf: int = 2, max_features: Any = 0.7, seed: int = 0) -> BaseEstimator:
    trend = Pipeline([("scale", StandardScaler()), ("ridge", RidgeCV(alphas=tuple(np.logspace(-4, 2, 13))))])
    trees = ExtraTreesRegressor(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf, max_features=max_features,
                                random_state=seed, n_jobs=1)
    return ResidualRegressor(trend, trees)


def _medn(seed: int = 0, **params: Any) -> BaseEstimator:
    return MEDNRegressor(random_state=seed, **params)


#: family name -> factory(**params, seed=) of an unfitted estimator
FAMILIES = {"ridge": _ridge, "poly": _poly, "knn": _knn, "svr": _svr, "rf": _rf, "gbdt": _gbdt, "mlp": _mlp,
            "gp": _gp, "ridge_trees": _ridge_trees, "medn": _medn}


def candidate_table() -> dict[str, Any]:
    """The shipped candidate table (``latpred/regressors/candidates.toml``)."""
    text = resources.files("latpred.regressors").joinpath("candidates.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def candidate_params(family: str, op: str | None = None, table: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Hyper-parameters of ``family`` for ``op``: the family defaults, then the op's overrides."""
    table = candidate_table() if table is None else table
    if family not in FAMILIES:
        raise SpecError(f"unknown regressor family {family!r}; known: {', '.join(FAMILIES)}")
    entry = table.get(family, {})
    params = dict(entry.get("params", {}))
    if op is not None:
        params.update(entry.get("ops", {}).get(op, {}))
    return params


def make_regressor(family: str, op: str | None = None, seed: int = 0, table: Mapping[str, Any] | None = None,
                   **overrides: Any) -> BaseEstimator:
    """An unfitted estimator of ``family`` configured for ``op`` from the candidate table."""
    params = {**candidate_params(family, op, table), **overrides}
    try:
        return FAMILIES[family](seed=seed, **params)
    except TypeError as e:
        raise SpecError(f"bad hyper-parameters for regressor {family!r}: {e}") from None
