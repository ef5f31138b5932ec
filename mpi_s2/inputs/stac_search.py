"""Searching a STAC API for the items of a run (``--stac-search``), and saving them for a later ``--stac``.

pystac-client does the search and follows the API's ``next`` links page by page. The search asks for the
collection, ``--bbox`` or ``--aoi`` (its geometry, as ``intersects``), ``--dates`` (as ``datetime``) and, where the
API conforms to the query extension, ``--max-cloud-cover`` (``eo:cloud_cover <= P``). The planner applies
``--dates`` and ``--max-cloud-cover`` to the items found again, here and in :mod:`mpi_s2.planning.observations`,
so an API that ignores a parameter (or a static one, every parameter) still gives the run the user asked for.

``--save-items FILE.json`` writes what was found as one ItemCollection (atomically, no debris on failure): a
cluster job whose nodes cannot reach the catalogue then runs from ``--stac FILE.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from mpi_s2.config import Catalogue
from mpi_s2.errors import InputError
from mpi_s2.inputs.area import read_aoi
from mpi_s2.inputs.stac import CatalogueItem


def search_items(catalogue: Catalogue, dates: tuple[str, str] | None,
                 max_cloud_cover: float | None) -> list[CatalogueItem]:
    """The items a STAC API search finds, over all its pages; an empty search is an error."""
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses

    url = catalogue.search_url
    assert url is not None
    if not catalogue.collection:
        raise InputError(f"--stac-search {url}: give --collection (e.g. sentinel-2-l2a)")
    try:
        client = Client.open(url)
        query = None
        if max_cloud_cover is not None and client.conforms_to(ConformanceClasses.QUERY):
            query = {"eo:cloud_cover": {"lte": max_cloud_cover}}
        search = client.search(
            method="GET", collections=[catalogue.collection], bbox=list(catalogue.bbox) if catalogue.bbox else None,
            intersects=read_aoi(catalogue.aoi) if catalogue.aoi else None,
            datetime=f"{dates[0]}/{dates[1]}" if dates else None, query=query)
        items = [item for item in search.items() if wanted(item, dates, max_cloud_cover)]
    except InputError:
        raise
    except Exception as exc:  # requests', pystac-client's APIError, a page that is not JSON...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"--stac-search {url}: {type(exc).__name__}{': ' + reason if reason else ''}") from None
    if not items:
        asked = [f"collection {catalogue.collection}"]
        if catalogue.bbox:
            asked.append("bbox " + ",".join(f"{v:g}" for v in catalogue.bbox))
        if catalogue.aoi:
            asked.append(f"--aoi {catalogue.aoi}")
        if dates:
            asked.append(f"dates {dates[0]}/{dates[1]}")
        if max_cloud_cover is not None:
            asked.append(f"cloud cover <= {max_cloud_cover:g} %")
        raise InputError(f"--stac-search {url}: found no items ({', '.join(asked)})")
    return [CatalogueItem(item, item.get_self_href() or url, url) for item in items]


def wanted(item: Any, dates: tuple[str, str] | None, max_cloud_cover: float | None) -> bool:
    """Whether ``item`` is within ``dates`` and ``max_cloud_cover`` as far as its properties say (an API may ignore
    the query extension, or a static one every parameter)."""
    cloud = item.properties.get("eo:cloud_cover")
    if max_cloud_cover is not None and cloud is not None and float(cloud) > max_cloud_cover:
        return False
    when = item.datetime or item.common_metadata.start_datetime
    return dates is None or when is None or dates[0] <= when.date().isoformat() <= dates[1]


def save_items(items: list[CatalogueItem], path: str) -> None:
    """Write ``items`` as one ItemCollection at ``path``, with absolute hrefs (a later ``--stac path`` reads them
    wherever the file is), through a temporary file renamed into place."""
    import pystac
    from pystac.utils import make_absolute_href

    saved = []
    for entry in items:
        item = entry.item.clone()
        for asset in item.assets.values():
            asset.href = make_absolute_href(asset.href, entry.base)
        saved.append(item)
    document = pystac.ItemCollection(saved).to_dict(transform_hrefs=False)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"--save-items {path}: cannot be written ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
