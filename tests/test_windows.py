import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpi_s2.errors import WindowError
from mpi_s2.windows import Window, aligned_length, choose_window_size, plan_windows


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 3000), height=st.integers(1, 3000),
       block_x=st.integers(1, 1100), block_y=st.integers(1, 1100))
def test_plan_covers_raster_exactly_once_and_is_block_aligned(width, height, block_x, block_y):
    window_size = choose_window_size((block_x, block_y), (width, height))
    windows = plan_windows((width, height), window_size)
    coverage = np.zeros((height, width), dtype=np.uint8)
    for w in windows:
        coverage[w.toslices()] += 1
        # every window starts on a block boundary (or the block spans the whole axis)
        assert block_x >= width or w.col_off % block_x == 0
        assert block_y >= height or w.row_off % block_y == 0
        # nothing is padded past the raster
        assert w.col_off + w.width <= width and w.row_off + w.height <= height
    assert (coverage == 1).all()


@settings(max_examples=100, deadline=None)
@given(width=st.integers(1, 2000), height=st.integers(1, 2000), edge=st.integers(16, 700))
def test_override_window_covers_exactly_once(width, height, edge):
    windows = plan_windows((width, height), choose_window_size((256, 256), (width, height), edge))
    assert sum(w.size for w in windows) == width * height
    assert len({(w.col_off, w.row_off) for w in windows}) == len(windows)


@pytest.mark.parametrize("block,expected", [(1024, 1024), (512, 1024), (256, 1024), (640, 1280),
                                            (600, 1200), (1100, 1100), (300, 900), (2048, 2048), (1, 1024)])
def test_aligned_length_is_multiple_closest_to_1024(block, expected):
    assert aligned_length(block) == expected


def test_striped_source_is_cut_at_the_target():
    # a strip of one row spanning the full width: windows of 1024 columns, 1024 rows
    assert choose_window_size((10980, 1), (10980, 10980)) == (1024, 1024)


def test_window_capped_at_raster_size():
    assert choose_window_size((512, 512), (700, 300)) == (700, 300)


def test_edge_windows_are_smaller():
    windows = plan_windows((1300, 1100), (1024, 1024))
    assert [(w.width, w.height) for w in windows] == [(1024, 1024), (276, 1024), (1024, 76), (276, 76)]


@pytest.mark.parametrize("args", [(-1, 0, 1, 1), (0, 0, 0, 5), (0, 0, 5, -2)])
def test_invalid_window_raises(args):
    with pytest.raises(WindowError):
        Window(*args)


def test_invalid_override_raises():
    with pytest.raises(WindowError, match="--window"):
        choose_window_size((256, 256), (100, 100), 0)
