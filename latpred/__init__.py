"""latpred: predict the inference latency of DNN modules and models on real devices.

The public API in one screen; everything else is internal.
"""

from .errors import (
    DeviceError,
    LatpredError,
    MeasurementError,
    SpaceError,
    SpecError,
    StoreError,
    UnknownOpError,
)
from .features import feature_names, featurize, featurize_many
from .ops import REGISTRY, Costs, OpType, Param, get_op, op_names, resolve_spec
from .profiling.devices import CpuDevice, CudaDevice, Device, FakeDevice, TimingProtocol, make_device
from .profiling.result import Measurement
from .profiling.runner import ProfileReport, profile
from .profiling.space import ParameterSpace, builtin_spaces, load_space
from .profiling.store import ProfileStore, Sample
from .spec import ModuleSpec

__version__ = "0.1.0"

__all__ = [
    # specs and op types
    "ModuleSpec", "REGISTRY", "OpType", "Param", "Costs", "get_op", "op_names", "resolve_spec",
    # features (the one feature function)
    "featurize", "featurize_many", "feature_names",
    # profiling
    "ParameterSpace", "builtin_spaces", "load_space", "Device", "CpuDevice", "CudaDevice", "FakeDevice",
    "TimingProtocol", "make_device", "Measurement", "ProfileStore", "Sample", "profile", "ProfileReport",
    # errors
    "LatpredError", "SpaceError", "SpecError", "UnknownOpError", "StoreError", "DeviceError", "MeasurementError",
    "__version__",
]
