"""Prediction without scikit-learn's per-call overhead, for the models the zoo builds.

Optimizers call the predictor thousands of times with a few dozen rows each, where scikit-learn's
input validation and (for forests) joblib's per-tree dispatch cost far more than the arithmetic: a
200-tree ExtraTrees model took ~35 ms per call on cpu2 whatever the row count. :func:`fast_predict`
walks the fitted model and evaluates the pieces directly — scalers, polynomial features, linear
models, Gaussian-process means, tree ensembles, :class:`~latpred.regressors.residual.ResidualRegressor`
— and falls back to ``model.predict`` for anything else. Results equal ``model.predict`` to rounding
(tests check every family). Inputs must be finite float arrays of the fitted width (the predictor's
own features are).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from .residual import ResidualRegressor

__all__ = ["fast_predict"]


def _transform(step: Any, X: np.ndarray) -> np.ndarray:
    if isinstance(step, StandardScaler):
        out = X
        if step.with_mean and step.mean_ is not None:
            out = out - step.mean_
        if step.with_std and step.scale_ is not None:
            out = out / step.scale_
        return out
    return step.transform(X)


def _forest(model: Any, X: np.ndarray) -> np.ndarray:
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    total = np.zeros(len(X))
    for tree in model.estimators_:
        total += tree.tree_.predict(X32).reshape(len(X), -1)[:, 0]
    return total / len(model.estimators_)


def _gp(model: GaussianProcessRegressor, X: np.ndarray) -> np.ndarray:
    y = model.kernel_(X, model.X_train_) @ model.alpha_
    y = model._y_train_std * y + model._y_train_mean
    return y.reshape(len(X), -1)[:, 0] if y.ndim > 1 else y


def fast_predict(model: Any, X: np.ndarray) -> np.ndarray:
    """``model.predict(X)`` for a fitted zoo model, without per-call validation and dispatch overhead."""
    X = np.asarray(X, dtype=np.float64)
    if isinstance(model, Pipeline):
        for _, step in model.steps[:-1]:
            X = _transform(step, X)
        return fast_predict(model.steps[-1][1], X)
    if isinstance(model, ResidualRegressor):
        return fast_predict(model.base_, X) + fast_predict(model.residual_, X)
    if isinstance(model, (Ridge, RidgeCV)) and np.ndim(model.coef_) == 1:
        return X @ model.coef_ + model.intercept_
    if isinstance(model, (ExtraTreesRegressor, RandomForestRegressor)) and model.n_outputs_ == 1:
        return _forest(model, X)
    if isinstance(model, GaussianProcessRegressor) and getattr(model, "alpha_", None) is not None:
        return _gp(model, X)
    return np.asarray(model.predict(X), dtype=np.float64)
