"""Where a campaign keeps what it knows: one directory, shared by the login node and the compute nodes.

::

    DIR/campaign.json            the campaign's settings (written once by ``campaign plan``)
    DIR/campaign.sqlite          the status database (unless a PostgreSQL URL was given)
    DIR/aoi.geojson              the area, as given
    DIR/items.json               every item selected (an ItemCollection)
    DIR/stretch.json             the global stretch (``mpi-s2 stretch`` over the whole area)
    DIR/tiles/T/items.json       tile T's items: its job never queries the catalogue
    DIR/tiles/T/marker.json      written by T's job when it ends (done, failed or cancelled), atomically
    DIR/tiles/T/report.json      T's run report
    DIR/submissions/TOKEN.json   one array job: its task ids -> tiles and attempts
    DIR/logs/                    the array tasks' logs
    DIR/outputs/T.tif            tile T's GeoTIFF

Jobs write only their own tile's marker, report and output; the status database is written by the campaign
command alone (see :mod:`mpi_s2.campaign.store`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CampaignDir:
    root: str

    @property
    def settings(self) -> str:
        return os.path.join(self.root, "campaign.json")

    @property
    def aoi(self) -> str:
        return os.path.join(self.root, "aoi.geojson")

    @property
    def items(self) -> str:
        return os.path.join(self.root, "items.json")

    @property
    def stretch(self) -> str:
        return os.path.join(self.root, "stretch.json")

    @property
    def logs(self) -> str:
        return os.path.join(self.root, "logs")

    @property
    def outputs(self) -> str:
        return os.path.join(self.root, "outputs")

    @property
    def stac(self) -> str:
        return os.path.join(self.root, "stac")

    def tile(self, name: str) -> str:
        return os.path.join(self.root, "tiles", name)

    def tile_items(self, name: str) -> str:
        return os.path.join(self.tile(name), "items.json")

    def marker(self, name: str) -> str:
        return os.path.join(self.tile(name), "marker.json")

    def report(self, name: str) -> str:
        return os.path.join(self.tile(name), "report.json")

    def output(self, name: str) -> str:
        return os.path.join(self.outputs, f"{name}.tif")

    def submission(self, token: str) -> str:
        return os.path.join(self.root, "submissions", f"{token}.json")


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON at ``path`` through a temporary file renamed into place: a reader sees the old file
    or the new one, never a part of it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: str) -> Any:
    with open(path) as fh:
        return json.load(fh)
