"""A two-stage regressor: a linear model for the trend, a second model for what the trend misses.

Log latency is close to linear in the log-cost features (FLOPs, bytes, elements) over orders of
magnitude, with local deviations (cache levels, kernel choice, thread scheduling). Tree ensembles fit
the trend with piecewise constants and need many samples per decade to do it; a linear model fits it
with a handful of coefficients but misses the deviations. Fitting the trees on the linear model's
residuals gives each stage the part it is good at; on the cpu2 store this beat both stages alone
(docs/benchmarks.md, "Regression-model families").
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted

__all__ = ["ResidualRegressor"]


class ResidualRegressor(RegressorMixin, BaseEstimator):
    """``base`` fitted on ``y``, then ``residual`` fitted on ``y - base.predict(X)``; predicts their sum."""

    def __init__(self, base: Any = None, residual: Any = None) -> None:
        self.base = base
        self.residual = residual

    def fit(self, X: np.ndarray, y: np.ndarray) -> ResidualRegressor:
        if self.base is None or self.residual is None:
            raise ValueError("ResidualRegressor needs both a base and a residual estimator")
        y = np.asarray(y, dtype=np.float64)
        self.base_ = clone(self.base).fit(X, y)
        self.residual_ = clone(self.residual).fit(X, y - self.base_.predict(X))
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, ("base_", "residual_"))
        return self.base_.predict(X) + self.residual_.predict(X)
