"""The two window sources of a percentile stretch (``--stretch percentile:LOW,HIGH``).

The counting pass composes each window once, into *kept values* ``2 v - HIST_BASE + 1`` (0: nodata; see
:mod:`mpi_s2.pixels.stretch`), counts them into the rank's histogram and keeps them in the staging directory,
one ``.npy`` file per window (uint16 where they fit, else uint32). The rendering pass reads them back and looks
them up in the display tables of the global limits: no source block is decoded twice.
"""

from __future__ import annotations

import os

import numpy as np

from mpi_s2.errors import OutputError
from mpi_s2.pixels.stretch import ValueHistogram, count_kept
from mpi_s2.report import RankStats
from mpi_s2.windows import Window
from mpi_s2.worker.compose import WindowComposer


class ValueStore:
    """Kept values of a run's windows, one file per window in ``directory`` (which every rank sees)."""

    def __init__(self, directory: str):
        self.directory = directory

    def path(self, window: Window) -> str:
        return os.path.join(self.directory, f"values-{window.row_off}-{window.col_off}.npy")

    def save(self, window: Window, kept: np.ndarray) -> None:
        compact = kept.astype(np.uint16) if int(kept.max(initial=0)) <= np.iinfo(np.uint16).max else kept
        try:
            with open(self.path(window), "wb") as fh:
                np.save(fh, compact, allow_pickle=False)
        except OSError as exc:
            raise OutputError(f"{self.path(window)}: cannot keep the window's values for the stretch: "
                              f"{exc.strerror}") from None

    def load(self, window: Window) -> np.ndarray:
        return np.load(self.path(window), allow_pickle=False)


class CountingSource:
    """The counting pass's window source: composes kept values, counts them, keeps them (when ``store``).
    The block it is given (the output's) is left alone."""

    def __init__(self, composer: WindowComposer, max_pixels: int, store: ValueStore | None):
        self.composer, self.store = composer, store
        self.histogram = ValueHistogram()
        self._kept = np.empty(3 * max_pixels, dtype=np.uint32)

    def render(self, window: Window, block: np.ndarray, stats: RankStats) -> None:
        kept = self._kept[: 3 * window.size].reshape(3, *window.shape)
        self.composer.render(window, kept, stats)
        with stats.timer("compute"):
            count_kept(self.histogram, kept.reshape(3, -1))
        if self.store is not None:
            with stats.timer("write"):
                self.store.save(window, kept)


class KeptValuesSource:
    """The rendering pass's window source: kept values through the display tables ``luts`` (``(3, n)`` uint8,
    entry 0 nodata; see :func:`~mpi_s2.pixels.stretch.kept_display_luts`)."""

    def __init__(self, store: ValueStore, luts: np.ndarray, alpha: bool):
        self.store, self.luts, self.alpha = store, luts, alpha

    def render(self, window: Window, block: np.ndarray, stats: RankStats) -> None:
        with stats.timer("read"):
            kept = self.store.load(window)
        with stats.timer("compute"):
            for b in range(3):
                np.take(self.luts[b], kept[b], out=block[b])
            if self.alpha:
                np.multiply(kept[0] > 0, 255, out=block[3], casting="unsafe")
