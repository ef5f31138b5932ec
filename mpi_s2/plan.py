"""The planner's work: inspect inputs, check the output, cut the raster into windows, assign them.

Runs on rank 0 only; the resulting :class:`Plan` (small metadata, no pixels) is broadcast to every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ComposeConfig
from .profiles import creation_options
from .radiometry import build_lut
from .scheduling import assign_round_robin
from .sources import Grid, inspect_band_set
from .windows import Window, choose_window_size, plan_windows
from .writer import OutputSpec, check_output_path, validate_creation_options


@dataclass(frozen=True)
class Plan:
    config: ComposeConfig
    grid: Grid
    block_size: tuple[int, int]
    window_size: tuple[int, int]
    windows: tuple[Window, ...]
    queues: dict[int, list[int]]
    output: OutputSpec

    @property
    def max_window_pixels(self) -> int:
        return max(w.size for w in self.windows)


def make_plan(config: ComposeConfig, worker_ranks: tuple[int, ...]) -> Plan:
    """Check everything that can be checked before any pixel is read, and plan the run."""
    check_output_path(config.output, overwrite=config.overwrite, inputs=config.inputs)
    grid, infos = inspect_band_set(config.inputs)
    block_size = infos[0].block_size
    window_size = choose_window_size(block_size, grid.size, config.window)
    windows = tuple(plan_windows(grid.size, window_size))
    options = creation_options(config.profile, config.creation_options, alpha=config.alpha)
    validate_creation_options(config.output, options, config.band_count)
    stretch = config.stretch
    metadata = {
        "MPI_S2_OFFSET": repr(stretch.offset),
        "MPI_S2_SCALE": repr(stretch.scale),
        "MPI_S2_MAX_REFLECTANCE": repr(stretch.max_reflectance),
        "MPI_S2_GAMMA": repr(stretch.gamma),
    }
    output = OutputSpec(config.output, grid, config.band_count, options, metadata)
    queues = assign_round_robin(len(windows), worker_ranks)
    return Plan(config, grid, block_size, window_size, windows, queues, output)


def plan_luts(plan: Plan) -> np.ndarray:
    """The ``(3, 65536)`` uint8 lookup tables (red, green, blue), built once by the planner."""
    lut = build_lut(plan.config.stretch, reserve_zero=not plan.config.alpha)
    return np.ascontiguousarray(np.stack([lut, lut, lut]))
