"""STAC items as inputs: which items a catalogue names, their band files, and their radiometry.

Pure logic on top of pystac (no MPI): rank 0's planner turns ``--stac FILE_OR_URL`` (an Item, an ItemCollection
or FeatureCollection, or a static Catalog or Collection, followed recursively) and the items of a search
(:mod:`mpi_s2.inputs.stac_search`) into :class:`~mpi_s2.config.BandFiles`, one per item, in the catalogue's order.

* **Assets.** Earth Search names them ``red``/``green``/``blue``/``scl``, the Planetary Computer
  ``B04``/``B03``/``B02``/``SCL``; ``--assets red=KEY,green=KEY,blue=KEY[,scl=KEY]`` names them for any other
  catalogue. Relative hrefs resolve against the item's own location (its ``self`` link, else the file or URL it
  was read from); ``http(s)://`` and ``s3://`` hrefs become GDAL's ``/vsicurl/`` and ``/vsis3/`` paths.
* **Radiometry.** ``reflectance = (DN + offset) / scale`` with the item's ``raster:bands`` ``scale`` and
  ``offset`` where its assets have them (``offset = raster offset / raster scale``, ``scale = 1 / raster
  scale``), else with the processing baseline (``s2:processing_baseline``, or the ``_Nxxyy_`` of its product id):
  04.00 and later -1000, before 0, scale 10000. Earth Search's ``earthsearch:boa_offset_applied`` is wrong on some
  items (Element84/earth-search issues 66 and 71): when the item's properties imply different offsets, one
  warning line names the item and ``raster:bands`` is followed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mpi_s2.config import BandFiles
from mpi_s2.errors import InputError
from mpi_s2.inputs.bands import gdal_path

log = logging.getLogger(__name__)

ROLES = ("red", "green", "blue", "scl")
#: the asset keys of the catalogues mpi_s2 knows, tried in this order: Earth Search, then the Planetary Computer
KNOWN_ASSETS: dict[str, tuple[str, ...]] = {
    "red": ("red", "B04"), "green": ("green", "B03"), "blue": ("blue", "B02"), "scl": ("scl", "SCL"),
}
DEFAULT_SCALE = 10000.0
_BASELINE_IN_ID = re.compile(r"_N(\d{2})(\d{2})(?:_|$)")


def parse_assets(text: str) -> dict[str, str]:
    """``--assets red=KEY,green=KEY,blue=KEY[,scl=KEY]`` as a mapping from role to asset key."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        role, sep, key = part.partition("=")
        if not sep or not key or role not in ROLES:
            raise InputError(f"--assets {text}: expected red=KEY,green=KEY,blue=KEY[,scl=KEY], got {part!r}")
        if role in mapping:
            raise InputError(f"--assets {text}: {role} is given twice")
        mapping[role] = key
    missing = [r for r in ROLES[:3] if r not in mapping]
    if missing:
        raise InputError(f"--assets {text}: names no asset for {', '.join(missing)}")
    return mapping


@dataclass(frozen=True)
class CatalogueItem:
    """One item as read from a catalogue: the pystac Item and the location its relative hrefs resolve against."""

    item: Any  # pystac.Item
    base: str  # the item's self href, else the file or URL it was read from
    source: str  # the --stac argument (or search URL) it came from, for messages

    @property
    def name(self) -> str:
        return f"item {self.item.id} ({self.source})"


