"""An area of interest as the user gives it (``--aoi FILE.geojson``): its geometry in longitude and latitude.

Used by the search (``intersects``, :mod:`mpi_s2.inputs.stac_search`) and by the planner, which puts it on the
output grid (:mod:`mpi_s2.planning.aoi`).
"""

from __future__ import annotations

import json
from typing import Any

from mpi_s2.errors import InputError


def read_aoi(path: str) -> dict[str, Any]:
    """The geometry of a GeoJSON file (a Geometry, a Feature, or a FeatureCollection: the union of its features'
    geometries, as a GeometryCollection), in longitude and latitude."""
    try:
        with open(path) as fh:
            document = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"--aoi {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"--aoi {path}: cannot be read as GeoJSON ({exc})") from None
    kind = document.get("type") if isinstance(document, dict) else None
    if kind == "Feature":
        geometries = [document.get("geometry")]
    elif kind == "FeatureCollection":
        geometries = [f.get("geometry") for f in document.get("features") or []]
    else:
        geometries = [document]
    geometries = [g for g in geometries if isinstance(g, dict) and g.get("type") in _AREAS]
    if not geometries:
        raise InputError(f"--aoi {path}: has no Polygon or MultiPolygon (type {kind!r})")
    return geometries[0] if len(geometries) == 1 else {"type": "GeometryCollection", "geometries": geometries}


_AREAS = ("Polygon", "MultiPolygon", "GeometryCollection")
