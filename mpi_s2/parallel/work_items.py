"""What a worker does with one work item, whichever backend it writes to: decode a staging unit into its raw
copy, or fill a window's block (composed from the inputs, or read from another source such as an HDF5 file)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mpi_s2.inputs.cloudmask import invalid_class_lut
from mpi_s2.inputs.decoding import DecodeCounter
from mpi_s2.inputs.stager import Stager
from mpi_s2.pixels.render import WindowRenderer
from mpi_s2.planning.plan import Plan
from mpi_s2.planning.scheduling import KIND_STAGE
from mpi_s2.planning.stage_plan import StageUnit
from mpi_s2.planning.windows import Window
from mpi_s2.report import RankStats


class WindowSource(Protocol):
    """What fills a window's block: the inputs composed (WindowRenderer), or an HDF5 file read back."""

    def render(self, window: Window, block: np.ndarray, stats: RankStats) -> None: ...


class ItemWorker:
    """A worker's tools, made on first use: the stager of staging units and the window source."""

    def __init__(self, plan: Plan, luts: np.ndarray, stats: RankStats, counter: DecodeCounter,
                 source: WindowSource | None = None):
        self.plan, self.luts, self.stats, self.counter = plan, luts, stats, counter
        self._source = source
        self._stager: Stager | None = None

    def take(self, kind: int, what: StageUnit | Window) -> Window | None:
        """Do a staging unit at once (None), or hand back the window for the caller to fill and send."""
        if kind == KIND_STAGE:
            assert isinstance(what, StageUnit)
            self.stage(what)
            return None
        assert isinstance(what, Window)
        return what

    def stage(self, unit: StageUnit) -> None:
        """Decode the unit's blocks once into the raw copy of its file."""
        self._stager = self._stager or Stager(self.plan.staged, self.counter)
        read_s, write_s = self._stager.stage(unit)
        self.stats.seconds["read"] += read_s
        self.stats.seconds["write"] += write_s
        self.stats.stage_units += 1

    def staged_done(self) -> int:
        """Staging units finished so far; their copies are closed first, so they are visible to every rank."""
        if self._stager is not None:
            with self.stats.timer("write"):
                self._stager.close()
        return self.stats.stage_units

    def fill(self, window: Window, block: np.ndarray) -> None:
        """Fill ``block`` (``(bands, rows, cols)``) with ``window``'s pixels."""
        if self._source is None:
            config = self.plan.config
            mask_lut = invalid_class_lut(config.mask_classes) if config.cloud_mask else None
            self._source = WindowRenderer(self.plan.sources, self.luts, alpha=config.alpha, mask_lut=mask_lut,
                                          max_pixels=self.plan.window_size[0] * self.plan.window_size[1],
                                          counter=self.counter)
        self._source.render(window, block, self.stats)
        self.stats.windows += 1
        self.stats.pixels += window.size
