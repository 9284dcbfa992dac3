"""`Denoiser`: the user-facing API on top of an exported `denoiser.onnx`.

It accepts the image layouts people actually have (see `runtimes.layout`), validates them with errors that
say what was expected, and returns the same layout and kind. `encode` / `decode` lazily open the sibling
encoder/decoder files that the metadata names. Never imports torch.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from runtimes.layout import (
    FLOAT32,
    ImageLayout,
    check_unit_range,
    describe,
    pad_to_multiple,
    prepare_images,
    restore_images,
)
from runtimes.manifest import (
    DEFAULT_VARIANT,
    PORTABLE_VARIANT,
    resolve_model,
    variants_present,
    verify_listed,
)
from runtimes.metadata import ModelMetadata
from runtimes.onnx_model import DEFAULT_MAX_BATCH, OnnxModel, Parallel
from runtimes.sessions import (
    DEFAULT_CONV_SEARCH,
    ConvSearch,
    InvalidModelError,
    Provider,
    positive_count,
    wants_cuda,
)
from runtimes.tiling import plan_tiles, run_tiled

DENOISER_FILE = "denoiser.onnx"
# Any-size models: images per onnxruntime call are capped at this many pixels in all, so a batch of large
# photographs never holds gigabytes of intermediate feature maps (32 channels x 4 bytes x pixels).
MAX_RUN_PIXELS = 1 << 21
# Any-size models with a receptive radius in their metadata: the most pixels one halo tile may hold
# (see `runtimes.tiling`); larger images, and images that would leave cores idle, run as tiles. Measured
# with the photo model on a 12 MP photograph (2 cores, `make photo-bench`): 2**18 ran as fast as 2**19
# (3.2x the whole image) with 0.6 GB peak instead of 1.1 GB (whole: 6.2 GB).
DEFAULT_TILE_PIXELS = 1 << 18


def use_portable_twin(variant: str, provider: Provider, present: list[str]) -> bool:
    """Whether an export folder's default model should be its portable twin: the session will try CUDA."""
    return variant == DEFAULT_VARIANT and PORTABLE_VARIANT in present and wants_cuda(provider)