def read_catalogue(source: str) -> list[CatalogueItem]:
    """The items ``source`` (a file or URL of a STAC Item, ItemCollection/FeatureCollection, Catalog or
    Collection, followed recursively) names, in its order."""
    import pystac
    from pystac.utils import make_absolute_href

    href = source if "://" in source else make_absolute_href(source)
    try:
        document = pystac.StacIO.default().read_json(href)
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except Exception as exc:  # urllib's, json's: one line naming the source
        raise InputError(f"{source}: cannot be read as a STAC catalogue ({_reason(exc)})") from None
    kind = document.get("type") if isinstance(document, dict) else None
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(document, href=href, migrate=True)]
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(document).items)
        elif kind in ("Catalog", "Collection"):
            catalog = pystac.read_file(href)
            assert isinstance(catalog, pystac.Catalog)  # a Collection is one too
            items = list(catalog.get_items(recursive=True))
        else:
            raise InputError(f"{source}: not a STAC item, item collection or catalog (its type is {kind!r})")
    except InputError:
        raise
    except Exception as exc:  # pystac's STACTypeError, a missing child file, a malformed item...
        raise InputError(f"{source}: not a valid STAC {kind} ({_reason(exc)})") from None
    if not items:
        raise InputError(f"{source}: the STAC {kind} has no items")
    return [CatalogueItem(item, item.get_self_href() or href, source) for item in items]


def warm_up(search: bool = False) -> None:
    """Import pystac (and pystac-client for a ``search``) and read one empty item, so that pystac finds its
    extension hooks and imports its date parser now: the first item read otherwise pays about 60 ms for them,
    while the workers wait for the plan. Rank 0 calls this while the other ranks are still starting
    (:func:`mpi_s2.cli.main`). A warm-up changes nothing else: any failure is left to the real read."""
    try:
        import pystac

        pystac.Item.from_dict({"type": "Feature", "stac_version": "1.0.0", "id": "warm-up", "geometry": None,
                               "properties": {"datetime": "2000-01-01T00:00:00Z"}, "links": [], "assets": {}},
                              migrate=True)
        if search:
            import pystac_client  # noqa: F401
    except Exception:  # noqa: BLE001 (the read that needs it reports it)
        pass


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def band_sets(items: Iterable[CatalogueItem], assets: Mapping[str, str] | None = None,
              cloud_mask: bool = False) -> list[BandFiles]:
    """One band set per item, with its files, date, cloud cover and radiometry (see the module's docstring)."""
    return [item_band_set(entry, assets, cloud_mask) for entry in items]


def item_band_set(entry: CatalogueItem, assets: Mapping[str, str] | None = None,
                  cloud_mask: bool = False) -> BandFiles:
    """The band set of one item."""
    from pystac.utils import make_absolute_href

    item = entry.item
    roles = ROLES if cloud_mask else ROLES[:3]
    keys = {role: _asset_key(entry, role, assets) for role in roles}
    hrefs = {role: gdal_path(make_absolute_href(item.assets[key].href, entry.base)) for role, key in keys.items()}
    radiometry, source, warning = item_radiometry(entry, keys)
    if warning:
        log.warning("%s", warning)
    when = item.datetime or item.common_metadata.start_datetime
    cloud = item.properties.get("eo:cloud_cover")
    return BandFiles(hrefs["red"], hrefs["green"], hrefs["blue"], hrefs.get("scl"),
                     date=when.date().isoformat() if when else None, label=f"item {item.id}",
                     radiometry=radiometry, radiometry_from=source,
                     cloud_cover=float(cloud) if cloud is not None else None,
                     sensing_time=when.isoformat() if when else None)


def _asset_key(entry: CatalogueItem, role: str, assets: Mapping[str, str] | None) -> str:
    item = entry.item
    wanted = (assets[role],) if assets and role in assets else KNOWN_ASSETS[role]
    for key in wanted:
        if key in item.assets:
            return key
    have = ", ".join(sorted(item.assets)) or "none"
    why = " (--cloud-mask needs it)" if role == "scl" else ""
    hint = "" if assets else "; name them with --assets red=KEY,green=KEY,blue=KEY[,scl=KEY]"
    raise InputError(f"{entry.name}: has no {role} asset{why}: looked for {' or '.join(wanted)}, it has {have}{hint}")


