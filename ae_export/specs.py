"""One frozen spec per exported artifact (Optimum's OnnxConfig idea).

File name, input/output names and kinds, the dynamic batch axis and the parity tolerances live here and
nowhere else: the exporter, the parity checker, the metadata and the tests all derive from these specs.
Torch-free, so tooling can read it anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BATCH_AXIS = "batch"
HEIGHT_AXIS = "height"
WIDTH_AXIS = "width"
DEFAULT_OPSET = 18
IMAGE_SAMPLE_SHAPE: tuple[int | str, ...] = (1, 28, 28)
# The fully convolutional model: any height and width (multiples of its stride; the runtime pads).
ANY_SIZE_SAMPLE_SHAPE: tuple[int | str, ...] = (1, HEIGHT_AXIS, WIDTH_AXIS)
# Parity sizes for models with dynamic height and width: the lecture's size, a non-square one, an odd
# one (padded to the stride and cropped back, as the runtime does) and a photograph's.
ANY_SIZE_PARITY_SIZES: tuple[tuple[int, int], ...] = ((28, 28), (64, 96), (37, 53), (512, 512))
IMAGE_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class Tolerance:
    """Polygraphy-style: an element fails only if abs error > atol AND rel error > rtol."""

    atol: float
    rtol: float

    def to_dict(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol}


# fp32 on the CPU: the same math in another order; errors are a few ULPs, 1e-5 leaves room and still
# catches any real fault (a weight nudged by 1e-2 moves outputs by ~1e-3).
CPU_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-5)
# CUDA (TF32 off on both sides): cuDNN picks other conv/GEMM algorithms (Winograd, FFT, split-K
# reductions) whose fp32 rounding differs from the CPU reference by up to ~1e-5 relative per layer; over
# 11 layers and sums of up to 288 terms that grows to ~1e-4, so 1e-4 is the honest bound.
CUDA_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-4)


@dataclass(frozen=True)
class ArtifactSpec:
    """Everything about one exported ONNX file that is not the weights."""

    role: str  # "encoder" | "decoder" | "denoiser": also the DenoisingAutoencoder method it exports
    file_name: str
    input_name: str
    input_kind: str  # "image" | "latent"
    output_name: str
    output_kind: str
    tolerances: dict[str, Tolerance] = field(
        default_factory=lambda: {"cpu": CPU_TOLERANCE, "cuda": CUDA_TOLERANCE}
    )
    image_shape: tuple[int | str, ...] = IMAGE_SAMPLE_SHAPE  # strings are symbolic (dynamic) axes

    @property
    def dynamic_size(self) -> bool:
        """Whether height and width are symbolic: the file takes images of any size."""
        return any(isinstance(d, str) for d in self.image_shape)

    def sample_shape(self, kind: str, latent_dim: int) -> tuple[int | str, ...]:
        return self.image_shape if kind == "image" else (latent_dim,)

    def input_shape(self, latent_dim: int) -> tuple[int | str, ...]:
        return (BATCH_AXIS, *self.sample_shape(self.input_kind, latent_dim))

    def output_shape(self, latent_dim: int) -> tuple[int | str, ...]:
        return (BATCH_AXIS, *self.sample_shape(self.output_kind, latent_dim))

    def tolerance(self, provider: str) -> Tolerance:
        try:
            return self.tolerances[provider]
        except KeyError:
            raise ValueError(
                f"no tolerance for provider {provider!r}; valid: {', '.join(self.tolerances)}"
            ) from None


ENCODER = ArtifactSpec("encoder", "encoder.onnx", "image", "image", "latent", "latent")
DECODER = ArtifactSpec("decoder", "decoder.onnx", "latent", "latent", "image", "image")
DENOISER = ArtifactSpec("denoiser", "denoiser.onnx", "image", "image", "denoised", "image")
SPECS: dict[str, ArtifactSpec] = {spec.role: spec for spec in (ENCODER, DECODER, DENOISER)}
ARTIFACT_FILES: dict[str, str] = {role: spec.file_name for role, spec in SPECS.items()}
# The fully convolutional model exports only the whole denoiser: its skip connections carry detail around
# the bottleneck, so there is no encoder/decoder pair whose composition is the denoiser.
ANY_SIZE_DENOISER = ArtifactSpec(
    "denoiser", "denoiser.onnx", "image", "image", "denoised", "image", image_shape=ANY_SIZE_SAMPLE_SHAPE
)
ARCH_SPECS: dict[str, dict[str, ArtifactSpec]] = {
    "lecture": SPECS,
    "spatial": SPECS,  # a fixed-size autoencoder like the lecture's: the same three files
    "fcn": {"denoiser": ANY_SIZE_DENOISER},
}


def specs_for(arch: str) -> dict[str, ArtifactSpec]:
    """The artifacts a model architecture (ModelConfig.arch) exports, by role."""
    try:
        return ARCH_SPECS[arch]
    except KeyError:
        raise ValueError(f"no artifact specs for arch {arch!r}; valid: {', '.join(ARCH_SPECS)}") from None
