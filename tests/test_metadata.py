"""Parsing real product metadata (copies in tests/data of ../shared/data/s2-real, or MPI_S2_REAL_DATA) and edge
cases."""

from pathlib import Path

import pytest

from mpi_s2.errors import InputError
from mpi_s2.inputs.metadata import BandRadiometry, parse_metadata

from conftest import REAL_DATA, require

DATA = Path(__file__).resolve().parent / "data"


def test_real_l2a_baseline_04_has_offset_minus_1000():
    md = parse_metadata((DATA / "MTD_MSIL2A.xml").read_bytes(), "MTD_MSIL2A.xml")
    assert md.level == "L2A" and md.baseline == "04.00"
    assert md.radiometry["B02"] == BandRadiometry(-1000.0, 10000.0)
    assert md.radiometry["B04"] == BandRadiometry(-1000.0, 10000.0)
    assert md.resolutions_with(("B04", "B03", "B02")) == [10, 20, 60]
    assert md.resolutions_with(("SCL",)) == [20, 60]
    assert md.band_path("B02", 10).endswith("IMG_DATA/R10m/T29UNU_20221005T115411_B02_10m.jp2")
    assert md.band_path("SCL", 20).endswith("IMG_DATA/R20m/T29UNU_20221005T115411_SCL_20m.jp2")
    assert md.nodata_dn == 0 and md.saturated_dn == 65535


def test_real_l1c_baseline_04_has_radio_add_offset():
    md = parse_metadata((DATA / "MTD_MSIL1C.xml").read_bytes(), "MTD_MSIL1C.xml")
    assert md.level == "L1C" and md.baseline == "04.00"
    assert md.radiometry["B03"] == BandRadiometry(-1000.0, 10000.0)
    assert md.resolutions_with(("B04", "B03", "B02")) == [10]
    assert md.band_path("B04", 10).endswith("IMG_DATA/T32UPC_20220615T101559_B04.jp2")
    assert "SCL" not in md.band_files


def test_shipped_copies_equal_the_shared_files():
    for name, folder in (("MTD_MSIL2A.xml", "l2a-metadata"), ("MTD_MSIL1C.xml", "l1c-metadata")):
        shared = REAL_DATA / folder / name
        require(shared.is_file(), f"the real product metadata {shared}",
                "put the project's shared/ beside the checkout, or set MPI_S2_REAL_DATA=DIR")
        assert (DATA / name).read_bytes() == shared.read_bytes()


def test_old_baseline_without_offset_elements_means_offset_zero():
    text = (DATA / "MTD_MSIL2A.xml").read_text()
    start, end = text.index("<BOA_ADD_OFFSET_VALUES_LIST>"), text.index("</BOA_ADD_OFFSET_VALUES_LIST>")
    old = text[:start] + text[end + len("</BOA_ADD_OFFSET_VALUES_LIST>"):]
    old = old.replace("<PROCESSING_BASELINE>04.00<", "<PROCESSING_BASELINE>02.14<")
    md = parse_metadata(old.encode(), "old.xml")
    assert md.baseline == "02.14" and md.radiometry["B04"] == BandRadiometry(0.0, 10000.0)


@pytest.mark.parametrize("xml,message", [(b"<a><b>", "not valid XML"),
                                         (b"<Other_Product/>", "not a Sentinel-2"),
                                         (b"<Level-2A_User_Product/>", "no band files")])
def test_bad_metadata(xml, message):
    with pytest.raises(InputError, match=message):
        parse_metadata(xml, "x.xml")
