"""Whole models as graphs of op specs: torch.fx / ONNX import, vectorised prediction, composition, validation.

Submodules import torch; ``latpred.graph`` itself stays light, attributes load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ModelGraph": ".model_graph", "GraphNode": ".model_graph", "Coverage": ".model_graph",
    "trace": ".trace", "from_onnx": ".onnx",
    "GraphLatency": ".predict", "predict_graph": ".predict",
    "Composition": ".compose",
    "random_network": ".calibrate", "calibrate": ".calibrate",
    "validate_models": ".validate", "ValidationReport": ".validate",
    "consensus_of": ".consensus", "ConsensusReport": ".consensus", "predict_cases": ".consensus",
    "measure_in_passes": ".measure", "ModelJob": ".measure", "PooledMeasurement": ".measure",
    "load_model": ".models", "TORCHVISION_ZOO": ".models",
    "time_in_context": ".node_timing", "InContextTiming": ".node_timing",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'latpred.graph' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
