"""Named points on the quality/cost frontier: `ae-train --preset lecture|balanced|quality`.

A preset is a model shape plus the recipe that trains it well (epochs, batch size, learning rate and its
schedule). Explicit `ae-train` flags override single values; the checkpoint records the preset name and
the full resulting recipe, and the ONNX metadata carries both.

- `lecture` (the default): the lecture's model and recipe, unchanged: Linear bottleneck, latent 4,
  Adam 1e-3 constant, 10 epochs, batch 256. About 0.6 MFLOP per image.
- `balanced`: the spatial-latent model at width 8: a (8, 7, 7) code instead of 4 numbers; about
  3.8x the lecture's FLOPs per image.
- `quality`: the spatial-latent model at width 12 and a cosine schedule: about 8x the lecture's FLOPs per
  image (the budget an edge deployment was given), the best of the shapes measured within that budget.

The README's frontier table (`make frontier`) reports what each preset reaches and costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_PRESET = "lecture"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    values: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields this preset sets


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("lecture", "the lecture's model and recipe (Linear bottleneck, latent 4)"),
        Preset(
            "balanced",
            "spatial (8, 7, 7) latent, width 8; cosine schedule",
            {
                "arch": "spatial",
                "latent_dim": 392,
                "width": 8,
                "epochs": 10,
                "lr": 3e-3,
                "schedule": "cosine",
            },
        ),
        Preset(
            "quality",
            "spatial (8, 7, 7) latent, width 12; cosine schedule",
            {
                "arch": "spatial",
                "latent_dim": 392,
                "width": 12,
                "epochs": 10,
                "lr": 3e-3,
                "schedule": "cosine",
            },
        ),
    )
}


def preset_values(name: str) -> dict[str, Any]:
    """The TrainConfig fields a preset sets (its name included); unknown names list the valid ones."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None
    return {"preset": preset.name, **preset.values}
