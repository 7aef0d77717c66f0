"""One colour table for every label PNG and overlay: the model's palette, then VOC's."""

from __future__ import annotations

import numpy as np

from contract.palette import IGNORE_COLOR, color_table, palette_bytes, voc_colormap


def test_voc_colormap_matches_the_devkit() -> None:
    assert voc_colormap(4) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert voc_colormap()[15] == (192, 128, 128)  # person


def test_the_table_is_the_palette_then_vocs_colours_and_the_ignore_colour() -> None:
    palette = [(1, 2, 3), (4, 5, 6)]
    table = color_table(palette)
    assert table.shape == (256, 3)
    assert table[:2].tolist() == [[1, 2, 3], [4, 5, 6]]
    # Ids past the palette keep VOC's colours, whichever half draws them.
    np.testing.assert_array_equal(table[2:255], np.asarray(voc_colormap()[2:255]))
    assert tuple(table[255]) == IGNORE_COLOR
    assert palette_bytes(palette)[:6] == [1, 2, 3, 4, 5, 6]
    assert len(palette_bytes(palette)) == 768


def test_a_palette_of_more_than_255_classes_owns_every_id() -> None:
    palette = [(i % 256, 7, 9) for i in range(300)]
    table = color_table(palette)
    assert table.shape == (300, 3)
    assert tuple(table[255]) == (255, 7, 9)
