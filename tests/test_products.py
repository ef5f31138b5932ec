"""Sentinel-2 products through ``compose``: synthetic SAFE (folder and zip) and the real files of ../shared."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from mpi_s2.tools.synth import ProductOptions, synthesize_product

from conftest import compose_args, error_lines, gdal_translate_reference, read_array, require, run_mpi_s2

MASKED = (3, 8, 9, 10)
REAL = Path(os.environ.get("MPI_S2_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "s2-real"))


def product_files(safe: str, res: int = 10) -> dict[str, str]:
    """Band files of a SAFE folder found by name (independently of mpi_s2's metadata parser)."""
    found = {}
    for key, code in (("red", "B04"), ("green", "B03"), ("blue", "B02"), ("scl", "SCL")):
        hits = glob.glob(f"{safe}/GRANULE/*/IMG_DATA/R{res}m/*_{code}_{res}m.jp2")
        if hits:
            found[key] = hits[0]
    return found


def scl_on_10m(scl_path: str, shape: tuple[int, int]) -> np.ndarray:
    """The 20 m SCL class of the pixel containing each 10 m pixel, by index arithmetic."""
    scl = read_array(scl_path)
    rows, cols = np.mgrid[0: shape[0], 0: shape[1]]
    return scl[rows // 2, cols // 2]


@pytest.fixture(scope="module")
def l2a(tmp_path_factory) -> str:
    """A synthetic L2A product (baseline 05.09, offset -1000), 1300 x 1100 at 10 m, JPEG 2000 tiled 512."""
    return synthesize_product(str(tmp_path_factory.mktemp("l2a")),
                              ProductOptions(size=1300, height=1100, jp2_block=512))


@pytest.fixture(scope="module")
def l2a_zip(l2a, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("zip") / (Path(l2a).stem + ".zip")
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(Path(l2a).rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(Path(l2a).parent))
    return str(out)


@pytest.fixture(scope="module")
def l2a_expected(l2a, tmp_path_factory):
    """Independent expectation: gdal_translate with the offset, and validity from DNs and the SCL."""
    files = product_files(l2a)
    ref = gdal_translate_reference(files, tmp_path_factory.mktemp("ref") / "ref.tif", offset=-1000.0)
    dn = np.stack([read_array(files[b]) for b in ("red", "green", "blue")])
    scl = scl_on_10m(product_files(l2a, 20)["scl"], dn.shape[1:])
    nodata = (dn == 0).any(axis=0)
    cloud = np.isin(scl, MASKED)
    return ref, dn, nodata, cloud


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_synthetic_l2a_product_with_cloud_mask(kind, l2a, l2a_zip, l2a_expected, tmp_path):
    ref, dn, nodata, cloud = l2a_expected
    product = l2a if kind == "folder" else l2a_zip
    out, report = tmp_path / "rgb.tif", tmp_path / "run.json"
    result = run_mpi_s2(["compose", product, "-o", str(out), "--cloud-mask", "--report", str(report), "-q"], ranks=3)
    assert result.returncode == 0, result.stderr
    rgba = read_array(out)
    valid = ~nodata & ~cloud
    assert nodata.any() and cloud.any() and (cloud & ~nodata).any()
    assert (rgba[:3][:, valid] == ref[:, valid]).all()
    assert (rgba[:3][:, ~valid] == 0).all()
    assert (rgba[3] == np.where(valid, 255, 0)).all()
    # dark valid pixels (DN <= 1000 -> reflectance <= 0) are black but opaque, never nodata
    dark = valid & (dn[0] <= 1000)
    assert dark.any() and (rgba[0][dark] == 0).all() and (rgba[3][dark] == 255).all()
    saturated = valid & (dn == 65535).all(axis=0)
    assert saturated.any() and (rgba[:3][:, saturated] == 255).all()
    ds = gdal.Open(str(out))
    first = gdal.Open(product_files(l2a)["red"])
    assert ds.GetGeoTransform() == first.GetGeoTransform() and ds.GetSpatialRef().IsSame(first.GetSpatialRef())
    inputs = json.loads(report.read_text())["inputs"]
    assert inputs[0]["radiometry"]["B04"] == {"offset": -1000.0, "quantification": 10000.0}
    assert "baseline 05.09" in inputs[0]["radiometry_note"] and "metadata" in inputs[0]["radiometry_note"]
    if kind == "zip":
        assert inputs[0]["files"]["red"].startswith("/vsizip/")


def test_without_cloud_mask_clouds_stay(l2a, l2a_expected, tmp_path):
    ref, _dn, nodata, cloud = l2a_expected
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(["compose", l2a, "-o", str(out), "-q", "--no-alpha"], ranks=2)
    assert result.returncode == 0, result.stderr
    rgb = read_array(out)
    assert (rgb[:, ~nodata] == np.maximum(ref[:, ~nodata], 1)).all()
    assert (rgb[:, cloud & ~nodata] >= 1).all() and (rgb[:, nodata] == 0).all()


def test_mask_classes_option(l2a, l2a_expected, tmp_path):
    _ref, _dn, nodata, _cloud = l2a_expected
    scl = scl_on_10m(product_files(l2a, 20)["scl"], nodata.shape)
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(["compose", l2a, "-o", str(out), "-q", "--cloud-mask", "--mask-classes", "6"], ranks=2)
    assert result.returncode == 0, result.stderr
    alpha = read_array(out)[3]
    assert (alpha == np.where(~nodata & (scl != 6), 255, 0)).all() and (scl == 6).any()


def test_resolution_20_m(l2a, tmp_path):
    files = product_files(l2a, 20)
    ref = gdal_translate_reference(files, tmp_path / "ref.tif", offset=-1000.0)
    out = tmp_path / "rgb20.tif"
    result = run_mpi_s2(["compose", l2a, "-o", str(out), "-q", "--resolution", "20"], ranks=2)
    assert result.returncode == 0, result.stderr
    rgba = read_array(out)
    assert rgba.shape == (4, 550, 650)
    valid = (np.stack([read_array(files[b]) for b in ("red", "green", "blue")]) != 0).all(axis=0)  # input DNs
    assert valid.any() and not valid.all()
    assert (rgba[3] == np.where(valid, 255, 0)).all()
    assert (rgba[:3][:, valid] == ref[:, valid]).all()
    assert gdal.Open(str(out)).GetGeoTransform()[1] == 20.0


# ------------------------------------------------------------------------------------------------ bad products

def _copy(l2a: str, tmp_path: Path) -> Path:
    dst = tmp_path / Path(l2a).name
    shutil.copytree(l2a, dst)
    return dst


def _bad_product(case: str, l2a: str, tmp_path: Path) -> tuple[list[str], str, str]:
    """Return (product arguments, text the error must contain, path the error must name)."""
    if case == "no metadata":
        safe = _copy(l2a, tmp_path)
        (safe / "MTD_MSIL2A.xml").unlink()
        return [str(safe)], "no MTD_MSIL2A.xml or MTD_MSIL1C.xml", str(safe)
    if case == "metadata names a missing band":
        safe = _copy(l2a, tmp_path)
        Path(product_files(str(safe))["green"]).unlink()
        return [str(safe)], "but the file is missing", "B03_10m.jp2"
    if case == "no 10 m bands":
        safe = _copy(l2a, tmp_path)
        md = safe / "MTD_MSIL2A.xml"
        md.write_text(re.sub(r"\s*<IMAGE_FILE>[^<]*_10m</IMAGE_FILE>", "", md.read_text()))
        return [str(safe)], "resolutions with all three: 20 m, 60 m", str(safe)
    if case == "corrupt JPEG 2000":
        safe = _copy(l2a, tmp_path)
        band = Path(product_files(str(safe))["blue"])
        with open(band, "r+b") as fh:
            fh.truncate(band.stat().st_size // 2)
        return [str(safe)], "failed", "B02_10m.jp2"
    if case == "mixed L1C and L2A":
        l1c = tmp_path / "S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549.SAFE"
        l1c.mkdir()
        shutil.copy(Path(__file__).parent / "data" / "MTD_MSIL1C.xml", l1c)
        return [l2a, str(l1c)], "cannot mix L1C and L2A", str(l1c)
    if case == "empty zip":
        empty = tmp_path / "empty.zip"
        zipfile.ZipFile(empty, "w").close()
        return [str(empty)], "the zip archive is empty", str(empty)
    if case == "metadata is not XML":
        safe = _copy(l2a, tmp_path)
        (safe / "MTD_MSIL2A.xml").write_text("this is not XML\n")
        return [str(safe)], "metadata is not valid XML", str(safe)
    if case == "truncated zip":
        zipped = tmp_path / (Path(l2a).stem + ".zip")
        shutil.make_archive(str(zipped.with_suffix("")), "zip", Path(l2a).parent, Path(l2a).name)
        data = zipped.read_bytes()
        zipped.write_bytes(data[: len(data) // 2])
        return [str(zipped)], "cannot be read as a zip archive", str(zipped)
    if case == "not a zip":
        fake = tmp_path / "S2B_MSIL2A_fake.zip"
        fake.write_text("not a zip archive")
        return [str(fake)], "cannot be read as a zip archive", str(fake)
    if case == "not a product":
        other = tmp_path / "notes.txt"
        other.write_text("hello")
        return [str(other)], "not a product", str(other)
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no metadata", "metadata names a missing band", "no 10 m bands",
                                  "corrupt JPEG 2000", "mixed L1C and L2A", "empty zip", "not a product",
                                  "metadata is not XML", "truncated zip", "not a zip"])
def test_bad_product_one_line_exit_2_no_output(case, l2a, tmp_path):
    products, message, named = _bad_product(case, l2a, tmp_path)
    out = tmp_path / "out.tif"
    result = run_mpi_s2(["compose", *products, "-o", str(out), "-q"], ranks=None, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and named in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / ".out.tif.partial").exists()


def test_corrupt_jpeg2000_on_a_worker_aborts_the_job(l2a, tmp_path):
    products, _message, named = _bad_product("corrupt JPEG 2000", l2a, tmp_path)
    out = tmp_path / "out.tif"
    result = run_mpi_s2(["compose", *products, "-o", str(out), "-q"], ranks=3, timeout=60)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and named in lines[0] and "(rank " in lines[0], result.stderr
    assert not out.exists() and not (tmp_path / ".out.tif.partial").exists()


# -------------------------------------------------------------------------------------- real Sentinel-2 files

@pytest.fixture(scope="module")
def real() -> Path:
    require(REAL.is_dir(), f"the real Sentinel-2 test data at {REAL}",
            "put the project's shared/ beside the checkout, or set MPI_S2_REAL_DATA=DIR")
    return REAL


def _bands(folder: Path, pattern: str) -> dict[str, str]:
    return {k: str(next(folder.glob(pattern.format(code)))) for k, code in
            (("red", "B04"), ("green", "B03"), ("blue", "B02"))}


@pytest.mark.parametrize("dataset,pattern", [("l1c-jp2-T33UUU", "*_{}.jp2"), ("l2a-cog-T29RKH", "{}.tif")])
def test_real_band_files_match_gdal_translate(real, dataset, pattern, tmp_path):
    bands = _bands(real / dataset, pattern)
    ref = gdal_translate_reference(bands, tmp_path / "ref.tif")
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(bands, out), ranks=3)
    assert result.returncode == 0, result.stderr
    rgba = read_array(out)
    dn = np.stack([read_array(bands[b]) for b in ("red", "green", "blue")])
    valid = (dn != 0).all(axis=0)
    assert valid.mean() > 0.5
    assert (rgba[:3][:, valid] == ref[:, valid]).all()
    assert (rgba[3] == np.where(valid, 255, 0)).all()
    assert gdal.Open(str(out)).GetGeoTransform() == gdal.Open(bands["red"]).GetGeoTransform()


def test_real_l2a_cog_cloud_mask_and_esa_tci(real, tmp_path):
    folder = real / "l2a-cog-T29RKH"
    bands = _bands(folder, "{}.tif")
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(compose_args(bands, out, "--scl", str(folder / "SCL.tif")), ranks=2)
    assert result.returncode == 0, result.stderr
    rgba = read_array(out)
    scl = scl_on_10m(str(folder / "SCL.tif"), rgba.shape[1:])
    dn = np.stack([read_array(bands[b]) for b in ("red", "green", "blue")])
    valid = (dn != 0).all(axis=0) & ~np.isin(scl, MASKED)
    assert (rgba[3] == np.where(valid, 255, 0)).all() and np.isin(scl, MASKED).any()
    # ESA's TCI is a linear stretch (about DN / 10, 255 from reflectance 0.255 up): the same transform with
    # --gamma 1 --max-reflectance 0.255 must agree closely, band by band (a swapped band would not).
    linear = tmp_path / "linear.tif"
    result = run_mpi_s2(compose_args(bands, linear, "--gamma", "1", "--max-reflectance", "0.255"), ranks=2)
    assert result.returncode == 0, result.stderr
    ours, tci = read_array(linear).astype(int), read_array(folder / "TCI.tif").astype(int)
    both = (ours[3] == 255) & (tci != 0).all(axis=0)
    for b in range(3):
        assert np.abs(ours[b][both] - tci[b][both]).mean() < 5


def _assemble_safe(real: Path, tmp_path: Path, metadata: str, level: str, bands: dict[str, Path]) -> Path:
    """A SAFE folder around real band files, at the paths the real metadata's IMAGE_FILE elements name."""
    text = (real / metadata).read_text()
    safe = tmp_path / f"REAL_{level}.SAFE"
    safe.mkdir()
    (safe / Path(metadata).name).write_text(text)
    for code, source in bands.items():
        rel = re.search(rf"<IMAGE_FILE>([^<]*_{code}(_(10|20)m)?)</IMAGE_FILE>", text).group(1)
        target = safe / (rel + ".jp2")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(source, target)
    return safe


def test_real_l1c_metadata_offset_applied(real, tmp_path):
    clip = real / "l1c-jp2-T33UUU"
    files = {code: next(clip.glob(f"*_{code}.jp2")) for code in ("B04", "B03", "B02")}
    safe = _assemble_safe(real, tmp_path, "l1c-metadata/MTD_MSIL1C.xml", "L1C", files)
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(["compose", str(safe), "-o", str(out), "-q"], ranks=3)
    assert result.returncode == 0, result.stderr
    bands = {"red": str(files["B04"]), "green": str(files["B03"]), "blue": str(files["B02"])}
    ref = gdal_translate_reference(bands, tmp_path / "ref.tif", offset=-1000.0)  # baseline 04.00
    rgba = read_array(out)
    valid = (np.stack([read_array(p) for p in bands.values()]) != 0).all(axis=0)  # from the input DNs
    assert valid.mean() > 0.5 and (rgba[3] == np.where(valid, 255, 0)).all()
    assert (rgba[:3][:, valid] == ref[:, valid]).all()


def test_real_l2a_metadata_offset_and_scl(real, tmp_path):
    cog = real / "l2a-cog-T29RKH"
    files = {"B04": cog / "B04.tif", "B03": cog / "B03.tif", "B02": cog / "B02.tif", "SCL": cog / "SCL.tif"}
    safe = _assemble_safe(real, tmp_path, "l2a-metadata/MTD_MSIL2A.xml", "L2A", files)
    out = tmp_path / "rgb.tif"
    result = run_mpi_s2(["compose", str(safe), "-o", str(out), "-q", "--cloud-mask"], ranks=3)
    assert result.returncode == 0, result.stderr
    bands = {"red": str(files["B04"]), "green": str(files["B03"]), "blue": str(files["B02"])}
    ref = gdal_translate_reference(bands, tmp_path / "ref.tif", offset=-1000.0)  # baseline 04.00
    rgba = read_array(out)
    scl = scl_on_10m(str(files["SCL"]), rgba.shape[1:])
    valid = ~np.isin(scl, MASKED) & (np.stack([read_array(p) for p in bands.values()]) != 0).all(axis=0)
    assert (rgba[3] == np.where(valid, 255, 0)).all()
    assert (rgba[:3][:, valid] == ref[:, valid]).all()
