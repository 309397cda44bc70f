"""The run report: one self-contained HTML page (and a CSV) over the job records in
DIR_LOG (docs/report-stac.md).

It covers what FORCE's ``force-level2-report`` shows (spec 03 §3.7) — status counts
(Success / Too cloudy / Error / Coregistration failed), image counts and chip sums per
sensor × year and × month, cover summaries (data, cloud, snow, water, clear scene, clear
land), AOD of the successful images, runtime distribution — plus one row per image
(failures first, with the reason), the quicklooks (OVV) of the tiles each image wrote,
plots of cloud cover and AOD over time, time and peak memory per stage. It is built from
the latest record of every image, ``DIR_LOG/<image>.json`` (written by
:func:`l2ps.job.run_job`), never from the logs' text; missing keys (older records,
failures before the metadata was read) are shown empty.

No network and no plotting library: CSS is inline, plots are inline SVG, quicklooks are
``<img>`` links relative to the HTML file (lazy-loaded). Files are written atomically.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import statistics
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from . import __version__

REPORT_DIR = "report"
INDEX_NAME = "index.html"
STATUSES = ("Success", "Too cloudy", "Error", "Coregistration failed")
_SORT = {"Error": 0, "Coregistration failed": 1, "Too cloudy": 2, "Success": 3}
_STATUS_COLOURS = {"Success": "#2e7d32", "Too cloudy": "#9e9e9e", "Error": "#c62828",
                   "Coregistration failed": "#ef6c00"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")
_SENSOR_GUESS = {"LT04": "LND04", "LT05": "LND05", "LE07": "LND07", "LC08": "LND08",
                 "LO08": "LND08", "LC09": "LND09", "LO09": "LND09", "S2A": "SEN2A",
                 "S2B": "SEN2B", "S2C": "SEN2C", "S2D": "SEN2D"}
MAX_QUICKLOOKS = 16          # per row; the rest are counted


# ============================================================================ rows
@dataclass
class ImageRow:
    """One image as shown in the report (and the CSV)."""
    image_id: str
    status: str                        # one of STATUSES
    queue_status: str                  # DONE | FAIL
    reason: str = ""
    sensor: str = ""
    date: str = ""                     # YYYY-MM-DD (acquisition)
    product_id: str = ""
    data_cover: float | None = None    # % of the image
    cloud_cover: float | None = None   # % of valid pixels
    snow_cover: float | None = None
    water_cover: float | None = None
    aod: float | None = None           # AOD at 550 nm
    wvp: float | None = None           # water vapour (cm)
    tiles: int = 0                     # chips written (tiles)
    seconds: float | None = None
    peak_rss_mb: float | None = None
    version: str = ""
    end: str = ""
    log_line: str = ""
    this_run: bool = False
    quicklooks: list[Path] = field(default_factory=list)
    stages: dict = field(default_factory=dict)
    record: str = ""

    @property
    def clear_scene(self) -> float | None:
        """FORCE's clear-scene cover max(0, 100 − cc − sc) (spec 03 §3.7)."""
        if self.cloud_cover is None:
            return None
        return max(0.0, 100.0 - self.cloud_cover - (self.snow_cover or 0.0))

    @property
    def clear_land(self) -> float | None:
        """max(0, 100 − cc − sc − wc)."""
        if self.cloud_cover is None:
            return None
        return max(0.0, 100.0 - self.cloud_cover - (self.snow_cover or 0.0)
                   - (self.water_cover or 0.0))

    @property
    def year(self) -> str:
        return self.date[:4] if len(self.date) >= 4 else "unknown"

    @property
    def month(self) -> str:
        return self.date[:7] if len(self.date) >= 7 else "unknown"


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _first(rec: dict, *keys: str) -> Any:
    for k in keys:
        if rec.get(k) is not None:
            return rec[k]
    return None


def classify(rec: dict) -> str:
    """FORCE's status classes (spec 03 §3.7) from a job record."""
    reason = str(rec.get("reason") or "")
    low = reason.lower()
    if rec.get("status") != "DONE":
        if re.search(r"co-?reg", low) and "fail" in low:
            return "Coregistration failed"
        return "Error"
    if rec.get("skipped") or low.startswith("too cloudy") or "Skip." in str(rec.get("log_line") or ""):
        return "Too cloudy"
    return "Success"


