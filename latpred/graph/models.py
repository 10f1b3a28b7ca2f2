"""Model references on the command line: ``torchvision:NAME``, ``path/to/model.onnx``, ``package.module:factory``.

Models are built with random weights (latency does not depend on weight values); nothing is downloaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError

__all__ = ["ModelRef", "load_model", "parse_model_refs", "TORCHVISION_ZOO"]

#: the zoo of the whole-model validation (issue 4)
TORCHVISION_ZOO = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "vgg16", "densenet121",
                   "googlenet", "squeezenet1_1", "shufflenet_v2_x1_0", "regnet_y_400mf", "convnext_tiny", "vit_b_16",
                   "alexnet")


@dataclass
class ModelRef:
    """A resolved model: a torch module (``None`` for an ONNX file), its per-sample input shape, and the ONNX path."""

    name: str
    module: Any
    input_shape: tuple[int, ...]
    onnx_path: Path | None = None

    def example_input(self, batch_size: int = 1) -> Any:
        import torch

        return torch.randn(batch_size, *self.input_shape)


def load_model(ref: str, input_shape: tuple[int, ...] = (3, 224, 224)) -> ModelRef:
    """Resolve one model reference; raises :class:`SpecError` naming what is wrong with it."""
    ref = ref.strip()
    if ref.endswith(".onnx"):
        p = Path(ref)
        if not p.is_file():
            raise SpecError(f"ONNX model {ref!r} does not exist")
        return ModelRef(p.stem, None, input_shape, p)
    if ref.startswith("torchvision:"):
        name = ref.split(":", 1)[1]
        try:
            import torchvision.models as tvm
        except ImportError:
            raise SpecError(f"{ref}: torchvision is not installed (pip install torchvision)") from None
        available = set(tvm.list_models())
        if name not in available:
            close = sorted(a for a in available if name[:4] in a)[:8]
            raise SpecError(f"{ref}: torchvision has no model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
            module = tvm.get_model(name, weights=None, **kwargs)
        shape = (3, 299, 299) if name == "inception_v3" else input_shape
        return ModelRef(name, module.eval(), shape)
    if ":" in ref:
        mod_name, fn_name = ref.rsplit(":", 1)
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise SpecError(f"{ref}: cannot import module {mod_name!r} ({e})") from None
        fn = getattr(mod, fn_name, None)
        if not callable(fn):
            raise SpecError(f"{ref}: {mod_name!r} has no callable {fn_name!r}")
        out = fn()
        import torch

        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], torch.Tensor):
            module, example = out
            shape = tuple(example.shape[1:])
        else:
            module, shape = out, input_shape
        if not isinstance(module, torch.nn.Module):
            raise SpecError(f"{ref}: the factory returned {type(module).__name__}, not a torch.nn.Module "
                            "(or a (module, example_input) pair)")
        return ModelRef(fn_name, module.eval(), tuple(shape))
    raise SpecError(f"model reference {ref!r} not understood; use torchvision:NAME, a .onnx path or package.module:factory")


def parse_model_refs(text: str) -> list[str]:
    """Split a comma-separated list; ``torchvision:zoo`` expands to :data:`TORCHVISION_ZOO`."""
    refs: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        refs.extend(f"torchvision:{n}" for n in TORCHVISION_ZOO) if part == "torchvision:zoo" else refs.append(part)
    if not refs:
        raise SpecError("no model given")
    return refs
