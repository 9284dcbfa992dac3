"""ae-export: turn a trained checkpoint (from `train`) into checked ONNX files and deployment artifacts.

Importing the package is light (no torch): `ae_export.specs` is torch-free; `export` and `parity` need the
`[train]` extra. The model and its checkpoint live in `train`, one stage below. Deployment targets:
`triton` (a Triton model repository, the `[triton]` extra), `compat` (OpenVINO / OpenCV DNN vs ONNX
Runtime, the `[compat]` extra), `targets` (the files an export offers them) and `gpu_check`.
"""

__version__ = "0.1.0"