class Denoiser:
    """Denoise images with an exported `denoiser.onnx`; `encode`/`decode` use its sibling files.

    `path` may be the denoiser file (`.onnx` or `.ort`) or the export folder holding it; in a folder,
    `variant` picks the file through its manifest ("fp32", "fp16", "int8", "int8.ort", ...; see
    `runtimes.manifest`). The default, fp32, means the fast graph on the CPU and, where the model runs on
    CUDA, the folder's "portable" twin: ONNX Runtime has no CUDA Col2Im, so the fast graph would run
    part of every call on the CPU (measured on an H200 at batch 256: 0.78 ms vs 0.20 ms).

    Any-size models (the photo model) cut large photographs into halo tiles of at most `tile_pixels`
    pixels, so that memory stays bounded and every core works on one photograph; the result equals the
    whole-image run's (see `runtimes.tiling`). `tile_pixels=None` runs every image whole.

    On CUDA, `conv_search` is how cuDNN picks each convolution's algorithm at a new input shape:
    "heuristic" (default; cheap at every new photograph size or batch size) or "exhaustive" (times
    them all once per shape, for a server that sees one shape for a long time); see
    `runtimes.sessions.DEFAULT_CONV_SEARCH` for the measurements.

    Construction fails fast, before any work, with FileNotFoundError (a missing variant names those
    present) or InvalidModelError (a ValueError) naming the path, and with ProviderUnavailableError when
    provider="cuda" cannot really start. Opened as a folder, the encoder and decoder that `encode` and
    `decode` open are checked against its manifest too: a replaced or damaged one is a ManifestError, as
    the denoiser is, not latents from another model.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        provider: Provider = "auto",
        threads: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        warmup: bool = True,
        spinning: bool = True,
        parallel: Parallel = "sessions",
        variant: str = DEFAULT_VARIANT,
        tile_pixels: int | None = DEFAULT_TILE_PIXELS,
        conv_search: ConvSearch = DEFAULT_CONV_SEARCH,
    ) -> None:
        self.tile_pixels = positive_count("tile_pixels", tile_pixels, none="never tile")
        path = Path(path)
        folder = path if path.is_dir() else None
        if folder is None and variant != DEFAULT_VARIANT:
            raise InvalidModelError(
                path,
                f"variant {variant!r} picks a file of an export folder; pass the folder, or this file alone",
            )
        gpu_twin = folder is not None and use_portable_twin(variant, provider, variants_present(folder))

        def open_model(path: Path) -> OnnxModel:
            return OnnxModel(
                path,
                provider=provider,
                threads=threads,
                max_batch=max_batch,
                warmup=warmup,
                role="denoiser",
                spinning=spinning,
                parallel=parallel,
                conv_search=conv_search,
            )

        if folder is not None:
            path = resolve_model(folder, "denoiser", PORTABLE_VARIANT if gpu_twin else variant)
        self.model = open_model(path)
        if gpu_twin and self.model.provider == "cpu":
            # "auto" fell back to the CPU, where the fast graph is the faster one.
            self.model = open_model(resolve_model(folder, "denoiser", variant))
        sample = self.model.input_sample_shape
        if len(sample) != 3 or sample[0] != 1 or self.model.output_sample_shape != sample:
            raise InvalidModelError(
                path,
                f"expected a 1-channel image-to-image model (B, 1, H, W) -> same; got {sample} -> "
                f"{self.model.output_sample_shape}",
            )
        # None: symbolic height and width, the model takes any size (padded to size_multiple, cropped back).
        self.image_shape: tuple[int, int] | None = (
            None if sample[1] is None or sample[2] is None else (int(sample[1]), int(sample[2]))
        )
        self.size_multiple = self.model.size_multiple
        # One float32 image as (1, 1, H, W), the commonest low-latency call: it needs no layout work.
        # (CPU only: that is where `OnnxModel.run` copies it into bound buffers, contiguous or not.)
        self._one_image: tuple[int, ...] | None = (
            None if self.image_shape is None or self.provider != "cpu" else (1, 1, *self.image_shape)
        )
        self._warmup = warmup
        self._folder = folder  # opened as an export folder: its manifest vouches for the siblings too
        self._encoder: OnnxModel | None = None
        self._decoder: OnnxModel | None = None
        self._lock = threading.Lock()
        self._closed = False  # close() was called: siblings opened later get no worker threads either

    @property
    def path(self) -> Path:
        return self.model.path

    @property
    def metadata(self) -> ModelMetadata:
        return self.model.metadata

    @property
    def provider(self) -> str:
        """ "cpu" or "cuda": the provider that really runs the model."""
        return self.model.provider

    def prepare(self, images: np.ndarray) -> tuple[np.ndarray, ImageLayout]:
        """Validate `images`; return the float32 (N, 1, H, W) model batch and the layout to restore."""
        return prepare_images(images, self.image_shape)

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """Already-validated float32 (N, 1, H, W) in [0, 1] -> denoised (N, 1, H, W) float32.

        Any-size models: H and W are reflect-padded up to multiples of `size_multiple` and the result is
        cropped back; large images run a few at a time (MAX_RUN_PIXELS). Where the metadata gives the
        receptive radius, images larger than `tile_pixels`, or too few to keep every core busy, run as
        halo tiles (`runtimes.tiling`): the same result, bounded memory, all cores.
        """
        if self.image_shape is not None:
            return self.model.run(batch)
        n, _, height, width = batch.shape
        padded = pad_to_multiple(batch, self.size_multiple)
        radius = self.metadata.receptive_radius
        if radius is not None and self.tile_pixels is not None and n > 0:
            slots = self.model.slots
            plan = plan_tiles(
                padded.shape[2], padded.shape[3], n, radius, self.size_multiple, slots, self.tile_pixels
            )
            if plan.count > 1:
                # A round of tiles per call (one per core): memory follows the tile size, not the image.
                per_call = slots * self.tile_pixels
                return run_tiled(self.model.run, padded, plan, (height, width), slots, per_call)
        step = max(1, MAX_RUN_PIXELS // (padded.shape[2] * padded.shape[3]))
        if n <= step:
            return np.ascontiguousarray(self.model.run(padded)[..., :height, :width])
        out = np.empty((n, 1, height, width), dtype=np.float32)
        for start in range(0, n, step):
            chunk = np.ascontiguousarray(padded[start : start + step])
            out[start : start + step] = self.model.run(chunk)[..., :height, :width]
        return out

    def denoise(self, images: np.ndarray) -> np.ndarray:
        """Denoise images; the result has the input's layout and kind (uint8 in -> uint8 out, rounded)."""
        if type(images) is np.ndarray and images.shape == self._one_image and images.dtype is FLOAT32:
            # Batch 1 as the model takes it: the range check, then the model; output has the same layout.
            # Saves ~1 us of layout work on a ~24 us call (prepare_images gives the same batch here).
            check_unit_range(images)
            return self.model.run(images)
        batch, layout = prepare_images(images, self.image_shape)
        return restore_images(self.run_batch(batch), layout)

    __call__ = denoise

    def _sibling(self, role: str) -> OnnxModel:
        """Open the encoder/decoder named in this export's metadata (same folder), once, thread-safely."""
        with self._lock:
            current = self._encoder if role == "encoder" else self._decoder
            if current is not None:
                return current
            name = self.metadata.artifacts.get(role)
            if not name:
                raise InvalidModelError(
                    self.path, f"metadata artifacts name no {role} file: {self.metadata.artifacts}"
                )
            sibling_path = self.path.parent / name
            if not sibling_path.exists():
                raise FileNotFoundError(
                    f"{role} file not found: {sibling_path} (named in the metadata of {self.path})"
                )
            if self._folder is not None:
                verify_listed(self._folder, name)
            # The provider the denoiser really got, so all three models of an export run on one device.
            model = OnnxModel(
                sibling_path,
                provider=self.model.provider,
                threads=self.model.threads,
                max_batch=self.model.max_batch,
                warmup=self._warmup,
                spinning=self.model.spinning,
                parallel=self.model.parallel,
                conv_search=self.model.conv_search,
                role=role,
            )
            if self._closed:
                model.close()  # as close() left the denoiser: it runs, each call on one thread
            if role == "encoder":
                self._encoder = model
            else:
                self._decoder = model
            return model

    def encode(self, images: np.ndarray) -> np.ndarray:
        """Images (any accepted layout) -> float32 latents (N, latent_dim); one (H, W) -> (latent_dim,)."""
        encoder = self._sibling("encoder")
        batch, layout = prepare_images(images, self.image_shape)
        if encoder.input_sample_shape != batch.shape[1:]:
            raise InvalidModelError(
                encoder.path,
                f"takes {encoder.input_sample_shape} samples; the denoiser takes {batch.shape[1:]}",
            )
        latents = encoder.run(batch)  # (N, latent_dim)
        return latents[0] if layout.form == "hw" else latents

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """float32 latents (N, latent_dim) -> float32 images (N, 1, H, W); one (latent_dim,) -> (H, W)."""
        decoder = self._sibling("decoder")
        dims = decoder.input_sample_shape
        if not isinstance(latents, np.ndarray) or latents.dtype != np.float32:
            raise ValueError(
                f"expected float32 latents of shape (N, {dims[0]}) or ({dims[0]},); got {describe(latents)}"
            )
        if latents.shape == dims:
            single, batch = True, latents.reshape(1, *dims)
        elif latents.ndim == 1 + len(dims) and latents.shape[1:] == dims:
            single, batch = False, latents
        else:
            raise ValueError(
                f"expected float32 latents of shape (N, {dims[0]}) or ({dims[0]},); got shape {latents.shape}"
            )
        if not np.isfinite(batch).all():
            raise ValueError("expected finite latents; got NaN or Inf values")
        images = decoder.run(np.ascontiguousarray(batch))  # (N, 1, H, W)
        return images[0, 0] if single else images

    def close(self) -> None:
        """Stop the per-core worker threads of the denoiser and of the encoder/decoder it opened (they
        also stop when the Denoiser is garbage-collected). Idempotent; later calls still work, each model
        call on one thread, `encode`/`decode` included when their model is first opened after close()."""
        with self._lock:
            self._closed = True
            models = [m for m in (self.model, self._encoder, self._decoder) if m is not None]
        for model in models:
            model.close()

    def __enter__(self) -> Denoiser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Denoiser({str(self.path)!r}, provider={self.provider!r}, image_shape={self.image_shape})"
