"""The section interface: what every benchmark section receives (`BenchContext`) and provides (`Section`).

A section is a module with `NEEDS_DATA`, `heading(result)`, `TABLES` and `run(ctx) -> dict`; the dict is
JSON-ready and its "rows" are what the tables show. A section whose data can fall short may add
`check_data(data, budget)`, raising DataError: it runs before the first section does.
`bench.report.SECTIONS` lists them in report order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ae_export.specs import SPECS
from bench.tables import Table
from bench.timing import Budget
from train.checkpoint import Checkpoint
from train.data import Dataset

DENOISER_FILE = SPECS["denoiser"].file_name
NOISE_STD = 0.3  # the lecture recipe's noise; every section measures at this level


@dataclass(frozen=True)
class ModelUnderTest:
    """A checkpoint and the ONNX export folder that matches it."""

    label: str
    checkpoint: Checkpoint
    onnx_dir: Path
    note: str = ""

    @property
    def denoiser_path(self) -> Path:
        return self.onnx_dir / DENOISER_FILE


@dataclass(frozen=True)
class BenchContext:
    """Everything a section may use. Sections measuring one model use `models[0]`."""

    budget: Budget
    threads: int
    models: Sequence[ModelUnderTest]
    data: Dataset | None  # Fashion-MNIST; None when no chosen section needs it
    sample_shape: tuple[int, ...]  # one input image, (C, H, W), read from the first model's ONNX file
    photo_onnx: Path | None = None  # the any-size photo model's export folder (section "photo"); optional

    @property
    def first(self) -> ModelUnderTest:
        return self.models[0]

    def dataset(self) -> Dataset:
        """The dataset, which `run_bench` guarantees for sections with NEEDS_DATA."""
        if self.data is None:
            raise ValueError("this section needs Fashion-MNIST, and none was loaded")
        return self.data


class Section(Protocol):
    """What `bench.report` needs of a section module."""

    NEEDS_DATA: bool
    TABLES: Sequence[Table]

    def heading(self, result: dict[str, Any]) -> str: ...

    def run(self, ctx: BenchContext) -> dict[str, Any]: ...
