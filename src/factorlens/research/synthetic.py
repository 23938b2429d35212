"""Procedural image data sets, made in code from a seed (nothing is downloaded or shipped).

Two domains where the shortcuts that work on digits break:

* ``glyphs`` — grayscale 1×28×28: ten letters drawn from four confusable pairs and a pair of
  open shapes (``C G O Q E F P R U V``), each rendered in one of 21 fonts that matplotlib ships
  (DejaVu, STIX, Computer Modern), rotated, sheared, thickened or thinned, at a random
  contrast over a noisy gradient with line clutter. Harder than MNIST: pixel-space
  neighbours share their class far less often.
* ``shapes`` — colour 3×32×32: ten filled shapes (disc, ring, triangle, square, pentagon,
  hexagon, star, plus, crescent, half-disc) at a random size, position and rotation, in a
  random colour over a random striped, noisy or plain background with distractor strokes.
  Colours are drawn independently of the class, so images that look alike in pixel space
  (same colours) rarely share their class.

:func:`synthetic_split` gives a training set drawn from the zoo's seed and a fixed test set
(the same for every seed, so zoos of different seeds are scored on the same inputs).
Generation is deterministic: the same seed gives the same images bit for bit.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from factorlens.errors import FactorlensError

if TYPE_CHECKING:
    from factorlens.data import ImageData

__all__ = ["DOMAINS", "N_TEST", "N_TRAIN", "make_images", "synthetic_retest", "synthetic_split"]

#: domain name -> (channels, height, width, class names)
DOMAINS: dict[str, tuple[int, int, int, list[str]]] = {
    "glyphs": (1, 28, 28, list("CGOQEFPRUV")),
    "shapes": (
        3,
        32,
        32,
        [
            "disc",
            "ring",
            "triangle",
            "square",
            "pentagon",
            "hexagon",
            "star",
            "plus",
            "crescent",
            "half-disc",
        ],
    ),
}
N_TRAIN = 10_000
N_TEST = 2_000
_TEST_STREAM = 7_919  # the fixed seed of every domain's test set (and, as stream 3, the retest)
_SUPER = 2  # render at twice the size, then average 2×2 blocks (anti-aliasing)

_FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
)


def _check_domain(name: str) -> tuple[int, int, int, list[str]]:
    try:
        return DOMAINS[name]
    except KeyError:
        raise FactorlensError(
            f"unknown synthetic domain {name!r}; use one of {', '.join(DOMAINS)}"
        ) from None


@functools.cache
def _fonts(size: int) -> tuple:
    """Return the glyph fonts at one pixel size (matplotlib's bundled TTF files)."""
    import matplotlib
    from PIL import ImageFont

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found = [root / f for f in _FONT_FILES if (root / f).is_file()]
    if not found:
        raise FactorlensError(
            f"matplotlib's fonts are missing from {root}; reinstall matplotlib to make glyphs"
        )
    return tuple(ImageFont.truetype(str(p), size) for p in found)


def _downsample(canvas: np.ndarray) -> np.ndarray:
    """Average ``_SUPER``×``_SUPER`` blocks of ``(H·s, W·s[, C])`` -> ``(H, W[, C])``."""
    h, w = canvas.shape[0] // _SUPER, canvas.shape[1] // _SUPER
    return canvas.reshape(h, _SUPER, w, _SUPER, *canvas.shape[2:]).mean(axis=(1, 3))


def _affine(rng: np.random.Generator, size: int, max_angle: float, max_shear: float) -> tuple:
    """PIL inverse-affine coefficients: rotation, shear and scale about the canvas centre."""
    angle = math.radians(rng.uniform(-max_angle, max_angle))
    shear = rng.uniform(-max_shear, max_shear)
    scale = rng.uniform(0.85, 1.15)
    c, s = math.cos(angle) / scale, math.sin(angle) / scale
    a, b, d, e = c, s + shear * c, -s, c - shear * s
    half = size / 2
    return (a, b, half - a * half - b * half, d, e, half - d * half - e * half)


def _glyph(rng: np.random.Generator, label: int, chars: list[str]) -> np.ndarray:
    """One 28×28 grayscale glyph in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFilter

    side = 28 * _SUPER
    fonts = _fonts(int(rng.integers(30, 44)))
    font = fonts[int(rng.integers(len(fonts)))]
    img = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(img)
    dx, dy = rng.uniform(-7, 7, size=2)
    draw.text((side / 2 + dx, side / 2 + dy), chars[label], fill=255, font=font, anchor="mm")
    img = img.transform(
        img.size, Image.Transform.AFFINE, _affine(rng, side, 25, 0.3), Image.Resampling.BILINEAR
    )
    stroke = rng.random()
    if stroke < 0.3:
        img = img.filter(ImageFilter.MaxFilter(5))
    elif stroke < 0.5:
        img = img.filter(ImageFilter.MinFilter(3))
    glyph = _downsample(np.asarray(img, dtype=np.float32) / 255.0)
    # clutter: two to four thin strokes
    clutter = Image.new("L", (side, side), 0)
    cdraw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0, x1, y1 = rng.uniform(0, side, size=4)
        cdraw.line((x0, y0, x1, y1), fill=int(rng.integers(80, 200)), width=int(rng.integers(2, 5)))
    lines = _downsample(np.asarray(clutter, dtype=np.float32) / 255.0)
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    background = rng.uniform(0.0, 0.3) + gx * xx + gy * yy
    contrast = rng.uniform(0.45, 1.0)
    noise = rng.normal(0.0, rng.uniform(0.03, 0.12), size=(28, 28))
    out = np.maximum(background + noise, lines * rng.uniform(0.3, 0.8))
    out = out * (1 - glyph) + contrast * glyph
    return np.clip(out, 0.0, 1.0)


def _polygon(n: int, radius: float, cx: float, cy: float, turn: float) -> list[tuple]:
    return [
        (
            cx + radius * math.cos(turn + 2 * math.pi * i / n),
            cy + radius * math.sin(turn + 2 * math.pi * i / n),
        )
        for i in range(n)
    ]


def _draw_shape(draw, label: int, cx: float, cy: float, r: float, turn: float, fill, bg) -> None:
    """Draw class ``label`` of ``shapes`` centred at (cx, cy) with outer radius r.

    In colour ``fill`` (``bg``: the background colour, cut out of the crescent).
    """
    box = (cx - r, cy - r, cx + r, cy + r)
    if label == 0:  # disc
        draw.ellipse(box, fill=fill)
    elif label == 1:  # ring
        draw.ellipse(box, outline=fill, width=max(2, int(r * 0.35)))
    elif label in (2, 3, 4, 5):  # triangle, square, pentagon, hexagon
        draw.polygon(_polygon(label + 1, r, cx, cy, turn), fill=fill)
    elif label == 6:  # five-pointed star
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.42
            ang = turn + math.pi * i / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        draw.polygon(pts, fill=fill)
    elif label == 7:  # plus: two bars
        w = r * 0.32
        for ang in (turn, turn + math.pi / 2):
            c, s = math.cos(ang), math.sin(ang)
            pts = [
                (cx + u * c - v * s, cy + u * s + v * c)
                for u, v in ((-r, -w), (r, -w), (r, w), (-r, w))
            ]
            draw.polygon(pts, fill=fill)
    elif label == 8:  # crescent: a disc with an offset disc cut out
        draw.ellipse(box, fill=fill)
        ox, oy = cx + 0.5 * r * math.cos(turn), cy + 0.5 * r * math.sin(turn)
        draw.ellipse((ox - 0.8 * r, oy - 0.8 * r, ox + 0.8 * r, oy + 0.8 * r), fill=bg)
    else:  # half-disc
        start = math.degrees(turn)
        draw.pieslice(box, start, start + 180, fill=fill)


def _shape(rng: np.random.Generator, label: int) -> np.ndarray:
    """One 3×32×32 colour shape in [0, 1]."""
    from PIL import Image, ImageDraw

    side = 32 * _SUPER
    bg = rng.uniform(0, 1, size=3)
    fg = rng.uniform(0, 1, size=3)
    while np.abs(fg - bg).sum() < 0.6:  # the shape must stand out from the background
        fg = rng.uniform(0, 1, size=3)
    img = Image.new("RGB", (side, side), tuple(int(255 * c) for c in bg))
    draw = ImageDraw.Draw(img)
    texture = rng.random()
    if texture < 0.4:  # stripes in a second colour
        col = tuple(int(255 * c) for c in rng.uniform(0, 1, size=3))
        period, width = rng.uniform(8, 20), rng.uniform(2, 6)
        ang = rng.uniform(0, math.pi)
        c, s = math.cos(ang), math.sin(ang)
        for k in range(-8, 9):
            off = k * period
            p0 = (side / 2 + off * c - 2 * side * s, side / 2 + off * s + 2 * side * c)
            p1 = (side / 2 + off * c + 2 * side * s, side / 2 + off * s - 2 * side * c)
            draw.line((p0, p1), fill=col, width=int(width))
    for _ in range(int(rng.integers(2, 5))):  # distractor strokes and dots
        col = tuple(int(255 * c) for c in rng.uniform(0, 1, size=3))
        x0, y0 = rng.uniform(0, side, size=2)
        if rng.random() < 0.5:
            x1, y1 = x0 + rng.uniform(-20, 20), y0 + rng.uniform(-20, 20)
            draw.line((x0, y0, x1, y1), fill=col, width=int(rng.integers(2, 6)))
        else:
            rr = rng.uniform(2, 5)
            draw.ellipse((x0 - rr, y0 - rr, x0 + rr, y0 + rr), fill=col)
    r = rng.uniform(12, 26)
    cx, cy = rng.uniform(r - 4, side - r + 4, size=2)
    turn = rng.uniform(0, 2 * math.pi)
    fill = tuple(int(255 * c) for c in fg)
    _draw_shape(draw, label, cx, cy, r, turn, fill, tuple(int(255 * c) for c in bg))
    arr = _downsample(np.asarray(img, dtype=np.float32) / 255.0)
    arr = arr + rng.normal(0.0, rng.uniform(0.0, 0.06), size=arr.shape)
    return np.clip(arr, 0.0, 1.0).transpose(2, 0, 1)


def make_images(domain: str, n: int, seed: int | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Make ``n`` images of ``domain`` from ``seed``.

    Parameters
    ----------
    domain : str
        ``"glyphs"`` or ``"shapes"``.
    n : int
        The number of images.
    seed : int or tuple of int
        Seeds the images.

    Returns
    -------
    images : numpy.ndarray
        float32 ``(n, C, H, W)`` in [0, 1].
    labels : numpy.ndarray
        int64 ``(n,)``, balanced: class ``i % 10`` in a seeded random order.
    """
    channels, height, width, names = _check_domain(domain)
    if n < 0:
        raise FactorlensError(f"the number of images must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(names)).astype(np.int64)
    images = np.empty((n, channels, height, width), dtype=np.float32)
    for i, label in enumerate(labels):
        if domain == "glyphs":
            images[i, 0] = _glyph(rng, int(label), names)
        else:
            images[i] = _shape(rng, int(label))
    return images, labels


@functools.lru_cache(maxsize=8)
def _cached(domain: str, n: int, seed: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = make_images(domain, n, seed)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def synthetic_split(
    domain: str, seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, y_train, x_test, y_test)`` of ``domain``.

    A training set drawn from ``seed`` and the domain's fixed test set (independent of
    ``seed``). Arrays are read-only and cached in the process.
    """
    _check_domain(domain)
    x_train, y_train = _cached(domain, int(n_train), (int(seed), 1))
    x_test, y_test = _cached(domain, int(n_test), (_TEST_STREAM, 2))
    return x_train, y_train, x_test, y_test


def synthetic_retest(domain: str, n_test: int = N_TEST) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x_retest, y_retest)``: a second fixed test set of ``domain``, read-only.

    Drawn independently of the test set and of every training seed, for measuring how much of
    an accuracy ranking is sampling noise of the ``n_test`` test images (test–retest).
    """
    _check_domain(domain)
    return _cached(domain, int(n_test), (_TEST_STREAM, 3))


def test_set(domain: str) -> ImageData:
    """Return the fixed test set of ``domain`` as :class:`~factorlens.data.ImageData`."""
    from factorlens.data import from_arrays

    _x, _y, images, labels = synthetic_split(domain)
    c, h, w, names = DOMAINS[domain]
    return from_arrays(
        np.array(images),
        np.array(labels),
        list(names),
        f"{domain} (factorlens.research.synthetic), the fixed {N_TEST} test images "
        f"({c}×{h}×{w}, 10 classes)",
        domain,
    )


def glyphs_test_set() -> ImageData:
    """Return the ``glyphs`` test set (the data SPEC ``glyphs``, registered as an entry point)."""
    return test_set("glyphs")


def shapes_test_set() -> ImageData:
    """Return the ``shapes`` test set (the data SPEC ``shapes``, registered as an entry point)."""
    return test_set("shapes")
