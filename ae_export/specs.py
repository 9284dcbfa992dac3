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
# Files an export folder holds beside the models: parity's report (or the rejected export's), the .ort
# files' operator list and mobile usability report, and `ae-export compat`'s matrix. With the variants and
# the manifest they are derived from the fp32 files, so a new export removes an earlier one's
# (`ae_export.export.drop_derived_files`).
PARITY_JSON = "parity.json"
REJECTED_JSON = "parity.rejected.json"
REQUIRED_OPERATORS = "required_operators.config"
USABILITY_REPORT = "mobile_usability.txt"
COMPAT_JSON = "compat.json"


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


@dataclass(frozen=True)
class VariantSpec:
    """One deployment flavour of the three artifacts: how it is named, stored and judged.

    name: what users pass to `--variant` and what the manifest records ("fp32", "int8.ort", ...).
    suffix: the file-name tail after the role: `denoiser` + ".int8.onnx".
    vs_torch / vs_fp32: parity tolerance against the PyTorch model and against the fp32 ONNX file.
    psnr_budget_db: the most mean PSNR (standard test) the variant may lose against the fp32 file.
    parity_inputs: the parity input kinds checked (None: all of them).
    """

    name: str
    precision: str  # "fp32" | "fp16" | "int8": the arithmetic inside the graph (inputs/outputs stay fp32)
    fmt: str  # "onnx" | "ort"
    suffix: str
    vs_torch: Tolerance
    vs_fp32: Tolerance
    psnr_budget_db: float
    parity_inputs: tuple[str, ...] | None = None
    mean_abs_bound: float | None = None  # a check also fails when its mean abs error exceeds this

    def file_name(self, role: str) -> str:
        return f"{role}{self.suffix}"


# fp16: weights and activations rounded to 11 significant bits (relative step 2^-11 ~ 4.9e-4) at every
# layer. Measured on the default model (10 epochs), every batch size and input kind: max abs 2.6e-3 on the
# denoiser's [0, 1] outputs (mean 1.1e-4), 2.3e-3 on the decoder's, 6.6e-4 on the encoder's latents.
# 1e-2 leaves ~4x room for other trainings and still fails any real fault (flipping or nudging a weight
# tensor moves outputs by 1e-1 and more).
FP16_TOLERANCE = Tolerance(atol=1e-2, rtol=1e-2)
# int8: 8-bit activations and per-channel 8-bit weights; each layer adds up to half a quantization step
# of its range and the steps add up over 11 layers. Measured on the default model (10 epochs): mean abs
# 4e-3 to 7.7e-3 per check, but single elements reach 0.49 on [0, 1] outputs (a few per million pixels,
# batch 1000) and 0.72 on latents, where an activation sits near a rounding boundary that the next layers
# amplify (an 8-epoch model: 0.35). So an element fails only beyond 0.75 abs and 0.75 rel (gross faults,
# NaN), and the mean abs error of each check must stay under INT8_MEAN_ABS = 0.02 (2.6x the worst mean
# measured): that is what catches a corrupted or sign-flipped weight tensor. What int8 may lose in
# quality is judged by its PSNR budget.
INT8_TOLERANCE = Tolerance(atol=0.75, rtol=0.75)
INT8_MEAN_ABS = 0.02
# The same graph in ORT's flatbuffer format: the same kernels after the same optimisations.
# int8 is calibrated on real images and real latents: activations beyond the calibrated ranges saturate
# by design. Latents drawn per dimension at random (parity's "latent-random") leave that range (max abs
# 0.75 on the decoder), so int8 parity uses the real-data inputs and uniform images only.
INT8_PARITY_INPUTS = ("clean", "noisy", "uniform", "latent-real")
# fp32 files in ORT format: the same graph and kernels; a budget of 0.001 dB allows float rounding only.
ORT_FP32_BUDGET_DB = 0.001
FP32_VARIANT = VariantSpec("fp32", "fp32", "onnx", ".onnx", CPU_TOLERANCE, CPU_TOLERANCE, 0.0)
# The fp32 model as torch exports it (ConvTranspose), beside the default "fast" graph (Conv + Col2Im):
# ONNX Runtime's CUDA provider has no Col2Im kernel, so on a GPU the fast graph runs its two Col2Im nodes
# on the CPU with a host copy around each. Measured on an H200 (ORT 1.31, IO binding), batch 256: 0.78 ms
# fast vs 0.20 ms portable; batch 1024: 2.33 vs 0.31 ms. `runtimes.Denoiser` opens this file when the
# model runs on CUDA; OpenCV DNN, mobile EPs and Triton's GPU instances want it too. Same math as fp32:
# the fp32 tolerance, and a PSNR budget that allows float rounding only.
PORTABLE_VARIANT = VariantSpec(
    "portable", "fp32", "onnx", ".portable.onnx", CPU_TOLERANCE, CPU_TOLERANCE, ORT_FP32_BUDGET_DB
)
VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        FP32_VARIANT,
        PORTABLE_VARIANT,
        VariantSpec("fp16", "fp16", "onnx", ".fp16.onnx", FP16_TOLERANCE, FP16_TOLERANCE, 0.02),
        VariantSpec(
            "int8",
            "int8",
            "onnx",
            ".int8.onnx",
            INT8_TOLERANCE,
            INT8_TOLERANCE,
            0.10,
            INT8_PARITY_INPUTS,
            INT8_MEAN_ABS,
        ),
        VariantSpec("fp32.ort", "fp32", "ort", ".ort", CPU_TOLERANCE, CPU_TOLERANCE, ORT_FP32_BUDGET_DB),
        VariantSpec("fp16.ort", "fp16", "ort", ".fp16.ort", FP16_TOLERANCE, FP16_TOLERANCE, 0.02),
        VariantSpec(
            "int8.ort",
            "int8",
            "ort",
            ".int8.ort",
            INT8_TOLERANCE,
            INT8_TOLERANCE,
            0.10,
            INT8_PARITY_INPUTS,
            INT8_MEAN_ABS,
        ),
    )
}
# What `ae-export --variants` accepts: the precisions, "ort" = an .ort file for each precision written,
# and "portable" = the fp32 model in the portable graph (written only when the fp32 files hold the fast one).
VARIANT_CHOICES = ("fp16", "int8", "ort", "portable")
DEFAULT_VARIANTS = ("fp16", "int8", "ort", "portable")


def variant_for(precision: str, fmt: str) -> VariantSpec:
    return next(v for v in VARIANTS.values() if v.precision == precision and v.fmt == fmt)


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
