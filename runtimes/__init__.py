"""The edge runtime: denoise with exported ONNX files using only numpy, onnxruntime, Pillow and tqdm.

Never imports torch. Names are re-exported lazily (PEP 562) so that `import runtimes.metadata`, which the
torch-side exporter also uses, does not pay for importing onnxruntime and Pillow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtimes.batching import MicroBatcher
    from runtimes.denoiser import Denoiser
    from runtimes.images import BadImageError, find_images, load_gray8, load_image8, save_png
    from runtimes.metadata import MetadataError, ModelMetadata, TensorContract, parse_metadata
    from runtimes.onnx_model import OnnxModel
    from runtimes.pipeline import PipelineResult, run_pipeline
    from runtimes.planning import PlanError, plan_jobs
    from runtimes.sessions import InvalidModelError, ProviderUnavailableError, open_session, physical_cores

_EXPORTS = {
    "Denoiser": "runtimes.denoiser",
    "OnnxModel": "runtimes.onnx_model",
    "InvalidModelError": "runtimes.sessions",
    "ProviderUnavailableError": "runtimes.sessions",
    "open_session": "runtimes.sessions",
    "physical_cores": "runtimes.sessions",
    "MicroBatcher": "runtimes.batching",
    "BadImageError": "runtimes.images",
    "find_images": "runtimes.images",
    "load_gray8": "runtimes.images",
    "load_image8": "runtimes.images",
    "save_png": "runtimes.images",
    "PipelineResult": "runtimes.pipeline",
    "PlanError": "runtimes.planning",
    "plan_jobs": "runtimes.planning",
    "run_pipeline": "runtimes.pipeline",
    "MetadataError": "runtimes.metadata",
    "ModelMetadata": "runtimes.metadata",
    "TensorContract": "runtimes.metadata",
    "parse_metadata": "runtimes.metadata",
}

__all__ = [
    "BadImageError",
    "Denoiser",
    "InvalidModelError",
    "MetadataError",
    "MicroBatcher",
    "ModelMetadata",
    "OnnxModel",
    "PipelineResult",
    "PlanError",
    "ProviderUnavailableError",
    "TensorContract",
    "find_images",
    "load_gray8",
    "load_image8",
    "open_session",
    "parse_metadata",
    "physical_cores",
    "plan_jobs",
    "run_pipeline",
    "save_png",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtimes' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