def processing_baseline(item: Any) -> str | None:
    """``s2:processing_baseline``, else the ``Nxxyy`` of the product id (``s2:product_uri``, then the item id)."""
    properties = item.properties
    baseline = properties.get("s2:processing_baseline")
    if baseline:
        return str(baseline)
    for text in (properties.get("s2:product_uri"), item.id):
        match = _BASELINE_IN_ID.search(str(text or "").removesuffix(".SAFE"))
        if match:
            return f"{match.group(1)}.{match.group(2)}"
    return None


def baseline_offset(baseline: str) -> float:
    """The DN offset of L2A products of ``baseline``: -1000 from 04.00 on (BOA_ADD_OFFSET), else 0."""
    try:
        major, minor = (int(p) for p in baseline.split("."))
    except ValueError:
        raise InputError(f"processing baseline {baseline!r} is not NN.NN") from None
    return -1000.0 if (major, minor) >= (4, 0) else 0.0


def _raster_radiometry(entry: CatalogueItem, key: str) -> tuple[float, float] | None:
    """(offset, scale) in DN of ``raster:bands`` of the asset, or None when it gives no scale."""
    bands = entry.item.assets[key].extra_fields.get("raster:bands")
    if not bands or not isinstance(bands, list) or not isinstance(bands[0], dict) or "scale" not in bands[0]:
        return None
    scale, offset = float(bands[0]["scale"]), float(bands[0].get("offset", 0.0))
    if scale <= 0:
        raise InputError(f"{entry.name}: asset {key}: raster:bands scale {scale:g} is not > 0")
    return round(offset / scale, 6) + 0.0, round(1.0 / scale, 6)


def item_radiometry(entry: CatalogueItem, keys: Mapping[str, str]
                    ) -> tuple[tuple[tuple[float, float], ...], str, str | None]:
    """Per RGB band (offset, scale) in DN, where they come from, and the warning line when the item's properties
    contradict each other (see the module's docstring); an item that gives neither is an error."""
    item = entry.item
    raster = [_raster_radiometry(entry, keys[role]) for role in ROLES[:3]]
    baseline = processing_baseline(item)
    applied = item.properties.get("earthsearch:boa_offset_applied")
    implied: dict[str, float] = {}
    if all(r is not None for r in raster):
        implied["raster:bands"] = raster[0][0]  # type: ignore[index]
    if baseline is not None:
        implied[f"processing baseline {baseline}"] = baseline_offset(baseline)
        if applied is not None:  # Earth Search: the offset is already in the COG's DN (so none to add)
            implied[f"earthsearch:boa_offset_applied {str(bool(applied)).lower()}"] = (
                0.0 if applied else baseline_offset(baseline))
            if applied:
                del implied[f"processing baseline {baseline}"]  # the flag qualifies the baseline
    if "raster:bands" in implied:
        radiometry = tuple(r for r in raster if r is not None)
        source = "raster:bands"
    elif baseline is not None:
        offset = next(iter(v for k, v in implied.items() if k.startswith("earthsearch")),
                      baseline_offset(baseline))
        radiometry = ((offset, DEFAULT_SCALE),) * 3
        source = f"processing baseline {baseline}" + (
            f", earthsearch:boa_offset_applied {str(bool(applied)).lower()}" if applied is not None else "")
    else:
        raise InputError(f"{entry.name}: neither raster:bands scale and offset nor a processing baseline tells "
                         f"its offset; give --offset (-1000 for baseline 04.00 and later, else 0)")
    warning = None
    if len(set(implied.values())) > 1:
        said = ", ".join(f"{what} means offset {value:g}" for what, value in implied.items())
        warning = (f"{entry.name}: its properties contradict each other ({said}); following "
                   f"{source}: offset {radiometry[0][0]:g} (Element84/earth-search issues 66 and 71)")
    return radiometry, source, warning


def items_from(sources: Sequence[str]) -> list[CatalogueItem]:
    """The items of every ``--stac`` source, in order."""
    return [entry for source in sources for entry in read_catalogue(source)]
