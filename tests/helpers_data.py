"""Synthetic training data from the fake device (deterministic, analytic latencies with noise)."""

import numpy as np

from latpred.profiling.devices import FakeDevice
from latpred.profiling.space import ParameterSpace
from latpred.selection import TrainingData

SPACE = {
    "name": "synthetic", "seed": 0,
    "runtime": {"batch_size": [1, 2, 4, 8], "utilization": [0.0, 0.5], "threads": 1},
    "ops": {
        "conv2d": {"samples": 80, "in_channels": {"log_range": [8, 128], "multiple_of": 8},
                   "out_channels": {"log_range": [8, 128], "multiple_of": 8}, "kernel_size": [1, 3, 5], "h": [7, 14, 28]},
        "linear": {"samples": 60, "in_features": {"log_range": [16, 1024]}, "out_features": {"log_range": [16, 1024]}},
        "activation": {"samples": 40, "fn": ["relu", "gelu"], "channels": {"log_range": [8, 256]}, "h": [7, 14]},
    },
}


def synthetic_data(noise: float = 0.02) -> TrainingData:
    dev = FakeDevice(noise=noise)
    specs, lat = {}, {}
    for s in ParameterSpace.from_dict(SPACE).specs():
        specs.setdefault(s.op, []).append(s)
        lat.setdefault(s.op, []).append(dev.measure(s).latency_ms)
    return TrainingData(specs, {k: np.asarray(v) for k, v in lat.items()}, [], {"device": "fake"})
