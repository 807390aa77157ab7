"""Small PNG charts with numpy + zlib: line charts and histograms for training reports.

No plotting dependency: a canvas is a uint8 RGB array, text uses a built-in 5x7 bitmap font
(upper-case letters, digits, a few symbols; lower case is drawn upper case), and ``write_png``
encodes the canvas as a standard 8-bit RGB PNG (zlib-compressed IDAT, CRC-checked chunks).
Files are written to a temporary name and renamed, so a half-written PNG never appears.
"""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

# 5x7 glyphs, one string per row ('#' = ink)
_FONT_ROWS = {
    "0": ".###.#...##..###.#.###..##...#.###.", "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####", "3": "#####...#...#.....#.....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.", "5": "######....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.", "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.", "9": ".###.#...##...#.####....#...#..##..",
    "A": ".###.#...##...#######...##...##...#", "B": "####.#...##...#####.#...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.", "D": "###..#..#.#...##...##...##..#.###..",
    "E": "######....#....####.#....#....#####", "F": "######....#....####.#....#....#....",
    "G": ".###.#...##....#.####...##...#.####", "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.", "J": "..###...#....#....#....##..#..##...",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#", "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##.#.##...##...##...#", "N": "#...##...###..##.#.##..###...##...#",
    "O": ".###.#...##...##...##...##...#.###.", "P": "####.#...##...#####.#....#....#....",
    "Q": ".###.#...##...##...##.#.##..#..##.#", "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".#####....#.....###.....#....#####.", "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.", "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.##.#..#.#..", "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..", "Z": "#####....#...#...#...#...#....#####",
    ".": "..............................##...", "-": "................###................",
    "_": "..............................#####", "/": "....#....#...#...#...#...#....#....",
    ":": ".......##....##.......##....##.....", "=": "..........#####.....#####..........",
    "(": "...#...#...#....#....#.....#.....#.", ")": ".#.....#.....#....#....#...#...#...",
    "%": "##...##..#...#...#...#...#..##...##", "+": ".......#....#..#####..#....#.......",
    ",": ".....................##....#...#...", " ": "." * 35, "?": ".###.#...#....#...#...#.........#..",
}
_FONT = {c: np.array([[ch == "#" for ch in rows[r * 5:(r + 1) * 5]] for r in range(7)], dtype=bool)
         for c, rows in _FONT_ROWS.items()}

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Encode an [H, W, 3] uint8 array as PNG (atomic write)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"write_png: expected an [H, W, 3] uint8 array, got {rgb.shape} {rgb.dtype}")
    h, w, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))  # filter type 0 per scanline
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)
    return path


class Canvas:
    def __init__(self, width: int = 640, height: int = 400):
        self.img = np.full((height, width, 3), 255, dtype=np.uint8)
        self.w, self.h = width, height

    def text(self, x: int, y: int, s: str, color=(0, 0, 0), scale: int = 1) -> None:
        for i, ch in enumerate(s.upper()):
            g = _FONT.get(ch, _FONT["?"])
            if scale > 1:
                g = g.repeat(scale, 0).repeat(scale, 1)
            x0 = x + i * 6 * scale
            ys, xs = np.nonzero(g)
            ys, xs = ys + y, xs + x0
            ok = (ys >= 0) & (ys < self.h) & (xs >= 0) & (xs < self.w)
            self.img[ys[ok], xs[ok]] = color

    def line(self, x0: float, y0: float, x1: float, y1: float, color=(0, 0, 0), width: int = 1) -> None:
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.linspace(x0, x1, n).round().astype(int)
        ys = np.linspace(y0, y1, n).round().astype(int)
        for d in range(width):
            yy, xx = ys + d - width // 2, xs
            ok = (yy >= 0) & (yy < self.h) & (xx >= 0) & (xx < self.w)
            self.img[yy[ok], xx[ok]] = color

    def rect(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        x0, x1 = sorted((max(0, x0), min(self.w, x1)))
        y0, y1 = sorted((max(0, y0), min(self.h, y1)))
        self.img[y0:y1, x0:x1] = color


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.1e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:.3g}"


