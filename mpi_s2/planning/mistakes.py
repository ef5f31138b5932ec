"""Likely mistakes that are not errors: the run goes on, and rank 0 logs one warning line for each.

* a band file whose name says another band than the option it was given to (``--red B02.tif``);
* ``--max-reflectance`` above 1.5: a digital number where a reflectance is meant (the image comes out black);
* an output name GDAL would not take for a GeoTIFF (``-o out.png``): a GeoTIFF is written under that name;
* more workers than windows: the workers beyond the window count stay idle.

Pure: the checks look at the configuration and the plan's counts only, never at a file.

Product bands are not checked: a product's band files are found by the band id in their own names
(:func:`mpi_s2.inputs.metadata.parse_metadata`), so their names cannot say another band.
"""

from __future__ import annotations

import os
import re

from mpi_s2.config import ComposeConfig
from mpi_s2.text import plural

#: Above this, ``--max-reflectance`` is most likely a digital number (reflectance 1.0 is 100 %).
MAX_PLAUSIBLE_REFLECTANCE = 1.5
#: Output extensions GDAL's GTiff driver is known by.
GEOTIFF_EXTENSIONS = (".tif", ".tiff", ".gtiff")
#: The band each band option takes, with its colour.
BAND_OPTIONS = (("--red", "B04", "red"), ("--green", "B03", "green"), ("--blue", "B02", "blue"))
_COLOURS = {band: colour for _, band, colour in BAND_OPTIONS}
#: A true-colour band id as a token of a file name: ``B02.tif``, ``T32TMS_B02_10m.jp2``, ``b02-clip.tif``.
_BAND_TOKEN = re.compile(r"(?<![a-z0-9])b0([234])(?![0-9])", re.IGNORECASE)


def band_named(path: str) -> str | None:
    """The one true-colour band (``"B02"``, ``"B03"``, ``"B04"``) the file's name says, else None (no band id,
    or more than one)."""
    found = {f"B0{m}" for m in _BAND_TOKEN.findall(os.path.basename(path))}
    return found.pop() if len(found) == 1 else None


def band_file_warnings(config: ComposeConfig) -> list[str]:
    """One line per band file whose name says another band than its option's."""
    lines = []
    for bands in config.band_sets:
        for (option, band, colour), path in zip(BAND_OPTIONS, (bands.red, bands.green, bands.blue), strict=True):
            named = band_named(path)
            if named and named != band:
                lines.append(f"{option} {path}: the file name says {named} ({_COLOURS[named]}), but {option} "
                             f"takes {band} ({colour}); are the bands swapped?")
    return lines


def reflectance_warning(max_reflectance: float) -> str | None:
    """A ``--max-reflectance`` that looks like a digital number."""
    if max_reflectance <= MAX_PLAUSIBLE_REFLECTANCE:
        return None
    big = max_reflectance >= 100  # surely a DN: say which reflectance it is
    as_dn = f" (DN {max_reflectance:g} is --max-reflectance {max_reflectance / 10000:g})" if big else ""
    return (f"--max-reflectance {max_reflectance:g}: a reflectance, not a DN? 1.0 is 100 % (DN 10000 without "
            f"offset), and a DN there makes the image nearly black{as_dn}")


def extension_warning(output: str) -> str | None:
    """An output name GDAL would not take for a GeoTIFF: mpi_s2 writes one under it all the same."""
    extension = os.path.splitext(output)[1]
    if extension.lower() in GEOTIFF_EXTENSIONS:
        return None
    named = f"has the extension {extension}" if extension else "has no extension"
    return (f"-o {output}: {named}, but a GeoTIFF is written under that name (use .tif or .tiff; "
            f"--quicklook writes a PNG or JPEG preview)")


def idle_worker_warning(windows: int, workers: int) -> str | None:
    """More workers than windows: each window goes to one worker, so the others have none."""
    if workers <= windows:
        return None
    return (f"{plural(windows, 'window')} for {plural(workers, 'worker')}: ranks beyond {windows} will be idle "
            f"({plural(workers - windows, 'rank')} with no window to compose); use at most "
            f"{plural(windows + 1, 'rank')}, or a smaller --window")


def likely_mistakes(config: ComposeConfig, windows: int, workers: int) -> list[str]:
    """Every warning of a run of ``config`` that has ``windows`` windows to compose and ``workers`` workers."""
    lines = band_file_warnings(config)
    for line in (reflectance_warning(config.max_reflectance),
                 None if config.stretch_only else extension_warning(config.output),
                 idle_worker_warning(windows, workers)):
        if line:
            lines.append(line)
    return lines
