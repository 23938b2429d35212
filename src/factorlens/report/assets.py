"""What a page is made of besides its markup: the figures it needs and the inputs it shows.

* :class:`Assets` — PNGs and charts collected while the view model is built (name → content);
  :mod:`factorlens.report.files` writes them under ``figures/``;
* :class:`Inputs` — the checked test inputs, their labels and predicted classes;
* colour-bar descriptions, and the plain-text formatting of names and values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from factorlens.report import explorer as X
from factorlens.report import pixels as P


@dataclass
class Assets:
    """What the view needs written besides the page: PNGs and charts under ``figures/``."""

    pngs: dict[str, bytes] = field(default_factory=dict)
    charts: dict[str, dict] = field(default_factory=dict)

    def image(self, name: str | None, native: np.ndarray, shown: np.ndarray, alt: str) -> dict:
        """Return an image for the page: the small ``native`` pixels, shown at ``shown``'s size.

        The ``native`` pixels are embedded and displayed at the size of ``shown``
        (pixelated); ``shown`` also goes to ``figures/name`` when named.
        """
        small = native if native.shape[0] <= shown.shape[0] else shown
        if name is not None:
            self.pngs[name] = P.png(shown)
        h, w = shown.shape[:2]
        return {"src": P.uri(P.png(small)), "w": int(w), "h": int(h), "alt": alt}

    def chart(self, name: str | None, chart: dict) -> dict:
        """Register ``chart`` for ``figures/name`` (SVG) and return it for the page."""
        if name is not None:
            self.charts[name] = chart
        return chart


@dataclass
class Inputs:
    """The test inputs as the page shows them."""

    images: Any  # (N, *sample_shape), display shape: numpy, or rows on disk (factorlens.rows)
    kind: str  # pixels.sample_kind of the sample shape
    labels: np.ndarray | None
    class_names: list[str] | None
    predictions: np.ndarray | None
    top_k: int

    def label(self, i: int) -> str | None:
        """Return input ``i``'s label as text (None without labels)."""
        return None if self.labels is None else X.label_text(self.labels[i], self.class_names)

    def predicted(self, i: int) -> str | None:
        """Return input ``i``'s predicted class as text (None without predictions)."""
        if self.predictions is None:
            return None
        return X.label_text(self.predictions[i], self.class_names)


def scale(kind: str, lo: str, hi: str, mid: str | None = None) -> dict:
    """Describe a colour bar: ``kind`` is a pixels.scale_stops name, the texts its ends.

    ``mid`` is the text of its middle, when it has one.
    """
    return {"kind": kind, "lo": lo, "hi": hi, "mid": mid}


def pattern_scale(
    kind: str, vmax: float, signed: bool, channels: int = 0
) -> tuple[dict | None, str]:
    """Return the colour bar (None for colour images) and the note of an input pattern.

    ``channels`` is C of a C != 3 channel input, which is tiled or averaged.
    """
    if kind == "rgb":
        if signed:
            return None, f"shown as colour: mid-grey = 0, each channel ±{vmax:.3g}"
        return None, f"shown as colour: black = 0, each channel 0 … {vmax:.3g}"
    note = "red > 0 > blue"
    if kind == "channels" and channels:
        if channels <= P.MAX_TILED_CHANNELS:
            note += f"; one tile per channel (C = {channels})"
        else:
            note += f"; mean of the {channels} channels"
    return scale("diverging", f"−{vmax:.3g}", f"+{vmax:.3g}", "0"), note


def safe_name(name: str, limit: int = 40) -> str:
    """Return a file-name-safe version of a block name (letters, digits, ``._-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "block"
    return s[:limit]


def format_value(value: Any, limit: int = 400) -> str:
    """Return a meta/option value as one line of plain text, at most ``limit`` characters."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        s = str(value)
    elif isinstance(value, float):
        s = f"{value:.4g}"
    elif isinstance(value, dict):
        s = ", ".join(f"{k}: {format_value(v, limit)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        s = ", ".join(format_value(v, limit) for v in value)
    else:
        s = str(value)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"