def _guess_sensor(image_id: str) -> str:
    tok = image_id.split("_")[0]
    return _SENSOR_GUESS.get(tok, tok if tok else "unknown")


def _guess_date(image_id: str) -> str:
    for tok in image_id.split("_"):
        if re.match(r"^\d{8}", tok):
            t = tok[:8]
            return f"{t[:4]}-{t[4:6]}-{t[6:8]}"
    return ""


def row_from_record(rec: dict, path: Path | None = None) -> ImageRow:
    """An :class:`ImageRow` from a record dict (tolerant of missing keys)."""
    image_id = str(rec.get("image_id") or (Path(rec["image"]).name if rec.get("image") else
                                          (path.stem if path else "?")))
    aod = _num(_first(rec, "aod550", "aod"))
    log_line = str(rec.get("log_line") or "")
    if aod is None:
        m = re.search(r"AOD:\s*(-?[0-9]+(?:\.[0-9]+)?)", log_line)
        aod = _num(m.group(1)) if m else None
    date = str(rec.get("date") or "")
    if re.fullmatch(r"\d{8}", date):
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    ovv = []
    for f in rec.get("files") or []:
        p = f.get("path") if isinstance(f, dict) else f
        if isinstance(p, str) and p.endswith("_OVV.jpg"):
            ovv.append(Path(p))
    return ImageRow(
        image_id=image_id, status=classify(rec),
        queue_status="DONE" if rec.get("status") == "DONE" else "FAIL",
        reason=str(rec.get("reason") or ""),
        sensor=str(rec.get("sensor") or _guess_sensor(image_id)),
        date=date or _guess_date(image_id), product_id=str(rec.get("product_id") or ""),
        data_cover=_num(rec.get("data_cover")), cloud_cover=_num(rec.get("cloud_cover")),
        snow_cover=_num(rec.get("snow_cover")), water_cover=_num(rec.get("water_cover")),
        aod=aod, wvp=_num(_first(rec, "water_vapour", "water_vapor", "wvp")),
        tiles=len(rec.get("tiles") or []), seconds=_num(rec.get("seconds")),
        peak_rss_mb=_num(rec.get("peak_rss_mb")), version=str(rec.get("version") or ""),
        end=str(rec.get("end") or ""), log_line=log_line,
        quicklooks=ovv, stages=rec.get("stages") if isinstance(rec.get("stages"), dict) else {},
        record=str(path or ""))


