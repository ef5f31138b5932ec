"""Composing one output window (a worker's job): read the sources that cover it, apply their lookup tables.

Where sources overlap, the first valid pixel in input order wins (``--composite first``), or, with ``median``
and ``medoid``, every valid observation of the pixel is stacked and reduced (:mod:`mpi_s2.pixels.composite`).
A pixel is valid in a source where none of
its three bands is the nodata DN and, with cloud masking, its scene class is not masked. The output is 0 in
every band where no source is valid; the alpha band (if any) is 255 exactly where some source is valid.

Each window's pixels are counted into the rank's :class:`~mpi_s2.report.RankStats`: ``valid_pixels`` (some
source valid) and ``cloud_masked_pixels`` (some source has data there, but every such source is masked); the
rest of the window is nodata.

With ``--aoi``, the pixels of a window outside the area (their centres, see :mod:`mpi_s2.planning.aoi`) are
nodata as if no source covered them; a source whose part of the window lies wholly outside is not read (the
planner hands out no window wholly outside).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mpi_s2.inputs.bands import TileReader
from mpi_s2.inputs.block_counts import DecodeCounter
from mpi_s2.pixels.composite import check_stretches, composite, doubled_lut
from mpi_s2.pixels.radiometry import render_window, valid_mask
from mpi_s2.pixels.stretch import StretchLimits, ValueTables, doubled_luts, doubled_value_table
from mpi_s2.planning.aoi import AoiMask, AreaOfInterest
from mpi_s2.planning.mosaic import TileSource
from mpi_s2.report import RankStats
from mpi_s2.windows import Window, intersection, relative_to


class WindowComposer:
    def __init__(self, sources: Sequence[TileSource], luts: np.ndarray | ValueTables, *, alpha: bool,
                 mask_lut: np.ndarray | None, max_pixels: int, counter: DecodeCounter | None = None,
                 composite: str = "first", limits: StretchLimits | None = None, gamma: float = 2.2,
                 keep_values: bool = False, aoi: AreaOfInterest | None = None):
        """``luts``: ``(n_sources, 3, 65536)`` tables by DN, uint8 display values (or, with ``keep_values``,
        uint32 kept values: :class:`~mpi_s2.pixels.stretch.ValueTables`). A median or medoid renders with the
        contract's table, the tables of percentile ``limits`` (with ``gamma``), or kept values. ``aoi``: pixels
        outside it are nodata."""
        self.sources = list(sources)
        self.aoi = AoiMask(aoi) if aoi is not None else None
        self.luts = luts
        self.alpha = alpha
        self.composite = composite
        if composite != "first":
            stretch, low = check_stretches([s.stretches for s in self.sources], [s.label for s in self.sources])
            high = int(max(st.offset for s in self.sources for st in s.stretches))
            lut, self._base = doubled_lut(stretch, low, high, reserve_zero=not alpha)
            if keep_values:
                lut = doubled_value_table(self._base, lut.size)
                self._doubled_luts = [lut] * 3
            elif limits is not None:
                self._doubled_luts = list(doubled_luts(limits, gamma, self._base, lut.size, reserve_zero=not alpha))
            else:
                self._doubled_luts = [lut] * 3
        self.mask_lut = mask_lut
        self.counter = counter
        self._readers: dict[int, TileReader] = {}
        self._dn = [np.empty(max_pixels, dtype=np.uint16) for _ in range(3)]
        self._scl = np.empty(max_pixels, dtype=np.uint8)
        self._filled = np.empty(max_pixels, dtype=bool)
        self._has_data = np.empty(max_pixels, dtype=bool)

    def _reader(self, i: int) -> TileReader:
        if i not in self._readers:
            s = self.sources[i]
            use_mask = self.mask_lut is not None and s.mask_dataset is not None
            on_decode = None
            if self.counter is not None:
                counter, block = self.counter, s.block_size

                def on_decode(file: str, window: Window) -> None:
                    counter.record(i, file, window, block)
            self._readers[i] = TileReader(s.files, s.datasets, s.scl if use_mask else None,
                                          s.mask_dataset if use_mask else None, on_decode=on_decode,
                                          mask_factor=s.mask_factor if use_mask else 0)
        return self._readers[i]

    def _read(self, i: int, local: Window, stats: RankStats, into: tuple[np.ndarray, ...] | None = None):
        """Bands (into ``into`` if given, else the composer's buffers) and the masked-class flags of source ``i``
        over ``local`` (source pixel coordinates)."""
        reader = self._reader(i)
        bands = into or tuple(buf[: local.size].reshape(local.shape) for buf in self._dn)
        with stats.timer("read"):
            reader.read(local, bands)  # type: ignore[arg-type]
            invalid = None
            if reader.has_mask:
                scl = self._scl[: local.size].reshape(local.shape)
                reader.read_mask(local, scl)
        if reader.has_mask:
            with stats.timer("compute"):
                invalid = self.mask_lut[scl]  # type: ignore[index]
        return bands, invalid

    def render(self, window: Window, block: np.ndarray, stats: RankStats) -> None:
        """Fill ``block`` (``(3|4, rows, cols)`` uint8) with the composed ``window``."""
        inside = None
        if self.aoi is not None:
            with stats.timer("compute"):
                inside = self.aoi.inside(window)  # None: every pixel is inside
        covering = [(i, part) for i, s in enumerate(self.sources)
                    if (part := intersection(window, s.placement)) is not None
                    and (inside is None or inside[relative_to(part, window).toslices()].any())]
        if self.composite != "first":
            self._render_stack(window, covering, block, stats, inside)
            return
        if len(covering) == 1 and covering[0][1] == window:  # one source covers the window: the fast path
            i, _ = covering[0]
            bands, invalid = self._read(i, self.sources[i].local(window), stats)
            with stats.timer("compute"):
                valid = valid_mask(bands)
                if inside is not None:
                    valid &= inside
                if invalid is not None:
                    invalid &= valid  # masked where there is data
                    stats.cloud_masked_pixels += int(np.count_nonzero(invalid))
                    valid &= ~invalid
                stats.valid_pixels += int(np.count_nonzero(valid))
                render_window(bands, tuple(self.luts[i]), block, alpha=self.alpha, valid=valid)
            return
        with stats.timer("compute"):
            block[...] = 0
            filled = self._filled[: window.size].reshape(window.shape)
            filled[...] = False
            has_data = self._has_data[: window.size].reshape(window.shape)
            has_data[...] = False
        masking = False
        for i, part in covering:
            bands, invalid = self._read(i, self.sources[i].local(part), stats)
            with stats.timer("compute"):
                rows, cols = relative_to(part, window).toslices()
                take = valid_mask(bands)
                if inside is not None:
                    take &= inside[rows, cols]
                if invalid is not None:
                    masking = True
                    has_data[rows, cols] |= take
                    take &= ~invalid
                take &= ~filled[rows, cols]
                for b in range(3):
                    np.copyto(block[b, rows, cols], np.take(self.luts[i, b], bands[b]), where=take)
                filled[rows, cols] |= take
        with stats.timer("compute"):
            stats.valid_pixels += int(np.count_nonzero(filled))
            if masking:  # data in a masked source, and no source valid (one without a mask fills its data)
                stats.cloud_masked_pixels += int(np.count_nonzero(has_data & ~filled))
            if self.alpha:
                np.multiply(filled, 255, out=block[3], casting="unsafe")

    def _render_stack(self, window: Window, covering: list[tuple[int, Window]], block: np.ndarray,
                      stats: RankStats, inside: np.ndarray | None = None) -> None:
        """``--composite median|medoid``: every covering source is one observation of the window's pixels,
        decoded once into the window's stack (directly where it covers the whole window)."""
        t, n = len(covering), window.size
        if not t:  # (--aoi: no source under the window's pixels inside the area)
            block[...] = 0
            return
        with stats.timer("compute"):
            dn = np.zeros((t, 3, n), dtype=np.uint16)
            valid = np.zeros((t, n), dtype=bool)
            has_data = np.zeros(n, dtype=bool)
        masking = False
        for k, (i, part) in enumerate(covering):
            whole = part == window
            into = tuple(dn[k, b].reshape(window.shape) for b in range(3)) if whole else None
            bands, invalid = self._read(i, self.sources[i].local(part), stats, into)
            with stats.timer("compute"):
                rows, cols = relative_to(part, window).toslices()
                take = valid_mask(bands)
                if inside is not None:
                    take &= inside[rows, cols]
                if invalid is not None:
                    masking = True
                    has_data.reshape(window.shape)[rows, cols] |= take
                    take &= ~invalid
                if not whole:
                    for b in range(3):
                        dn[k, b].reshape(window.shape)[rows, cols] = bands[b]
                valid[k].reshape(window.shape)[rows, cols] = take
        with stats.timer("compute"):
            offsets = np.array([[int(st.offset) for st in self.sources[i].stretches] for i, _ in covering],
                               dtype=np.int64)
            doubled, any_valid = composite(dn, offsets, valid, self.composite)
            del dn
            doubled -= self._base  # the lookup table's index, in place
            doubled[:, ~any_valid] = 0
            for b in range(3):
                out = block[b].reshape(n)
                np.take(self._doubled_luts[b], doubled[b], out=out)
                out *= any_valid
            stats.valid_pixels += int(np.count_nonzero(any_valid))
            if masking:
                stats.cloud_masked_pixels += int(np.count_nonzero(has_data & ~any_valid))
            if self.alpha:
                np.multiply(any_valid.reshape(window.shape), 255, out=block[3], casting="unsafe")
