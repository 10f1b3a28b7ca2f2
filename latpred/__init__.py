"""latpred: predict the inference latency of DNN modules and models on real devices.

The public API in one screen; everything else is internal. Attributes load lazily (PEP 562) so
``import latpred`` stays cheap: the CLI and the load-generator worker processes do not pay for
importing torch until they need it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    DeviceError,
    LatpredError,
    MeasurementError,
    SpaceError,
    SpecError,
    StoreError,
    UnknownOpError,
)

__version__ = "0.1.0"

_LAZY = {
    # specs and op types
    "ModuleSpec": ".spec",
    "REGISTRY": ".ops", "OpType": ".ops", "Param": ".ops", "Costs": ".ops", "get_op": ".ops", "op_names": ".ops",
    "resolve_spec": ".ops",
    # features (the one feature function)
    "featurize": ".features", "featurize_many": ".features", "feature_names": ".features",
    # profiling
    "ParameterSpace": ".profiling.space", "builtin_spaces": ".profiling.space", "load_space": ".profiling.space",
    "Device": ".profiling.devices", "CpuDevice": ".profiling.devices", "CudaDevice": ".profiling.devices",
    "FakeDevice": ".profiling.devices", "TimingProtocol": ".profiling.devices", "make_device": ".profiling.devices",
    "Measurement": ".profiling.result", "ProfileStore": ".profiling.store", "Sample": ".profiling.store",
    "profile": ".profiling.runner", "ProfileReport": ".profiling.runner",
    "check_state": ".profiling.state_check", "StateCheck": ".profiling.state_check",
    "remeasure": ".profiling.remeasure", "select_samples": ".profiling.remeasure", "RemeasureReport": ".profiling.remeasure",
    "pin_allocator": ".profiling.allocator", "allocator_mode": ".profiling.allocator",
    # regression models, selection, prediction
    "MEDNRegressor": ".regressors", "make_regressor": ".regressors", "FAMILIES": ".regressors",
    "TrainingData": ".selection", "load_training_data": ".selection", "select": ".selection",
    "SelectionReport": ".selection", "Predictor": ".predictor", "PredictorFormatError": ".predictor",
    "accuracy_report": ".metrics", "Domain": ".domain", "Roofline": ".roofline",
    # whole models
    "trace": ".graph.trace", "from_onnx": ".graph.onnx", "ModelGraph": ".graph.model_graph",
    "GraphNode": ".graph.model_graph", "GraphLatency": ".graph.predict", "Composition": ".graph.compose",
    "calibrate": ".graph.calibrate", "random_network": ".graph.calibrate", "validate_models": ".graph.validate",
    "measure_in_passes": ".graph.measure", "ModelJob": ".graph.measure",
    "consensus_of": ".graph.consensus", "ConsensusReport": ".graph.consensus", "predict_cases": ".graph.consensus",
}

__all__ = [
    *_LAZY,
    "LatpredError", "SpaceError", "SpecError", "UnknownOpError", "StoreError", "DeviceError", "MeasurementError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'latpred' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
