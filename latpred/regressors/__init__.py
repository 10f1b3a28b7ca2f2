"""Regression models: the scikit-learn zoo and MEDN."""

from .medn import MEDNRegressor
from .zoo import FAMILIES, candidate_params, candidate_table, make_regressor

__all__ = ["MEDNRegressor", "FAMILIES", "candidate_params", "candidate_table", "make_regressor"]
