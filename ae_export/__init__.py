"""ae-export: train, export to ONNX and parity-check a convolutional denoising autoencoder.

Importing the package is light (no torch): `ae_export.specs` is torch-free; `model`, `export`, `parity`
and `checkpoint` need the `[train]` extra.
"""

__version__ = "0.1.0"
