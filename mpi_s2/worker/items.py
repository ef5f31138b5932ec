"""What a worker does with one work item, whichever backend it writes to: decode a staging unit into its raw
copy, or fill a window's block (composed from the inputs, or read from another source such as an HDF5 file)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from mpi_s2.inputs.block_counts import DecodeCounter
from mpi_s2.inputs.cloudmask import invalid_class_lut
from mpi_s2.pixels.stretch import StretchLimits
from mpi_s2.planning.plan import Plan
from mpi_s2.planning.scheduling import KIND_STAGE, Done
from mpi_s2.planning.stage_plan import StagedFile, StageUnit
from mpi_s2.report import RankStats
from mpi_s2.windows import Window
from mpi_s2.worker.compose import WindowComposer
from mpi_s2.worker.stager import Stager


class WindowSource(Protocol):
    """What fills a window's block: the inputs composed (:class:`WindowComposer`), or an HDF5 file read back."""

    def render(self, window: Window, block: np.ndarray, stats: RankStats) -> None: ...


class ItemWorker:
    """A worker's tools: the stager of staging units (made on first use) and the window source."""

    def __init__(self, source: WindowSource, stats: RankStats, counter: DecodeCounter,
                 staged: Sequence[StagedFile] = ()):
        self.source, self.stats, self.counter, self.staged = source, stats, counter, staged
        self._stager: Stager | None = None
        self._staged_before = stats.stage_units  # a pass after a counting pass reports only its own units

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
        self._stager = self._stager or Stager(self.staged, self.counter)
        read_s, write_s = self._stager.stage(unit)
        self.stats.seconds["read"] += read_s
        self.stats.seconds["write"] += write_s
        self.stats.stage_units += 1

    def staged_done(self) -> int:
        """Staging units finished so far; their copies are closed first, so they are visible to every rank."""
        if self._stager is not None:
            with self.stats.timer("write"):
                self._stager.close()
        return self.stats.stage_units - self._staged_before

    def done(self) -> Done:
        """Staging units (see :meth:`staged_done`) and windows finished so far, as rank 0 is told."""
        return Done(self.staged_done(), self.stats.windows)

    def fill(self, window: Window, block: np.ndarray) -> None:
        """Fill ``block`` (``(bands, rows, cols)``) with ``window``'s pixels."""
        self.source.render(window, block, self.stats)
        self.stats.windows += 1
        self.stats.pixels += window.size


def compose_worker(plan: Plan, luts: np.ndarray, stats: RankStats, counter: DecodeCounter,
                   limits: StretchLimits | None = None) -> ItemWorker:
    """The worker of a compose run: windows composed from ``plan``'s sources with the broadcast ``luts`` (a
    median or medoid with the tables of ``limits`` when given)."""
    config = plan.config
    composer = WindowComposer(plan.sources, luts, alpha=config.alpha,
                              mask_lut=invalid_class_lut(config.mask_classes) if config.cloud_mask else None,
                              max_pixels=plan.output.max_pixels, counter=counter, composite=config.composite,
                              limits=limits, gamma=config.gamma, aoi=plan.aoi)
    return ItemWorker(composer, stats, counter, plan.staged)