def load_records(dir_log: str | os.PathLike) -> list[ImageRow]:
    """The latest record of every image (``DIR_LOG/<image>.json``), as rows sorted
    failures first (Error, Coregistration failed, Too cloudy, Success), then by date and
    id. An unreadable record becomes an Error row naming the file."""
    rows = []
    for p in sorted(Path(dir_log).glob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            rows.append(ImageRow(image_id=p.stem, status="Error", queue_status="FAIL",
                                 reason=f"unreadable record {p}: {e}", record=str(p),
                                 sensor=_guess_sensor(p.stem), date=_guess_date(p.stem)))
            continue
        if not isinstance(rec, dict) or "status" not in rec:
            continue                        # not a job record
        rows.append(row_from_record(rec, p))
    return sort_rows(rows)


def sort_rows(rows: Iterable[ImageRow]) -> list[ImageRow]:
    return sorted(rows, key=lambda r: (_SORT.get(r.status, 0), r.date, r.image_id))


# ============================================================================ statistics
def five_numbers(values: Iterable[float | None]) -> dict | None:
    """n, min, q1, median, q3, max, mean of the non-missing values (quartiles: the
    'inclusive' method, i.e. linear interpolation as R's default)."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    if len(v) == 1:
        q1 = med = q3 = v[0]
    else:
        q1, med, q3 = statistics.quantiles(v, n=4, method="inclusive")
    return {"n": len(v), "min": v[0], "q1": q1, "median": med, "q3": q3, "max": v[-1],
            "mean": sum(v) / len(v)}


def period_table(rows: list[ImageRow], period: str) -> tuple[list[str], list[str], dict]:
    """(periods, sensors, {(period, sensor): (images, chips)}) with period 'year' or
    'month' (spec 03 §3.7: L1 image counts and L2 chip sums)."""
    acc: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        k = (getattr(r, period), r.sensor)
        acc[k][0] += 1
        acc[k][1] += r.tiles
    periods = sorted({k[0] for k in acc})
    sensors = sorted({k[1] for k in acc})
    return periods, sensors, {k: tuple(v) for k, v in acc.items()}


# ============================================================================ SVG
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: float | None, nd: int = 1) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    out, t = [], start
    while t <= hi + 1e-9 * step:
        out.append(round(t, 10))
        t += step
    return out


class _Plot:
    """A small SVG canvas with a linear x/y frame."""

    def __init__(self, w=560, h=240, left=50, right=12, top=12, bottom=36):
        self.w, self.h, self.l, self.r, self.t, self.b = w, h, left, right, top, bottom
        self.parts: list[str] = []

    def frame(self, x0, x1, y0, y1, xlabel="", ylabel="", xticks=None, yticks=None):
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1)
        self.y0, self.y1 = y0, (y1 if y1 > y0 else y0 + 1)
        pw, ph = self.w - self.l - self.r, self.h - self.t - self.b
        self.parts.append(f'<rect x="{self.l}" y="{self.t}" width="{pw}" height="{ph}" '
                          f'fill="#fafafa" stroke="#999"/>')
        for v in (yticks if yticks is not None else _ticks(self.y0, self.y1)):
            y = self.Y(v)
            self.parts.append(f'<line x1="{self.l}" x2="{self.w - self.r}" y1="{y:.1f}" '
                              f'y2="{y:.1f}" stroke="#e0e0e0"/><text x="{self.l - 4}" '
                              f'y="{y + 4:.1f}" text-anchor="end">{_e(_short(v))}</text>')
        for v, lab in (xticks or [(v, _short(v)) for v in _ticks(self.x0, self.x1)]):
            x = self.X(v)
            self.parts.append(f'<text x="{x:.1f}" y="{self.h - self.b + 14}" '
                              f'text-anchor="middle">{_e(lab)}</text>')
        if xlabel:
            self.parts.append(f'<text x="{self.l + pw / 2:.0f}" y="{self.h - 4}" '
                              f'text-anchor="middle">{_e(xlabel)}</text>')
        if ylabel:
            self.parts.append(f'<text x="12" y="{self.t + ph / 2:.0f}" text-anchor="middle" '
                              f'transform="rotate(-90 12 {self.t + ph / 2:.0f})">{_e(ylabel)}</text>')

    def X(self, v):
        return self.l + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.l - self.r)

    def Y(self, v):
        return self.h - self.b - (v - self.y0) / (self.y1 - self.y0) * (self.h - self.t - self.b)

    def svg(self, title: str) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" role="img" font-size="11" '
                f'font-family="sans-serif"><title>{_e(title)}</title>{"".join(self.parts)}</svg>')


def _short(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.3g}"


def svg_status_bars(counts: dict[str, int]) -> str:
    p = _Plot(w=560, h=30 + 26 * len(STATUSES), left=150, bottom=24)
    vmax = max(list(counts.values()) + [1])
    p.frame(0, vmax, 0, len(STATUSES), yticks=[])
    for i, s in enumerate(STATUSES):
        n = counts.get(s, 0)
        y = p.t + 6 + i * 26
        p.parts.append(f'<text x="{p.l - 6}" y="{y + 13}" text-anchor="end">{_e(s)}</text>'
                       f'<rect x="{p.l}" y="{y}" width="{p.X(n) - p.l:.1f}" height="18" '
                       f'fill="{_STATUS_COLOURS[s]}"/><text x="{p.X(n) + 4:.1f}" y="{y + 13}">'
                       f'{n}</text>')
    return p.svg("images per status")


def svg_time_scatter(rows: list[ImageRow], attr: str, ylabel: str, ymax: float | None = None
                     ) -> str:
    """value over acquisition date, one colour per sensor."""
    pts = []
    for r in rows:
        v = getattr(r, attr)
        if v is None or not r.date:
            continue
        try:
            d = Date.fromisoformat(r.date[:10])
        except ValueError:
            continue
        pts.append((d.toordinal(), v, r.sensor, r.image_id))
    if not pts:
        return '<p class="note">no values</p>'
    sensors = sorted({s for *_, s, _ in pts})
    col = {s: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(sensors)}
    x0, x1 = min(p[0] for p in pts) - 1, max(p[0] for p in pts) + 1
    y1 = ymax if ymax is not None else max(p[1] for p in pts) * 1.1 or 1.0
    xt = [(t, Date.fromordinal(int(t)).isoformat()) for t in _ticks(x0, x1, 4)
          if x0 <= t <= x1]
    p = _Plot()
    p.frame(x0, x1, 0, y1, xlabel="acquisition date", ylabel=ylabel, xticks=xt)
    for x, y, s, ident in pts:
        p.parts.append(f'<circle cx="{p.X(x):.1f}" cy="{p.Y(y):.1f}" r="3" fill="{col[s]}" '
                       f'fill-opacity="0.75"><title>{_e(ident)}: {y:.3g}</title></circle>')
    for i, s in enumerate(sensors):
        p.parts.append(f'<rect x="{p.l + 8 + 70 * i}" y="{p.t + 6}" width="9" height="9" '
                       f'fill="{col[s]}"/><text x="{p.l + 20 + 70 * i}" y="{p.t + 14}">'
                       f'{_e(s)}</text>')
    return p.svg(f"{ylabel} over time")


def svg_histogram(values: list[float], xlabel: str, bins: int = 20) -> str:
    if not values:
        return '<p class="note">no values</p>'
    lo, hi = min(values), max(values)
    if hi <= lo:
        hi = lo + 1.0
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    p = _Plot()
    p.frame(lo, hi, 0, max(counts), xlabel=xlabel, ylabel="images")
    for i, c in enumerate(counts):
        if c:
            xa, xb = p.X(lo + i * width), p.X(lo + (i + 1) * width)
            p.parts.append(f'<rect x="{xa:.1f}" y="{p.Y(c):.1f}" width="{max(xb - xa - 1, 1):.1f}" '
                           f'height="{p.Y(0) - p.Y(c):.1f}" fill="#5c6bc0"/>')
    return p.svg(f"distribution of {xlabel}")


def svg_boxes(stats: dict[str, dict | None], ylabel: str, ymax: float = 100.0) -> str:
    names = [k for k, v in stats.items() if v]
    if not names:
        return '<p class="note">no values</p>'
    p = _Plot(w=max(300, 90 * len(names) + 60))
    p.frame(0, len(names), 0, ymax, ylabel=ylabel,
            xticks=[(i + 0.5, n) for i, n in enumerate(names)])
    for i, n in enumerate(names):
        s = stats[n]
        cx, hw = p.X(i + 0.5), 18
        p.parts.append(
            f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{p.Y(s["min"]):.1f}" y2="{p.Y(s["max"]):.1f}" '
            f'stroke="#555"/><rect x="{cx - hw:.1f}" y="{p.Y(s["q3"]):.1f}" width="{2 * hw}" '
            f'height="{max(p.Y(s["q1"]) - p.Y(s["q3"]), 1):.1f}" fill="#90caf9" stroke="#555"/>'
            f'<line x1="{cx - hw:.1f}" x2="{cx + hw:.1f}" y1="{p.Y(s["median"]):.1f}" '
            f'y2="{p.Y(s["median"]):.1f}" stroke="#000" stroke-width="2"/>'
            f'<circle cx="{cx:.1f}" cy="{p.Y(s["mean"]):.1f}" r="3" fill="#c62828">'
            f'<title>mean {s["mean"]:.2f}</title></circle>')
    return p.svg(f"{ylabel}: box plots")


def svg_stacked_bars(periods: list[str], sensors: list[str], table: dict, index: int,
                     ylabel: str) -> str:
    if not periods:
        return '<p class="note">no values</p>'
    col = {s: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(sensors)}
    totals = [sum(table.get((per, s), (0, 0))[index] for s in sensors) for per in periods]
    step = max(1, len(periods) // 12)
    p = _Plot(w=max(560, min(1100, 14 * len(periods) + 80)))
    p.frame(0, len(periods), 0, max(totals + [1]), ylabel=ylabel,
            xticks=[(i + 0.5, per) for i, per in enumerate(periods) if i % step == 0])
    bw = (p.X(1) - p.X(0)) * 0.8
    for i, per in enumerate(periods):
        base = 0
        for s in sensors:
            v = table.get((per, s), (0, 0))[index]
            if v:
                p.parts.append(f'<rect x="{p.X(i + 0.1):.1f}" y="{p.Y(base + v):.1f}" '
                               f'width="{bw:.1f}" height="{p.Y(base) - p.Y(base + v):.1f}" '
                               f'fill="{col[s]}"><title>{_e(per)} {_e(s)}: {v}</title></rect>')
                base += v
    for i, s in enumerate(sensors):
        p.parts.append(f'<rect x="{p.l + 8 + 70 * i}" y="{p.t + 6}" width="9" height="9" '
                       f'fill="{col[s]}"/><text x="{p.l + 20 + 70 * i}" y="{p.t + 14}">'
                       f'{_e(s)}</text>')
    return p.svg(ylabel)


# ============================================================================ HTML
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1500px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
th,td{border:1px solid #ddd;padding:2px 6px;vertical-align:top}
th{background:#f0f0f0;position:sticky;top:0}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.s-Error td,tr.s-Coregistration td{background:#ffebee}tr.s-Too td{background:#f5f5f5}
.badge{display:inline-block;padding:0 5px;border-radius:3px;color:#fff;font-size:11px}
.reason{max-width:40em;white-space:pre-wrap;word-break:break-word}
.ql img{height:48px;margin:1px;border:1px solid #ccc;image-rendering:pixelated}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;padding:.5em 1em;border-radius:4px}
.card b{font-size:1.4em}.note{color:#666;font-size:12px}.plots{display:flex;flex-wrap:wrap;gap:1.5em}
"""

_COLUMNS = ("status", "queue_status", "image_id", "sensor", "date", "data_cover",
            "cloud_cover", "snow_cover", "water_cover", "clear_scene", "clear_land", "aod",
            "wvp", "tiles", "seconds", "peak_rss_mb", "reason", "product_id", "version",
            "end", "this_run", "quicklooks", "log_line", "record")


def csv_text(rows: list[ImageRow]) -> str:
    """The per-image table as CSV (spec 03 §3.7: the per-image data frame)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_COLUMNS)
    for r in rows:
        out = []
        for c in _COLUMNS:
            v = getattr(r, c)
            if c == "quicklooks":
                v = ";".join(str(q) for q in v)
            elif isinstance(v, float):
                v = f"{v:.4g}" if c in ("aod", "wvp") else f"{v:.2f}"
            elif v is None:
                v = ""
            out.append(v)
        w.writerow(out)
    return buf.getvalue()


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _href(target: Path, base_dir: Path) -> str:
    try:
        rel = os.path.relpath(Path(target), base_dir)
    except ValueError:          # other drive (Windows)
        rel = str(target)
    return html.escape(rel.replace(os.sep, "/"), quote=True)


def _duration(s: float | None) -> str:
    if s is None:
        return ""
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _row_html(r: ImageRow, base_dir: Path) -> str:
    qls = [q for q in r.quicklooks if q.exists()]
    ql = "".join(f'<a href="{_href(q, base_dir)}"><img loading="lazy" alt="{_e(q.parent.name)}" '
                 f'title="{_e(q.parent.name)}" src="{_href(q, base_dir)}"></a>'
                 for q in qls[:MAX_QUICKLOOKS])
    if len(qls) > MAX_QUICKLOOKS:
        ql += f' +{len(qls) - MAX_QUICKLOOKS}'
    cls = "s-" + r.status.split()[0]
    badge = f'<span class="badge" style="background:{_STATUS_COLOURS[r.status]}">{_e(r.status)}</span>'
    cells = [badge + (" ★" if r.this_run else ""), _e(r.image_id), _e(r.sensor), _e(r.date)]
    nums = [_fmt(r.data_cover), _fmt(r.cloud_cover), _fmt(r.snow_cover), _fmt(r.water_cover),
            _fmt(r.aod, 3), _fmt(r.wvp, 2), str(r.tiles), _duration(r.seconds),
            _fmt(r.peak_rss_mb, 0)]
    return (f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells)
            + "".join(f'<td class="n">{v}</td>' for v in nums)
            + f'<td class="reason">{_e(r.reason)}</td><td class="ql">{ql}</td></tr>')


def _stats_table(stats: dict[str, dict | None], nd: int = 1) -> str:
    head = "<tr><th></th><th>n</th><th>min</th><th>q1</th><th>median</th><th>q3</th><th>max</th><th>mean</th></tr>"
    body = ""
    for name, s in stats.items():
        if not s:
            body += f"<tr><td>{_e(name)}</td><td class='n'>0</td>" + "<td></td>" * 6 + "</tr>"
            continue
        body += (f"<tr><td>{_e(name)}</td><td class='n'>{s['n']}</td>"
                 + "".join(f"<td class='n'>{s[k]:.{nd}f}</td>"
                           for k in ("min", "q1", "median", "q3", "max", "mean")) + "</tr>")
    return f"<table>{head}{body}</table>"


def _period_html(rows: list[ImageRow], period: str) -> str:
    periods, sensors, table = period_table(rows, period)
    if not periods:
        return '<p class="note">no images</p>'
    head = ("<tr><th rowspan=2>" + period + "</th>"
            + "".join(f"<th colspan=2>{_e(s)}</th>" for s in sensors)
            + "<th colspan=2>all</th></tr><tr>"
            + "<th>images</th><th>chips</th>" * (len(sensors) + 1) + "</tr>")
    body = ""
    for per in periods:
        ti = tc = 0
        body += f"<tr><td>{_e(per)}</td>"
        for s in sensors:
            i, c = table.get((per, s), (0, 0))
            ti, tc = ti + i, tc + c
            body += f"<td class='n'>{i or ''}</td><td class='n'>{c or ''}</td>"
        body += f"<td class='n'><b>{ti}</b></td><td class='n'><b>{tc}</b></td></tr>"
    return f"<table>{head}{body}</table>"


def _stage_table(rows: list[ImageRow]) -> str:
    acc: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        for name, st in r.stages.items():
            if isinstance(st, dict):
                acc[name].append(st)
    if not acc:
        return '<p class="note">no stage timings in the records</p>'
    body = ""
    for name, sts in acc.items():
        sec = [s.get("seconds") for s in sts if _num(s.get("seconds")) is not None]
        cpu = [s.get("cpu_seconds") for s in sts if _num(s.get("cpu_seconds")) is not None]
        mem = [s.get("peak_rss_mb") for s in sts if _num(s.get("peak_rss_mb")) is not None]
        body += (f"<tr><td>{_e(name)}</td><td class='n'>{len(sts)}</td>"
                 f"<td class='n'>{_fmt(statistics.fmean(sec) if sec else None, 2)}</td>"
                 f"<td class='n'>{_fmt(max(sec) if sec else None, 2)}</td>"
                 f"<td class='n'>{_fmt(statistics.fmean(cpu) if cpu else None, 2)}</td>"
                 f"<td class='n'>{_fmt(max(mem) if mem else None, 0)}</td></tr>")
    return ("<table><tr><th>stage</th><th>images</th><th>mean s</th><th>max s</th>"
            f"<th>mean CPU s</th><th>max peak RSS MB</th></tr>{body}</table>")


def render_html(rows: list[ImageRow], *, base_dir: Path, title: str, generated: datetime,
                dir_log: Path, catalog: Path | None = None, notes: Iterable[str] = (),
                csv_name: str | None = None) -> str:
    """The report page (self-contained apart from the quicklook images it links)."""
    counts = Counter(r.status for r in rows)
    queue_counts = Counter(r.queue_status for r in rows)
    run_rows = [r for r in rows if r.this_run]
    covered = [r for r in rows if r.status in ("Success", "Too cloudy")]
    success = [r for r in rows if r.status == "Success"]
    cover_stats = {
        "data": five_numbers(r.data_cover for r in covered),
        "cloud": five_numbers(r.cloud_cover for r in covered),
        "snow": five_numbers(r.snow_cover for r in covered),
        "water": five_numbers(r.water_cover for r in covered),
        "clear scene": five_numbers(r.clear_scene for r in covered),
        "clear land": five_numbers(r.clear_land for r in covered)}
    aod_stats = {"AOD (Success)": five_numbers(r.aod for r in success)}
    minutes = [r.seconds / 60 for r in rows if r.seconds is not None]
    time_stats = {"runtime (min)": five_numbers(minutes),
                  "peak RSS (MB)": five_numbers(r.peak_rss_mb for r in rows)}
    aod_failed = sum(1 for r in success if r.aod is not None and r.aod <= 0)
    out = io.StringIO()
    w = out.write
    w(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}'
      f'</title><meta name="generator" content="l2ps {_e(__version__)}"><style>{_CSS}</style>'
      f'</head><body>\n<h1>{_e(title)}</h1>\n')
    w(f'<p class="note">Generated {_e(generated.strftime("%Y-%m-%d %H:%M:%S"))} by l2ps '
      f'{_e(__version__)} from {len(rows)} job records in {_e(dir_log)} (latest record per '
      f'image).')
    if csv_name:
        w(f' Table as CSV: <a href="{_e(csv_name)}">{_e(csv_name)}</a>.')
    if catalog is not None:
        w(f' STAC catalog of the cube: <a href="{_href(catalog, base_dir)}">{_e(catalog)}</a>.')
    w("</p>\n")
    for n in notes:
        w(f'<p class="note">{_e(n)}</p>\n')
    w('<div class="cards">')
    w(f'<div class="card">images<br><b>{len(rows)}</b></div>')
    for s in STATUSES:
        w(f'<div class="card" style="border-color:{_STATUS_COLOURS[s]}">{_e(s)}<br>'
          f'<b class="count" data-status="{_e(s)}">{counts.get(s, 0)}</b></div>')
    w(f'<div class="card">queue DONE / FAIL<br><b>{queue_counts.get("DONE", 0)} / '
      f'{queue_counts.get("FAIL", 0)}</b></div>')
    w(f'<div class="card">chips written<br><b>{sum(r.tiles for r in rows)}</b></div>')
    if run_rows:
        rc = Counter(r.status for r in run_rows)
        w(f'<div class="card">this run (★)<br><b>{len(run_rows)}</b> '
          + ", ".join(f"{rc[s]} {_e(s)}" for s in STATUSES if rc[s]) + "</div>")
    w("</div>\n")

    w("<h2>Status</h2>" + svg_status_bars(counts))
    w("<h2>Images</h2>\n<p class='note'>Failures first. Covers in % (data cover of the "
      "image; cloud, snow and water of its valid pixels); AOD at 550 nm; time is the "
      "job's wall time. Quicklooks are the OVV files of the tiles the image wrote (a tile "
      "shared with other images of the same day shows the mosaic).</p>\n<table>"
      "<tr><th>status</th><th>image</th><th>sensor</th><th>date</th><th>data %</th>"
      "<th>cloud %</th><th>snow %</th><th>water %</th><th>AOD</th><th>WVP</th>"
      "<th>tiles</th><th>time</th><th>peak MB</th><th>reason</th><th>quicklooks</th></tr>\n")
    for r in rows:
        w(_row_html(r, base_dir) + "\n")
    w("</table>\n")

    w("<h2>Over time</h2><div class='plots'>")
    w(svg_time_scatter(covered, "cloud_cover", "cloud cover %", ymax=100.0))
    w(svg_time_scatter(success, "aod", "AOD 550 nm"))
    w("</div>\n")

    w("<h2>Images and chips per sensor</h2><h3>per year</h3>" + _period_html(rows, "year"))
    periods, sensors, table = period_table(rows, "month")
    w("<h3>per month</h3><div class='plots'>"
      + svg_stacked_bars(periods, sensors, table, 0, "images per month")
      + svg_stacked_bars(periods, sensors, table, 1, "chips per month") + "</div>"
      + _period_html(rows, "month"))

    w("<h2>Covers</h2><p class='note'>Images that were processed (Success and Too cloudy). "
      "Clear scene = 100 − cloud − snow, clear land = clear scene − water (as FORCE).</p>"
      "<div class='plots'>" + svg_boxes(cover_stats, "% cover") + "</div>"
      + _stats_table(cover_stats))
    w("<h2>Aerosol</h2>" + _stats_table(aod_stats, 3)
      + f"<p class='note'>{aod_failed} successful images with AOD ≤ 0.</p>")
    w("<h2>Runtime and memory</h2><div class='plots'>"
      + svg_histogram(minutes, "runtime (minutes)") + "</div>" + _stats_table(time_stats)
      + "<h3>per stage</h3>" + _stage_table(rows))
    w("</body></html>\n")
    return out.getvalue()


def _index_html(report_dir: Path, latest: Path) -> str:
    reports = sorted(report_dir.glob("l2ps-report-*.html"), reverse=True)
    items = "".join(f'<li><a href="{_e(p.name)}">{_e(p.name)}</a></li>' for p in reports)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0; url={_e(latest.name)}">'
            f'<title>l2ps reports</title><style>{_CSS}</style></head><body>'
            f'<h1>l2ps run reports</h1><p>Latest: <a href="{_e(latest.name)}">{_e(latest.name)}'
            f'</a></p><ul>{items}</ul></body></html>\n')


def default_report_path(dir_log: str | os.PathLike, when: datetime | None = None) -> Path:
    """``DIR_LOG/report/l2ps-report-<YYYYMMDD-HHMMSS>.html``."""
    when = when or datetime.now()
    return Path(dir_log) / REPORT_DIR / f"l2ps-report-{when.strftime('%Y%m%d-%H%M%S')}.html"


def write_report(dir_log: str | os.PathLike, out_html: str | os.PathLike | None = None, *,
                 current: Iterable[str] | None = None, catalog: str | os.PathLike | None = None,
                 notes: Iterable[str] = (), title: str = "l2ps Level 2 report") -> Path:
    """Write the report of all job records in ``dir_log``; return the HTML path.

    out_html -- default :func:`default_report_path`; a CSV with the same stem is written
                beside it. When the HTML is in ``DIR_LOG/report/``, ``index.html`` there
                is updated to point to it (and lists the earlier reports).
    current  -- image ids processed in this run (marked ★ and counted)
    catalog  -- the STAC catalog.json to link
    notes    -- extra lines shown at the top (e.g. a STAC update problem)
    """
    dir_log = Path(dir_log)
    generated = datetime.now()
    out = Path(out_html) if out_html is not None else default_report_path(dir_log, generated)
    rows = load_records(dir_log)
    cur = set(current or ())
    for r in rows:
        r.this_run = r.image_id in cur
    base_dir = out.parent.resolve()
    csv_path = out.with_suffix(".csv")
    _atomic_text(csv_path, csv_text(rows))
    _atomic_text(out, render_html(rows, base_dir=base_dir, title=title, generated=generated,
                                  dir_log=dir_log, catalog=Path(catalog) if catalog else None,
                                  notes=notes, csv_name=csv_path.name))
    report_dir = (dir_log / REPORT_DIR).resolve()
    if base_dir == report_dir:
        _atomic_text(report_dir / INDEX_NAME, _index_html(report_dir, out))
    return out


# ============================================================================ rule
def report_job(*, dir_log: str | os.PathLike, dir_level2: str | os.PathLike | None,
               out_html: str | os.PathLike, records: Iterable[str | os.PathLike] = (),
               log: str | os.PathLike | None = None) -> int:
    """The ``report`` rule: update the STAC catalog for the tiles this run's records
    wrote, then write the report. A STAC problem is logged and shown in the report but
    does not fail the rule (the report is still wanted); returns 0."""
    lines: list[str] = []
    ids, tiles = set(), set()
    for p in records:
        try:
            rec = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            lines.append(f"record {p} unreadable: {e}")
            continue
        ids.add(str(rec.get("image_id") or Path(p).parent.name))
        tiles.update(t for t in rec.get("tiles") or [] if isinstance(t, str))
    catalog, notes = None, []
    if dir_level2 is not None and Path(dir_level2).is_dir():
        try:
            from .stac import update_catalog
            catalog = update_catalog(dir_level2, sorted(tiles))
            lines.append(f"STAC catalog {catalog} updated for {len(tiles)} tiles")
        except Exception as e:  # the report must still be written
            msg = f"STAC catalog update failed: {type(e).__name__}: {e}"
            notes.append(msg + " (run `l2ps.stac.update_catalog(DIR_LEVEL2)` to rebuild)")
            lines.append(msg)
    out = write_report(dir_log, out_html, current=ids, catalog=catalog, notes=notes)
    lines.append(f"report {out} ({len(ids)} images in this run)")
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for line in lines:
        print("l2ps report:", line)
    return 0