class _Axes:
    """Plot area with ticks and labels; maps data to pixels."""

    L, R, T, B = 64, 16, 30, 40

    def __init__(self, c: Canvas, xlim, ylim, title: str, xlabel: str, ylabel: str, xtick=None):
        self.c = c
        (self.x0, self.x1), (self.y0, self.y1) = xlim, ylim
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y1 = self.y0 + (abs(self.y0) or 1) * 0.1
            self.y0 -= (abs(self.y0) or 1) * 0.1
        self.pw, self.ph = c.w - self.L - self.R, c.h - self.T - self.B
        c.text(self.L, 8, title, scale=2 if len(title) * 12 < self.pw else 1)
        c.line(self.L, self.T + self.ph, self.L + self.pw, self.T + self.ph)
        c.line(self.L, self.T, self.L, self.T + self.ph)
        for k in range(5):
            yv = self.y0 + (self.y1 - self.y0) * k / 4
            py = self.py(yv)
            c.line(self.L - 4, py, self.L, py)
            c.line(self.L + 1, py, self.L + self.pw, py, color=(230, 230, 230))
            label = _fmt(yv)
            c.text(self.L - 6 - 6 * len(label), int(py) - 3, label)
            xv = self.x0 + (self.x1 - self.x0) * k / 4
            px = self.px(xv)
            c.line(px, self.T + self.ph, px, self.T + self.ph + 4)
            label = _fmt(xtick(xv) if xtick else xv)
            c.text(int(px) - 3 * len(label), self.T + self.ph + 8, label)
        c.text(self.L + self.pw // 2 - 3 * len(xlabel), c.h - 12, xlabel)
        c.text(4, self.T - 12, ylabel)

    def px(self, x: float) -> float:
        return self.L + (x - self.x0) / (self.x1 - self.x0) * self.pw

    def py(self, y: float) -> float:
        return self.T + self.ph - (y - self.y0) / (self.y1 - self.y0) * self.ph


def line_chart(path: str | Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
               xlabel: str = "step", ylabel: str = "", ylim: tuple[float, float] | None = None,
               size: tuple[int, int] = (640, 400)) -> Path:
    """One polyline per named series (x, y); NaN/None points are skipped; legend top right."""
    clean = {}
    for name, (xs, ys) in series.items():
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(float(y))]
        if pts:
            clean[name] = pts
    if not clean:
        raise ValueError(f"line_chart {title!r}: no finite points to plot")
    allx = [p[0] for pts in clean.values() for p in pts]
    ally = [p[1] for pts in clean.values() for p in pts]
    c = Canvas(*size)
    ax = _Axes(c, (min(allx), max(allx)), ylim or (min(ally), max(ally)), title, xlabel, ylabel)
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            c.line(ax.px(xa), ax.py(ya), ax.px(xb), ax.py(yb), color=color, width=2)
        if len(pts) == 1:
            c.rect(int(ax.px(pts[0][0])) - 2, int(ax.py(pts[0][1])) - 2, int(ax.px(pts[0][0])) + 3,
                   int(ax.py(pts[0][1])) + 3, color)
        lx, ly = c.w - _Axes.R - 6 * len(name) - 24, _Axes.T + 6 + 12 * i
        c.rect(lx - 3, ly - 2, c.w - _Axes.R, ly + 10, (255, 255, 255))  # legend stays readable over lines
        c.rect(lx, ly + 2, lx + 14, ly + 5, color)
        c.text(lx + 18, ly, name, color=color)
    return write_png(path, c.img)


def histogram(path: str | Path, values: Sequence[float], title: str, bins: int = 20,
              range_: tuple[float, float] | None = None, xlabel: str = "value",
              size: tuple[int, int] = (640, 400)) -> Path:
    """Bar histogram of ``values`` (counts over equal-width bins)."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        raise ValueError(f"histogram {title!r}: no finite values")
    counts, edges = np.histogram(v, bins=bins, range=range_)
    return histogram_counts(path, counts.tolist(), edges.tolist(), title, xlabel, size)


def histogram_counts(path: str | Path, counts: Sequence[int], edges: Sequence[float], title: str,
                     xlabel: str = "value", size: tuple[int, int] = (640, 400)) -> Path:
    """Bars for pre-binned ``counts`` (len(edges) == len(counts) + 1; edges may be log-spaced:
    every bin is drawn equally wide and the axis is labeled with the edge values)."""
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError(f"histogram {title!r}: expected len(edges) == len(counts) + 1 > 1, "
                         f"got {len(edges)} edges for {len(counts)} counts")
    n = len(counts)

    def edge_at(x: float) -> float:
        k = min(max(int(round(x)), 0), n)
        return float(edges[k])

    c = Canvas(*size)
    ax = _Axes(c, (0.0, float(n)), (0.0, float(max(max(counts), 1))), title, xlabel, "count", xtick=edge_at)
    for k, cnt in enumerate(counts):
        if cnt:
            c.rect(int(ax.px(k)) + 1, int(ax.py(cnt)), int(ax.px(k + 1)), int(ax.py(0)), PALETTE[0])
    return write_png(path, c.img)
