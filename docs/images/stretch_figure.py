"""Make docs/images/stretch-real-clips.png: the real clips of ../shared/data/s2-real with four stretches.

Run from the repository root: ``.venv/bin/python docs/images/stretch_figure.py [DATA_DIR]``. Each panel is an
``mpi-s2 compose`` run (1 rank); the title gives the options and the standard deviation of the valid pixels'
display values (all three channels).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from osgeo import gdal  # noqa: E402

DATA = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/s2-real")
SCENES = {
    "T29RKH, L2A, 2020-02-19 (bright, arid)": [
        "--red", str(DATA / "l2a-cog-T29RKH/B04.tif"), "--green", str(DATA / "l2a-cog-T29RKH/B03.tif"),
        "--blue", str(DATA / "l2a-cog-T29RKH/B02.tif"), "--scl", str(DATA / "l2a-cog-T29RKH/SCL.tif")],
    "T33UUU, L1C, 2017-02-16 (winter, hazy)": [
        "--red", *[str(p) for p in sorted((DATA / "l1c-jp2-T33UUU").glob("*_B04.jp2"))],
        "--green", *[str(p) for p in sorted((DATA / "l1c-jp2-T33UUU").glob("*_B03.jp2"))],
        "--blue", *[str(p) for p in sorted((DATA / "l1c-jp2-T33UUU").glob("*_B02.jp2"))]],
}
STRETCHES = {
    "default (fixed, max 1.0)": [],
    "--max-reflectance 0.3": ["--max-reflectance", "0.3"],
    "--stretch percentile:2,98": ["--stretch", "percentile:2,98"],
    "--stretch percentile:0,99.5": ["--stretch", "percentile:0,99.5"],
    "... --stretch-bands per-band": ["--stretch", "percentile:2,98", "--stretch-bands", "per-band"],
}


def main() -> None:
    fig, axes = plt.subplots(len(SCENES), len(STRETCHES), figsize=(3.4 * len(STRETCHES), 3.2 * len(SCENES)))
    with tempfile.TemporaryDirectory() as tmp:
        for row, (scene, inputs) in enumerate(SCENES.items()):
            for col, (label, options) in enumerate(STRETCHES.items()):
                out = Path(tmp) / f"{row}-{col}.tif"
                subprocess.run([sys.executable, "-m", "mpi_s2", "compose", *inputs, *options, "-o", str(out), "-q"],
                               check=True)
                rgba = gdal.Open(str(out)).ReadAsArray()
                valid = rgba[3] > 0
                spread = float(rgba[:3][:, valid].std())
                ax = axes[row][col]
                ax.imshow(np.moveaxis(rgba, 0, -1))
                ax.set_title(f"{label}\nstd {spread:.0f} of 255", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    ax.set_ylabel(scene, fontsize=9)
    fig.tight_layout()
    fig.savefig("docs/images/stretch-real-clips.png", dpi=80)


if __name__ == "__main__":
    main()
