"""View model of one component (its section of the page) and of one test input.

Pure functions of a result and the inputs: they return plain dicts for
``templates/component.html.j2`` and ``templates/inputs.html.j2`` and put every PNG they need
into an :class:`Assets` (name → bytes), which :mod:`factorlens.report.files` writes out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from factorlens.report import charts
from factorlens.report import explorer as X
from factorlens.report import pixels as P
from factorlens.report.assets import Assets, Inputs, pattern_scale, safe_name, scale
from factorlens.rows import mean_rows, take_rows

if TYPE_CHECKING:
    from factorlens.factorize.result import CMTFResult

#: how many channels / units / channel maps a layer card shows
TOP_CHANNELS = 8
TOP_UNITS = 12
CHANNEL_TILES = 4
#: the class make-up is counted over this many top inputs (at least top_k)
MAKEUP_INPUTS = 50
#: a block where a component's strength is below this share of its strongest block is "weak"
WEAK = 0.05


#: a conv layer's two maps: caption and what its symbols mean (the tooltip)
_SUM = "at each position, the sum over channels of the component's "
WHERE = ("where: Σ |channels|", _SUM + "absolute value: where it lives, whatever its sign")
SIGNED = ("signed: Σ channels", _SUM + "signed value: pale where channels cancel")


class ComponentView:
    """Builds every component's section; one per page (caches the thumbnails)."""

    def __init__(self, result: CMTFResult, inp: Inputs, assets: Assets) -> None:
        self.result, self.inp, self.assets = result, inp, assets
        self.flow = np.asarray(result.flow, dtype=np.float64)
        self.mean_all = mean_rows(inp.images)  # chunk by chunk for images on disk
        self.width = len(str(result.rank))
        self.thumbs: dict[int, dict] = {}
        self.shown: set[int] = set()  # test inputs with a thumbnail on the page
        self.layers = [self._layer(j) for j in range(1, len(result.block_names))]

    # ------------------------------------------------------------------ shared pieces
    def _layer(self, j: int) -> dict:
        res, inp = self.result, self.inp
        name = res.block_names[j]
        shape = tuple(int(s) for s in res.block_shapes[j][1:])
        view = X.block_view(shape)
        last = j == len(res.block_names) - 1
        names = None
        if view == "dense" and last and inp.class_names and shape[0] == len(inp.class_names):
            names = inp.class_names  # the last layer has one unit per class: name them
        vmax = 0.0  # one scale per layer for every component, so bars compare across them
        conv_views = []  # a conv layer's view of every component, kept for its cards
        for r in range(res.rank):
            m = np.nan_to_num(np.asarray(res.component_map(name, r), dtype=np.float64))
            if view == "conv":
                conv_views.append(X.conv_view(m.reshape(shape), TOP_CHANNELS))
                vmax = max(vmax, float(conv_views[-1].channel_share.max()))
            else:
                vmax = max(vmax, float(np.abs(m).max()) if m.size else 0.0)
        modules = (res.meta or {}).get("modules") or {}
        module = str(modules.get(name, "")) if isinstance(modules, dict) else ""
        return {
            "j": j,
            "name": name,
            "shape": shape,
            "view": view,
            "module": module,
            "vmax": vmax or 1.0,
            "unit_names": names,
            "conv_views": conv_views,
        }

    def thumb(self, i: int, loading: float | None = None) -> dict:
        """Test input ``i`` as a thumbnail (encoded once however often it is shown)."""
        if i not in self.thumbs:
            pix = P.data_to_pixels(take_rows(self.inp.images, [i])[0], self.inp.kind)
            pix = P.strip(pix) if self.inp.kind == "vector" else P.shrink(pix)
            s = 1 if self.inp.kind == "vector" else max(1, P.THUMB_DISPLAY // max(pix.shape[:2]))
            self.thumbs[i] = {
                "i": i,
                "src": P.uri(P.png(pix)),
                "w": pix.shape[1] * s,
                "h": pix.shape[0] * s,
                "pixels": pix,
                "label": self.inp.label(i),
            }
        self.shown.add(i)
        t = dict(self.thumbs[i])
        t.pop("pixels")
        t["loading"] = None if loading is None else f"{loading:.3g}"
        return t

    def name(self, r: int) -> str:
        """Return component ``r``'s name, ``C1`` for r = 0."""
        return f"C{r + 1}"

    def tag(self, r: int) -> str:
        """Return component ``r``'s number, zero-padded for figure file names."""
        return str(r + 1).zfill(self.width)

    # ------------------------------------------------------------------ the input pattern
    def pattern(self, r: int, *, small: bool = False) -> dict:
        """Component ``r``'s input pattern: image (or line chart for vectors) and colour bar."""
        res, inp = self.result, self.inp
        # annotated: numpy's reshape overloads read a shape of unknown length as ()
        x: np.ndarray = np.asarray(res.component_map(res.block_names[0], r)).reshape(
            inp.images.shape[1:]
        )
        pix, vmax, signed = P.pattern_to_pixels(x, inp.kind)
        cb, note = pattern_scale(inp.kind, vmax, signed, int(x.shape[0]) if x.ndim == 3 else 0)
        alt = f"{self.name(r)} input pattern"
        if small:
            shown = P.strip(pix, 96, 8) if inp.kind == "vector" else P.enlarge(pix, 40, 48)
            return self.assets.image(None, pix, shown, alt)
        name = f"component-{self.tag(r)}_pattern.png"
        shown = P.strip(pix) if inp.kind == "vector" else P.enlarge(pix)
        return {"img": self.assets.image(name, pix, shown, alt), "scale": cb, "note": note}

    def _mean_images(self, r: int, top: np.ndarray) -> list[dict]:
        """Return the mean of the top inputs, and that mean minus the mean of all inputs."""
        inp, tag, k = self.inp, self.tag(r), len(top)
        show = P.strip if inp.kind == "vector" else P.enlarge
        mean_top = take_rows(inp.images, top).astype(np.float64).mean(axis=0)
        mean = P.data_to_pixels(mean_top, inp.kind)
        diff, dmax, _ = P.pattern_to_pixels(mean_top - self.mean_all, inp.kind)
        parts = (
            ("mean", mean, f"mean of the top {k}", None),
            ("mean_diff", diff, f"minus the mean of all {self.result.n_samples}",
             pattern_scale(inp.kind, dmax, True)[0]),
        )  # fmt: skip
        return [
            {
                "img": self.assets.image(
                    f"component-{tag}_{suffix}.png", pix, show(pix), f"{self.name(r)} {caption}"
                ),
                "caption": caption,
                "scale": cbar,
            }
            for suffix, pix, caption, cbar in parts
        ]

    # ------------------------------------------------------------------ sections
    def dominant(self, r: int, n: int = 2) -> list[dict]:
        """Return the classes most common among component ``r``'s top inputs (labels only)."""
        inp = self.inp
        if inp.labels is None:
            return []
        n_sel = min(self.result.n_samples, max(inp.top_k, MAKEUP_INPUTS))
        loadings = np.asarray(self.result.A[:, r], dtype=np.float64)
        shares = X.class_makeup(inp.labels, P.top_indices(loadings, n_sel), inp.class_names)
        # "1 52%" read as two numbers where the classes are digits: name them as classes
        return [
            {
                "name": f"class {s.name}" if s.name.isdigit() else s.name,
                "share": f"{100 * s.share:.0f}%",
            }
            for s in shares[:n]
        ]

    def distinctive(self, r: int) -> str:
        """Return the block where component ``r`` stands out (:func:`explorer.distinctive_block`)."""
        return str(self.result.block_names[X.distinctive_block(self.flow, r)])

    def section(self, r: int) -> dict[str, Any]:
        """Everything ``component.html.j2`` shows for component ``r`` (0-based)."""
        res, inp, tag, cname = self.result, self.inp, self.tag(r), self.name(r)
        names = res.block_names
        row = self.flow[r]
        strongest = int(np.nanargmax(row)) if row.size and np.isfinite(row).any() else 0
        strength = charts.hbars(
            row,
            [str(n) for n in names],
            links=[f"#component-{r + 1}-block-{j}" for j in range(len(names))],
            tooltips=[f"{n}: {row[j]:.3f} (click to see this block)" for j, n in enumerate(names)],
            width=300,
            label_width=110,
            fmt="{:.3f}",
            title=f"{cname} strength in each block",
        )
        loadings = np.asarray(res.A[:, r], dtype=np.float64)
        top = P.top_indices(loadings, inp.top_k)
        bottom = P.bottom_indices(loadings, inp.top_k)
        counts, edges = X.loading_histogram(loadings)
        t_top = float(loadings[top[-1]]) if top.size else np.nan
        t_bot = float(loadings[bottom[-1]]) if bottom.size else np.nan
        hist = charts.histogram(
            counts,
            edges,
            title=f"{cname} histogram of the loadings of all inputs",
            marks=[
                (t_bot, f"bottom {len(bottom)}", P.NEG_COLOUR),
                (t_top, f"top {len(top)}", P.POS_COLOUR),
            ],
        )
        return {
            "id": r + 1,
            "index": r,
            "name": cname,
            "total": f"{np.nansum(row):.3f}",
            "strongest": str(names[strongest]),
            "strongest_value": f"{row[strongest]:.3f}",
            "distinctive": self.distinctive(r),
            "pattern": self.pattern(r),
            "means": self._mean_images(r, top),
            "input_strength": f"{row[0]:.3f}",
            "strength": self.assets.chart(f"component-{tag}_strength.svg", strength),
            "hist": self.assets.chart(f"component-{tag}_loadings.svg", hist),
            "makeup": self._makeup(r, loadings, tag),
            "top": [self.thumb(int(i), float(loadings[i])) for i in top],
            "bottom": [self.thumb(int(i), float(loadings[i])) for i in bottom],
            "layers": [self._card(r, lay) for lay in self.layers],
        }

    def _makeup(self, r: int, loadings: np.ndarray, tag: str) -> dict | None:
        inp = self.inp
        if inp.labels is None:
            return None
        n_sel = min(self.result.n_samples, max(inp.top_k, MAKEUP_INPUTS))
        shares = X.class_makeup(inp.labels, P.top_indices(loadings, n_sel), inp.class_names)[:10]
        if not shares:
            return None
        chart = charts.hbars(
            [s.share for s in shares],
            [s.name for s in shares],
            marks=[s.base for s in shares],
            tooltips=[
                f"{s.name}: {s.count} of the top {n_sel} ({100 * s.share:.0f}%); "
                f"{100 * s.base:.0f}% of all inputs"
                for s in shares
            ],
            fmt="{:.0%}",
            width=260,
            label_width=80,
            vmax=1.0,
            title=f"{self.name(r)} classes of the top {n_sel} inputs",
        )
        return {"n": n_sel, "chart": self.assets.chart(f"component-{tag}_classes.svg", chart)}

    def _card(self, r: int, lay: dict) -> dict[str, Any]:
        res, tag, cname = self.result, self.tag(r), self.name(r)
        j, name, shape = lay["j"], lay["name"], lay["shape"]
        row = self.flow[r]
        v = float(row[j])
        vmax = float(np.nanmax(row)) if row.size and np.isfinite(row).any() else 0.0
        base = f"component-{tag}_block-{j}-{safe_name(name)}"
        m = np.asarray(res.component_map(name, r)).reshape(shape)
        card: dict[str, Any] = {
            "id": f"component-{r + 1}-block-{j}",
            "j": j,
            "name": name,
            "view": lay["view"],
            "module": lay["module"],
            "shape": " × ".join(str(s) for s in shape),
            "strength": f"{v:.3f}",
            "pct": f"{max(0.0, min(100.0, 100 * v / vmax)) if vmax > 0 else 0:.0f}",
            "weak": bool(vmax > 0 and v < WEAK * vmax),
        }
        if lay["view"] == "conv":
            card.update(self._conv(cname, name, m, lay["conv_views"][r], lay, base))
        else:
            uv = X.unit_view(m, TOP_UNITS, lay["unit_names"])
            wide = lay["unit_names"] or lay["view"] == "units"
            chart = charts.hbars(
                uv.values,
                uv.labels,
                signed=True,
                vmax=lay["vmax"],
                width=280,
                label_width=96 if wide else 60,
                fmt="{:+.2f}",
                title=f"{cname} top units in {name}",
            )
            card["bars"] = self.assets.chart(f"{base}_units.svg", chart)
            card["n_top"], card["n_all"] = len(uv.indices), int(np.prod(shape))
            card["what"] = "entries" if lay["view"] == "units" else "units"
            card["named"] = bool(lay["unit_names"])
        return card

    def _conv(
        self, cname: str, name: str, m: np.ndarray, cv: X.ConvView, lay: dict, base: str
    ) -> dict:
        share = cv.channel_share
        maps = []
        for (what, hint), x, signed in ((WHERE, cv.abs_map, False), (SIGNED, cv.signed_map, True)):
            peak = float(np.max(np.abs(x))) if x.size else 0.0
            peak = peak if peak > 0 else 1.0
            pix = P.signed_to_pixels(x, peak) if signed else P.magnitude_to_pixels(x, peak)
            if pix.ndim == 2:  # (L, 3): a 1-D map
                shown = native = P.strip(pix[None, :, :], width=160, height=12)
            else:
                native, shown = pix, P.enlarge(pix, side=96, max_side=128)
            kind = "diverging" if signed else "magnitude"
            cb = scale(
                kind,
                f"−{peak:.3g}" if signed else "0",
                f"+{peak:.3g}" if signed else f"{peak:.3g}",
                "0" if signed else None,
            )
            suffix = "signed" if signed else "spatial"
            img = self.assets.image(None, native, shown, f"{cname} {what} in {name}")
            self.assets.pngs[f"{base}_{suffix}.png"] = P.png(shown)
            maps.append({"caption": what, "hint": hint, "img": img, "scale": cb})
        top = cv.top_channels
        labels = [f"ch {int(c)}" for c in top]
        chart = charts.hbars(
            share[top],
            labels,
            vmax=lay["vmax"],
            width=280,
            label_width=52,
            fmt="{:.0%}",
            tooltips=[
                f"channel {int(c)}: {100 * share[c]:.1f}% of the component "
                f"(‖channel‖ = {cv.channel_strength[c]:.3f})"
                for c in top
            ],
            title=f"{cname} top channels in {name}",
        )
        tiles = []
        if m.ndim == 3 and top.size:
            tvmax = float(np.max(np.abs(m[top[:CHANNEL_TILES]]))) or 1.0
            for c in top[:CHANNEL_TILES]:
                nat = P.signed_to_pixels(m[c], tvmax)
                img = self.assets.image(
                    None, nat, P.enlarge(nat, side=56, max_side=72), f"channel {int(c)} map"
                )
                tiles.append({"img": img, "caption": f"ch {int(c)} · {100 * share[c]:.0f}%"})
            tile_scale = scale("diverging", f"−{tvmax:.3g}", f"+{tvmax:.3g}", "0")
        else:
            tile_scale = None
        return {
            "maps": maps,
            "bars": self.assets.chart(f"{base}_channels.svg", chart),
            "tiles": tiles,
            "tile_scale": tile_scale,
            "n_top": len(top),
            "n_all": int(m.shape[0]),
        }

    # ------------------------------------------------------------------ per-input views
    def input_views(self) -> list[dict]:
        """Return one view per test input shown on the page.

        Each has the input, its classes and its loading on every component (with where it
        stands among all inputs).
        """
        res, inp = self.result, self.inp
        A = np.asarray(res.A, dtype=np.float64)
        n = A.shape[0]
        order = np.argsort(np.argsort(A, axis=0, kind="stable"), axis=0, kind="stable")
        out = []
        for i in sorted(self.shown):
            t = self.thumbs[i]
            pix = t["pixels"]
            big = pix if inp.kind == "vector" else P.enlarge(pix, side=160, max_side=192)
            pct = 100.0 * order[i] / max(n - 1, 1)
            chart = charts.hbars(
                A[i],
                [self.name(r) for r in range(res.rank)],
                signed=True,
                width=300,
                label_width=44,
                fmt="{:+.3f}",
                links=[f"#component-{r + 1}" for r in range(res.rank)],
                title=f"loadings of test input {i} on every component",
                tooltips=[
                    f"{self.name(r)}: loading {A[i, r]:+.4f}, above {pct[r]:.0f}% of the {n} inputs"
                    for r in range(res.rank)
                ],
            )
            out.append(
                {
                    "i": i,
                    "img": self.assets.image(None, pix, big, f"test input {i}"),
                    "label": inp.label(i),
                    "predicted": inp.predicted(i),
                    "chart": chart,
                    "top": [self.name(r) for r in np.argsort(-pct, kind="stable")[:3]],
                }
            )
        return out
