"""Which inputs a run uses and in which order: ``--dates``, ``--max-cloud-cover`` and ``--order``.

Pure logic on :class:`~mpi_s2.planning.mosaic.TileInput` (their dates and cloud cover are read by the planner):

* ``--dates FROM/TO`` keeps the inputs acquired from FROM to TO, inclusive; ``--max-cloud-cover P`` those whose
  cloud cover is at most P %. Each says how many inputs it dropped; an input without the date or cloud cover
  asked for is one error line naming it, and so is a selection that keeps nothing.
* ``--order``: ``given`` keeps the command line's order; ``date`` and ``date-desc`` sort by acquisition date
  (then time, then the given order); ``cloud-cover`` puts the least cloudy first (then by date). Sorting is
  stable, so equal keys keep the given order. The order decides ``--composite first`` (the first valid pixel
  wins) and the ties of ``medoid``; ``median`` does not depend on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mpi_s2.errors import InputError
from mpi_s2.planning.mosaic import TileInput

ORDERS = ("given", "cloud-cover", "date", "date-desc")


def _need(tile: TileInput, what: str, why: str) -> None:
    hint = ("give --date per band set" if what == "date" else
            "give --scl for the band set" if tile.cloud_cover_from != "metadata" else "")
    raise InputError(f"{tile.label}: has no {what} ({why} needs it{'; ' + hint if hint else ''})")


def select_inputs(tiles: Sequence[TileInput], dates: tuple[str, str] | None,
                  max_cloud_cover: float | None) -> tuple[list[TileInput], list[str]]:
    """The inputs ``--dates`` and ``--max-cloud-cover`` keep, and one note per option that dropped some."""
    kept, notes = list(tiles), []
    if dates is not None:
        for tile in kept:
            if tile.date is None:
                _need(tile, "date", "--dates")
        inside = [t for t in kept if dates[0] <= t.date <= dates[1]]  # type: ignore[operator]
        if len(inside) < len(kept):
            notes.append(f"--dates {dates[0]}/{dates[1]} dropped {len(kept) - len(inside)} of {len(kept)} inputs "
                         f"(acquired outside it)")
        kept = inside
    if max_cloud_cover is not None:
        for tile in kept:
            if tile.cloud_cover is None:
                _need(tile, "cloud cover", "--max-cloud-cover")
        clear = [t for t in kept if t.cloud_cover <= max_cloud_cover]  # type: ignore[operator]
        if len(clear) < len(kept):
            notes.append(f"--max-cloud-cover {max_cloud_cover:g} dropped {len(kept) - len(clear)} of {len(kept)} "
                         f"inputs (cloudier)")
        kept = clear
    if tiles and not kept:
        raise InputError("no input left: " + "; ".join(notes))
    return kept, notes


def order_inputs(tiles: Sequence[TileInput], order: str) -> list[TileInput]:
    """``tiles`` in ``order`` (see the module's docstring)."""
    if order == "given":
        return list(tiles)
    if order in ("date", "date-desc"):
        for tile in tiles:
            if tile.date is None:
                _need(tile, "date", f"--order {order}")
        if order == "date":
            return sorted(tiles, key=lambda t: (t.date, t.sensing_time or ""))
        return sorted(tiles, key=lambda t: _descending(t.date or "", t.sensing_time or ""))  # stable on ties
    if order == "cloud-cover":
        for tile in tiles:
            if tile.cloud_cover is None:
                _need(tile, "cloud cover", "--order cloud-cover")
        return sorted(tiles, key=lambda t: (t.cloud_cover, t.date or "", t.sensing_time or ""))
    raise InputError(f"--order: unknown order {order!r} (one of {', '.join(ORDERS)})")


def _descending(date: str, time: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(-ord(c) for c in date), tuple(-ord(c) for c in time)


def with_cloud_cover(tile: TileInput, fraction: float | None) -> TileInput:
    """``tile`` with the cloud cover measured from its classification (percent), when it has none."""
    if tile.cloud_cover is not None or fraction is None:
        return tile
    return dataclasses.replace(tile, cloud_cover=100.0 * fraction, cloud_cover_from="SCL")
