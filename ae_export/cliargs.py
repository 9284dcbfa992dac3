"""The readings of `ae-export`'s list flags, shared by its subcommands (`compat`) and by `bench`.

Plain functions of a flag's text, so the library never imports a command to read one: each returns the
values or raises ValueError naming the flag, which the command prints as its one-line error (exit 2).
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, as argparse words it, where the flag has one to show: a default of
    None, False or [] (the flag's text says what its absence means) printed '(default: None)' after text
    that had just named the real default ('default artifacts/onnx ... (default: None)')."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def parse_csv(text: str, cast: type, name: str, choices: tuple | None = None) -> list:
    """'fp16, int8' -> ['fp16', 'int8']: comma-separated items, each stripped of the spaces around it
    (' int8' was once refused as not valid), empty ones dropped, cast and checked against `choices`."""
    try:
        values = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} {text!r}: expected comma-separated {cast.__name__} values") from None
    if choices is not None:
        bad = [v for v in values if v not in choices]
        if bad:
            raise ValueError(f"--{name}: {bad} not valid; choose from {', '.join(choices)}")
    if not values:
        raise ValueError(f"--{name} is empty")
    return values


def parse_batch_sizes(text: str) -> list[int]:
    """'1,7,64' -> [1, 7, 64]; ValueError names a size under 1 (0 once ended in numpy's "need at least one
    array to concatenate", -3 in "expected non-negative integer", with nothing saying which flag)."""
    sizes = parse_csv(text, int, "batch-sizes")
    bad = [b for b in sizes if b < 1]
    if bad:
        raise ValueError(f"--batch-sizes: {bad} not valid; batch sizes are integers >= 1 (e.g. 1,7,64)")
    return sizes


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'64x96,512x512' -> [(64, 96), (512, 512)]; ValueError names the entry that is not HxW."""
    sizes = []
    for item in parse_csv(text, str, "sizes"):
        height, _, width = item.lower().partition("x")
        if not (height.isdigit() and width.isdigit() and int(height) > 0 and int(width) > 0):
            raise ValueError(f"--sizes: {item!r} is not HxW with positive integers (e.g. 64x96)")
        sizes.append((int(height), int(width)))
    return sizes
