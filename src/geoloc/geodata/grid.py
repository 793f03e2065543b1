"""The windows of a cut, counted and found one at a time, never listed.

The windows run in strips, top to bottom: a strip is a row of equal windows, left to right.
Each strip's window size is measured where the strip lies (`size_at`), so that a tile covers the
same ground at the top of a Web-Mercator raster as at its bottom. Within a strip windows start
every `stride` pixels, and the last is set flush with the raster's far edge; the last strip is
flush with its bottom. Only the windows that overlap the area asked for are kept, on the whole
raster's grid: a part gives the same windows as the whole.

A plan of a 10^6 x 10^6 raster is its strips (one per row of windows) and nothing per window.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

Area = tuple[float, float, float, float]  # (col0, row0, col1, row1) in pixels


class Strip(NamedTuple):
    """A row of windows: window k of the strip starts at column min((first + k) * stride, last_col)."""

    row_off: int
    width: int
    height: int
    stride: int
    first: int
    count: int
    last_col: int

    def col(self, k: int) -> int:
        return min((self.first + k) * self.stride, self.last_col)


def axis_range(length: int, size: int, stride: int, lo: float, hi: float) -> tuple[int, int]:
    """(first, count) of the windows along one axis that overlap [lo, hi).

    Window k starts at min(k * stride, length - size): every `stride`, the last flush with the
    far edge.
    """
    regular = (length - size) // stride + 1
    total = regular + (1 if (regular - 1) * stride + size < length else 0)
    windows = range(total)
    first = bisect.bisect_right(windows, lo, key=lambda k: min(k * stride, length - size) + size)
    end = bisect.bisect_left(windows, hi, key=lambda k: min(k * stride, length - size))
    return first, max(0, end - first)


@dataclass
class WindowGrid:
    strips: list[Strip]
    before: list[int]
    """How many windows come before each strip."""

    @property
    def count(self) -> int:
        return self.before[-1] + self.strips[-1].count if self.strips else 0

    def window(self, i: int) -> tuple[int, int, int, int]:
        """(col_off, row_off, width, height) of window number i."""
        s = bisect.bisect_right(self.before, i) - 1
        strip = self.strips[s]
        return strip.col(i - self.before[s]), strip.row_off, strip.width, strip.height

    def sizes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The smallest and the largest (width, height) of the windows."""
        by_area = sorted((strip.width * strip.height, strip.width, strip.height) for strip in self.strips)
        return by_area[0][1:], by_area[-1][1:]


def plan_grid(
    width: int,
    height: int,
    size_at: Callable[[float, float], tuple[int, int]],
    overlap: float,
    area: Area,
) -> WindowGrid:
    """The windows of a `width` x `height` raster that overlap `area`.

    `size_at(col, row)` is the window size (width, height) in pixels for a tile centred near
    pixel position (col, row), at most the raster's size.
    """
    col0, row0, col1, row1 = area
    centre_col = (col0 + col1) / 2
    strips: list[Strip] = []
    before: list[int] = []
    total = 0
    row = 0
    guess = size_at(centre_col, 0)[1]
    while True:
        w, h = size_at(centre_col, row + guess / 2)
        last = row + h >= height
        if last:
            row = height - h
        stride = max(1, round(w * (1 - overlap)))
        first, count = axis_range(width, w, stride, col0, col1)
        repeated = bool(strips) and strips[-1][:3] == (row, w, h)
        if row < row1 and row + h > row0 and count and not repeated:
            strips.append(Strip(row, w, h, stride, first, count, width - w))
            before.append(total)
            total += count
        if last or row >= row1:
            return WindowGrid(strips, before)
        row += max(1, round(h * (1 - overlap)))
        guess = h
