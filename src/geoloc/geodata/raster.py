"""Cut a georeferenced raster (GeoTIFF, COG, anything GDAL reads) into a gallery of PNG tiles.

    result = cut_raster("area.tif", "gallery", TilingSettings(tile_m=150, overlap=0.5, px=512))

Each tile covers `tile_m` x `tile_m` metres on the ground (measured geodesically at the
raster's centre, so a Web-Mercator or lon/lat raster gets true metres too), neighbours overlap
by `overlap` of a tile, and each is resampled to `px` x `px` pixels, the model's input size.
The gallery's `manifest.jsonl` gives every tile its centre (lat / lon, WGS84), its footprint (a
WGS84 polygon), the source CRS and its pixel window in the raster.

Memory stays bounded whatever the raster's size: one window is read at a time (GDAL's block
cache is capped too). Each PNG is written atomically and then logged in a progress file, so a
run that is interrupted continues where it stopped when the same command is run again; the
manifest appears only when every window is done.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import numpy as np

from geoloc import atomic
from geoloc.errors import GeolocError
from geoloc.geodata.footprint import DIGITS, densified, geometry, make_ring, normalise_lon
from geoloc.geodata.grid import WindowGrid, plan_grid

STATE_FILE = ".geoloc-tiles.json"  # the settings of the cut: a rerun must use the same ones
PROGRESS_FILE = ".geoloc-tiles.progress.jsonl"  # one line per window done: what resuming reads
SUMMARY_FILE = "tiles.json"
STATE_VERSION = 2  # 2: tiles named by raster and window size, rows of windows sized where they lie
GDAL_CACHE_MB = 64  # GDAL's block cache; with one window at a time, this bounds the memory used
MAX_PX = 4096
SAMPLE_PX = 1024  # longest side of the decimated read that the automatic contrast stretch uses
RESAMPLINGS = ("nearest", "bilinear", "cubic", "lanczos", "average", "mode")


@dataclass(frozen=True)
class TilingSettings:
    tile_m: float = 150.0
    """Ground size of a tile's side, in metres."""
    overlap: float = 0.0
    """Share of a tile that its neighbour overlaps, in [0, 0.9]."""
    px: int = 512
    """Side of the written PNG, in pixels."""
    bands: tuple[int, ...] | None = None
    """Raster bands (from 1) that become red, green, blue; one band gives grey. None: from the
    raster's colour interpretation (red / green / blue bands), else bands 1, 2, 3."""
    max_nodata: float = 0.5
    """A tile with a larger share of nodata pixels is skipped (and counted)."""
    scale: tuple[float, float] | None = None
    """Raster values mapped to 0..255. None: none for 8-bit rasters, else each band's 2nd to
    98th percentile, from a decimated read of the whole raster."""
    bounds: tuple[float, float, float, float] | None = None
    """Cut only the windows that overlap this area, (west, south, east, north) in `bounds_crs`."""
    bounds_crs: str | None = None
    """The CRS of `bounds` (e.g. "EPSG:4326" for degrees); None: the raster's own CRS."""
    resampling: str | None = None
    """GDAL's resampling from the window to `px` (one of RESAMPLINGS); None: average when
    shrinking, bilinear when enlarging. Paletted bands are always resampled nearest."""
    world_files: bool = False
    """Write each tile's georeferencing beside it (a world file and a `.aux.xml` with the CRS)."""


@dataclass
class TilingResult:
    manifest: Path
    windows: int
    tiles: int
    skipped_nodata: int
    resumed: int
    """Windows already done by an earlier, interrupted run of the same cut."""
    seconds: float
    bands: list[int]
    crs: str
    window_px: tuple[int, int]
    """A tile's window at the raster's centre, in raster pixels."""
    window_sizes: tuple[tuple[int, int], tuple[int, int]]
    """The smallest and largest window: a tile's size is measured at each row of windows."""

    @property
    def windows_per_s(self) -> float:
        return (self.windows - self.resumed) / self.seconds if self.seconds > 0 else 0.0


def _open(raster: Path) -> Any:
    import rasterio
    from rasterio.errors import RasterioIOError

    if not raster.is_file():
        raise GeolocError(f"{raster}: no such file")
    try:
        return rasterio.open(raster)
    except RasterioIOError as error:
        reason = str(error).splitlines()[0] if str(error) else "unreadable"
        raise GeolocError(f"{raster}: not a raster GDAL can read ({reason})") from None


def _check_settings(settings: TilingSettings) -> None:
    if not (math.isfinite(settings.tile_m) and settings.tile_m > 0):
        raise GeolocError(f"the tile size must be a positive number of metres, not {settings.tile_m}")
    if not 0 <= settings.overlap <= 0.9:
        raise GeolocError(f"the overlap is a share of a tile in [0, 0.9], not {settings.overlap}")
    if not 8 <= settings.px <= MAX_PX:
        raise GeolocError(f"the tile size in pixels must be 8 to {MAX_PX}, not {settings.px}")
    if not 0 <= settings.max_nodata <= 1:
        raise GeolocError(f"the nodata share is in [0, 1], not {settings.max_nodata}")
    if settings.bands is not None and len(settings.bands) not in (1, 3):
        raise GeolocError(f"give 3 bands (red, green, blue) or 1 (grey), not {len(settings.bands)}")
    if settings.bounds_crs is not None and settings.bounds is None:
        raise GeolocError("--bounds-crs names the CRS of --bounds; give --bounds too")
    if settings.resampling is not None and settings.resampling not in RESAMPLINGS:
        raise GeolocError(f"the resampling is one of {', '.join(RESAMPLINGS)}, not {settings.resampling!r}")
    if settings.scale is not None and not settings.scale[0] < settings.scale[1]:
        raise GeolocError(f"the scale range must be MIN,MAX with MIN < MAX, not {settings.scale}")


def choose_bands(src: Any, bands: tuple[int, ...] | None, path: Path) -> list[int]:
    """The raster bands that become red, green and blue (one band: grey, three times)."""
    from rasterio.enums import ColorInterp

    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= src.count]
        if bad:
            raise GeolocError(f"{path}: has {src.count} band(s); there is no band {bad[0]}")
        return list(bands) * 3 if len(bands) == 1 else list(bands)
    interp = list(src.colorinterp)
    wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(colour in interp for colour in wanted):
        return [interp.index(colour) + 1 for colour in wanted]
    colour_bands = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
    if len(colour_bands) >= 3:
        return colour_bands[:3]
    return [colour_bands[0]] * 3 if colour_bands else [1, 1, 1]


def pixel_to_crs(transform: Any, col: float, row: float) -> tuple[float, float]:
    """The CRS coordinates of pixel position (col, row) under an affine geotransform."""
    return (
        transform.a * col + transform.b * row + transform.c,
        transform.d * col + transform.e * row + transform.f,
    )


@functools.cache
def _geod() -> Any:
    from pyproj import Geod

    return Geod(ellps="WGS84")


def _pixel_metres(
    src: Any, to_wgs84: Any, col: float | None = None, row: float | None = None
) -> tuple[float, float]:
    """Ground size of one pixel (across, down) in metres, measured geodesically at pixel position
    (col, row), by default the raster's centre."""
    geod = _geod()
    col = src.width / 2 if col is None else col
    row = src.height / 2 if row is None else row
    points = [pixel_to_crs(src.transform, c, r) for c, r in ((col, row), (col + 1, row), (col, row + 1))]
    (lon0, lat0), (lon1, lat1), (lon2, lat2) = (to_wgs84.transform(x, y) for x, y in points)
    across = geod.inv(lon0, lat0, lon1, lat1)[2]
    down = geod.inv(lon0, lat0, lon2, lat2)[2]
    return across, down


@dataclass
class _Plan:
    """Everything decided before a pixel is read: the cut is refused here or not at all.

    The windows (`grid`) are counted and found one at a time, never listed (see
    `geoloc.geodata.grid`), so that a raster of 10^6 x 10^6 pixels plans in a few hundred KiB.
    """

    raster: Path
    crs: str
    bands: list[int]
    window_px: tuple[int, int]  # (width, height) of a tile in raster pixels, at the raster's centre
    grid: WindowGrid
    pixel_m: tuple[float, float]  # the ground size of a pixel at the raster's centre
    eight_bit: bool
    palette: dict[int, tuple[int, ...]] | None = None  # the colour table of a paletted band

    @property
    def windows(self) -> int:
        return self.grid.count

    def window(self, i: int) -> tuple[int, int, int, int]:
        """(col_off, row_off, width, height) of window number i."""
        return self.grid.window(i)


def _check_georeferencing(src: Any, raster: Path) -> None:
    gcps, _ = src.gcps
    if src.crs is None or src.transform.is_identity:
        if gcps:
            raise GeolocError(
                f"{raster}: georeferenced by ground control points only ({len(gcps)} GCPs); "
                "warp it first, e.g. gdalwarp -t_srs EPSG:32618 in.tif out.tif"
            )
        if src.crs is None:
            raise GeolocError(
                f"{raster}: the raster has no CRS, so its tiles cannot be placed on the earth "
                "(assign one, e.g. gdal_edit.py -a_srs EPSG:32618)"
            )
        raise GeolocError(f"{raster}: the raster has no geotransform, so its pixels have no place")


def _pixel_range(src: Any, settings: TilingSettings, raster: Path) -> tuple[float, float, float, float]:
    """(col0, row0, col1, row1): the part of the raster, in pixels, that `settings.bounds` covers."""
    if settings.bounds is None:
        return 0.0, 0.0, float(src.width), float(src.height)
    from rasterio.errors import CRSError
    from rasterio.warp import transform_bounds

    west, south, east, north = settings.bounds
    if not (west < east and south < north):
        raise GeolocError(f"--bounds is WEST,SOUTH,EAST,NORTH, west < east, south < north: {settings.bounds}")
    if settings.bounds_crs is not None:
        try:
            box = transform_bounds(settings.bounds_crs, src.crs, west, south, east, north)
        except (CRSError, ValueError) as error:
            raise GeolocError(f"--bounds-crs {settings.bounds_crs!r}: {error}") from None
        west, south, east, north = box
    inverse = ~src.transform
    corners = [inverse * (x, y) for x in (west, east) for y in (south, north)]
    col0 = max(0.0, min(c for c, _ in corners))
    col1 = min(float(src.width), max(c for c, _ in corners))
    row0 = max(0.0, min(r for _, r in corners))
    row1 = min(float(src.height), max(r for _, r in corners))
    if col0 >= col1 or row0 >= row1:
        raise GeolocError(f"{raster}: --bounds {settings.bounds} do not overlap the raster")
    return col0, row0, col1, row1


def _palette(src: Any, bands: list[int]) -> dict[int, tuple[int, ...]] | None:
    """The colour table to expand, when the one band used is paletted (rgb2pct.py's output)."""
    from rasterio.enums import ColorInterp

    if len(set(bands)) != 1 or src.colorinterp[bands[0] - 1] != ColorInterp.palette:
        return None
    return src.colormap(bands[0])


def _pixels(tile_m: float, pixel_m: float, limit: int) -> int:
    """Pixels of `pixel_m` metres in `tile_m` metres, 1 to `limit` (all of them at a pole)."""
    if not (math.isfinite(pixel_m) and pixel_m > 0):
        return limit
    return min(limit, max(1, round(tile_m / pixel_m)))


def plan_cut(raster: str | Path, settings: TilingSettings) -> _Plan:
    """Check the raster and the settings; return the windows to cut. Nothing is written."""
    from pyproj import CRS, Transformer

    _check_settings(settings)
    raster = Path(raster).absolute()
    with _open(raster) as src:
        _check_georeferencing(src, raster)
        to_wgs84 = Transformer.from_crs(CRS.from_wkt(src.crs.to_wkt()), "EPSG:4326", always_xy=True)
        across_m, down_m = _pixel_metres(src, to_wgs84)
        width_px, height_px = settings.tile_m / across_m, settings.tile_m / down_m
        if min(width_px, height_px) < 1:
            raise GeolocError(
                f"{raster}: a tile of {settings.tile_m:g} m is smaller than one pixel of this raster "
                f"({across_m:.3g} x {down_m:.3g} m); choose a larger --tile-m"
            )
        window = (max(1, round(width_px)), max(1, round(height_px)))
        if window[0] > src.width or window[1] > src.height:
            raise GeolocError(
                f"{raster}: the raster ({src.width} x {src.height} pixels) is smaller than one tile of "
                f"{settings.tile_m:g} m ({window[0]} x {window[1]} pixels); choose a smaller --tile-m"
            )

        def size_at(col: float, row: float) -> tuple[int, int]:
            """The window of `tile_m` x `tile_m` metres at pixel position (col, row), in the raster."""
            row = min(max(row, 0.0), src.height - 1.0)
            across, down = _pixel_metres(src, to_wgs84, col, row)
            return _pixels(settings.tile_m, across, src.width), _pixels(settings.tile_m, down, src.height)

        grid = plan_grid(
            src.width, src.height, size_at, settings.overlap, _pixel_range(src, settings, raster)
        )
        bands = choose_bands(src, settings.bands, raster)
        return _Plan(
            raster=raster,
            crs=src.crs.to_string(),
            bands=bands,
            window_px=window,
            grid=grid,
            pixel_m=(across_m, down_m),
            eight_bit=all(dtype == "uint8" for dtype in src.dtypes),
            palette=_palette(src, bands),
        )


def _stretch(src: Any, bands: list[int], settings: TilingSettings) -> list[list[float]] | None:
    """Per band (low, high) raster values mapped to 0 and 255, or None to keep 8-bit values."""
    from rasterio.errors import RasterioError

    if settings.scale is not None:
        return [list(settings.scale) for _ in bands]
    if all(src.dtypes[b - 1] == "uint8" for b in bands):
        return None
    factor = max(src.width, src.height) / SAMPLE_PX
    shape = (max(1, round(src.height / max(factor, 1))), max(1, round(src.width / max(factor, 1))))
    ranges = []
    for band in bands:
        try:
            sample = src.read(band, out_shape=shape, masked=True)  # decimated: bounded memory
        except RasterioError as error:
            reason = (str(error.__cause__ or error).splitlines() or ["unreadable"])[0]
            raise GeolocError(f"{src.name}: band {band} unreadable (contrast stretch): {reason}") from None
        values = sample.compressed()
        if values.size == 0:
            ranges.append([0.0, 255.0])
            continue
        low, high = np.percentile(values, [2, 98])
        ranges.append([float(low), float(high) if high > low else float(low) + 1])
    return ranges


def _to_rgb(data: np.ndarray, scale: list[list[float]] | None) -> np.ndarray:
    if scale is None:
        return data.astype(np.uint8)
    out = np.empty(data.shape, np.uint8)
    for i, (low, high) in enumerate(scale):
        band = (data[i].astype(np.float32) - low) * (255.0 / (high - low))
        out[i] = np.clip(band, 0, 255).round().astype(np.uint8)
    return out


def _state(plan: _Plan, settings: TilingSettings, scale: list[list[float]] | None) -> dict[str, Any]:
    state = {
        "version": STATE_VERSION,
        "raster": str(plan.raster),
        "raster_bytes": plan.raster.stat().st_size,
        "settings": {**asdict(settings), "bands": plan.bands},
        "window_px": list(plan.window_px),
        "windows": plan.windows,
        "scale": scale,
    }
    return json.loads(json.dumps(state))  # tuples as lists: as the state file reads back


def _check_out(out: Path, state: dict[str, Any]) -> bool:
    """Whether `out` holds an earlier run of this same cut (to resume); refuse any other folder."""
    state_file = out / STATE_FILE
    if state_file.is_file():
        try:
            earlier = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise GeolocError(f"{state_file}: unreadable ({error}); remove {out} to cut again") from None
        # The stretch is decided by the first run and kept, so resumed tiles match the others.
        same = {k: v for k, v in earlier.items() if k != "scale"} == {
            k: v for k, v in state.items() if k != "scale"
        }
        if not same:
            raise GeolocError(
                f"{out}: holds tiles cut from another raster or with other settings; "
                "choose another --out, or give the same raster and settings to resume"
            )
        state["scale"] = earlier.get("scale")
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GeolocError(f"{out}: exists and is not a folder of geoloc tiles; choose another --out")
    return False


def _progress(out: Path) -> Iterator[dict[str, Any]]:
    """The windows done so far, in window order, read one line at a time.

    Windows are done in order, so the entries that count are those numbered 0, 1, 2, ... in
    turn: a torn last line (the run was killed while writing it) and the lines a resumed run
    wrote again are passed over, and a logged tile whose PNG is gone ends the run of done ones.
    """
    progress = out / PROGRESS_FILE
    if not progress.is_file():
        return
    expected = 0
    with open(progress, encoding="utf-8") as lines:
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the line being written when the run was killed
            if entry.get("i") != expected:
                continue
            row = entry.get("row")
            if entry.get("status") != "nodata" and not (row and (out / row["image"]).is_file()):
                continue
            expected += 1
            yield entry


def tile_name(plan: _Plan, col_off: int, row_off: int, width: int, height: int) -> str:
    """A tile's path in the gallery, which is its key in an index: the raster's name and the window.

    Qualified by the raster's name and the window's size, two galleries cut from different
    rasters, or at different sizes, can share one index.
    """
    return f"tiles/{plan.raster.stem}/r{row_off:06d}_c{col_off:06d}_{width}x{height}.png"


def tile_row(
    plan: _Plan, transform: Any, to_wgs84: Any, window: tuple[int, int, int, int], nodata_share: float
) -> dict[str, Any]:
    """The manifest row of one window: centre, WGS84 footprint, CRS and pixel window.

    The footprint is the window's outline: its corners, and points along edges that are curved
    in lon / lat (see `footprint.densified`). `window` is (col_off, row_off, width, height).
    """
    col_off, row_off, width, height = window

    def to_lonlat(col: float, row: float) -> tuple[float, float]:
        return to_wgs84.transform(*pixel_to_crs(transform, col, row))

    corners = [(col_off, row_off), (col_off, row_off + height), (col_off + width, row_off + height)]
    corners.append((col_off + width, row_off))
    ground = densified(corners, to_lonlat)
    lon, lat = to_lonlat(col_off + width / 2, row_off + height / 2)
    return {
        "image": tile_name(plan, col_off, row_off, width, height),
        "lat": round(lat, 9),
        "lon": round(normalise_lon(lon), 9),
        "footprint": geometry(make_ring(ground)),
        "crs": plan.crs,
        "window": {"col_off": col_off, "row_off": row_off, "width": width, "height": height},
        "source": plan.raster.name,
        "nodata_share": round(nodata_share, 4),
    }


def _read_window(
    src: Any, plan: _Plan, window_px: tuple[int, int, int, int], px: int, resampling_name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The window's chosen bands resampled to px x px, and its validity mask (True = data)."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    window = Window(*window_px)
    mask = src.dataset_mask(window=window, out_shape=(px, px)) > 0
    if plan.palette is not None:
        # Colour indices are names, not amounts: take the nearest index, then its colour.
        indices = src.read(plan.bands[0], window=window, out_shape=(px, px), resampling=Resampling.nearest)
        table = np.zeros((max(int(indices.max()) + 1, max(plan.palette) + 1), 3), np.uint8)
        for index, colour in plan.palette.items():
            table[index] = colour[:3]
        return table[indices].transpose(2, 0, 1), mask
    # Averaging when shrinking keeps thin features (roads) visible; bilinear when enlarging.
    resampling = Resampling.average if max(window_px[2:]) > px else Resampling.bilinear
    if resampling_name is not None:
        resampling = Resampling[resampling_name]
    unique = sorted(set(plan.bands))
    data = src.read(unique, window=window, out_shape=(len(unique), px, px), resampling=resampling)
    return data[[unique.index(b) for b in plan.bands]], mask


def write_world_file(tile: Path, src: Any, window: tuple[int, int, int, int], px: int) -> None:
    """Write `tile`'s georeferencing beside it, as GDAL and QGIS read it: a world file (.pgw, the
    affine geotransform of its pixel centres) and a .aux.xml holding the raster's CRS."""
    from rasterio.windows import Window

    affine = src.window_transform(Window(*window))
    width, height = window[2:]
    a, b, c, d, e, f = (
        affine.a * width / px,
        affine.b * height / px,
        affine.c,
        affine.d * width / px,
        affine.e * height / px,
        affine.f,
    )
    # A world file names the centre of the top-left pixel, in the order A, D, B, E, C, F.
    lines = [a, d, b, e, c + a / 2 + b / 2, f + d / 2 + e / 2]
    atomic.write_text(tile.with_suffix(".pgw"), "".join(f"{v:.{DIGITS + 3}f}\n" for v in lines))
    srs = xml_escape(src.crs.to_wkt())
    atomic.write_text(
        tile.with_name(tile.name + ".aux.xml"),
        f'<PAMDataset>\n  <SRS dataAxisToSRSAxisMapping="1,2">{srs}</SRS>\n</PAMDataset>\n',
    )


def _unreadable(plan: _Plan, window: tuple[int, int, int, int], error: Exception) -> GeolocError:
    cause = error.__cause__ or error
    reason = (str(cause).splitlines() or ["unreadable"])[0]
    col_off, row_off, width, height = window
    return GeolocError(
        f"{plan.raster}: cannot read the window at column {col_off}, row {row_off} "
        f"({width} x {height} pixels): {reason} (a truncated or damaged file?); no tiles were kept"
    )


def cut_raster(
    raster: str | Path,
    out: str | Path,
    settings: TilingSettings | None = None,
    show_progress: bool | None = None,
) -> TilingResult:
    """Cut `raster` into tiles under `out`; return what was done. See the module's docstring.

    A window GDAL cannot read (a truncated GeoTIFF) stops the cut with GeolocError naming the
    file and the window, and `out` is removed: nothing half-written is left to resume.
    """
    import rasterio

    settings = settings or TilingSettings()
    plan = plan_cut(raster, settings)
    out = Path(out).absolute()
    started = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(plan.raster) as src:
        state = _state(plan, settings, None)
        resuming = _check_out(out, state)
        try:
            if not resuming:
                state["scale"] = None if plan.palette else _stretch(src, plan.bands, settings)
                (out / "tiles").mkdir(parents=True, exist_ok=True)
                atomic.write_json(out / STATE_FILE, state)
            resumed = sum(1 for _ in _progress(out)) if resuming else 0
            _cut_windows(src, plan, settings, out, state["scale"], resumed, show_progress)
        except GeolocError:
            shutil.rmtree(out, ignore_errors=True)
            raise
    seconds = time.perf_counter() - started
    try:
        return _finish(out, plan, settings, seconds, resumed)
    except GeolocError:
        if not resuming:  # every window was nodata: leave nothing behind of this run
            shutil.rmtree(out, ignore_errors=True)
        raise


def _cut_windows(
    src: Any,
    plan: _Plan,
    settings: TilingSettings,
    out: Path,
    scale: list[list[float]] | None,
    first: int,
    show_progress: bool | None,
) -> None:
    """Cut windows `first`, `first` + 1, ... to the last, logging each in the progress file."""
    from PIL import Image
    from pyproj import CRS, Transformer
    from rasterio.errors import RasterioError
    from tqdm import tqdm

    to_wgs84 = Transformer.from_crs(CRS.from_wkt(src.crs.to_wkt()), "EPSG:4326", always_xy=True)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    bar = tqdm(
        total=plan.windows,
        initial=first,
        unit="tile",
        desc=f"cutting {plan.raster.name}",
        disable=not show_progress,
    )
    with open(out / PROGRESS_FILE, "a", encoding="utf-8") as progress, bar:
        for i in range(first, plan.windows):
            window = plan.window(i)
            try:
                data, mask = _read_window(src, plan, window, settings.px, settings.resampling)
            except RasterioError as error:
                raise _unreadable(plan, window, error) from None
            nodata_share = 1.0 - float(mask.mean())
            if nodata_share > settings.max_nodata:
                entry: dict[str, Any] = {"i": i, "status": "nodata"}
            else:
                rgb = _to_rgb(data, scale)
                rgb[:, ~mask] = 0  # nodata pixels black, not whatever value marks them
                row = tile_row(plan, src.transform, to_wgs84, window, nodata_share)
                with atomic.atomic_path(out / row["image"]) as tmp:
                    Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0))).save(
                        tmp, format="PNG", compress_level=3
                    )
                if settings.world_files:
                    write_world_file(out / row["image"], src, window, settings.px)
                entry = {"i": i, "status": "tile", "row": row}
            # After the PNG: a logged tile is always on disk.
            progress.write(json.dumps(entry) + "\n")
            progress.flush()
            bar.update()


def _finish(out: Path, plan: _Plan, settings: TilingSettings, seconds: float, resumed: int) -> TilingResult:
    from geoloc.data.manifest import write_manifest

    rows: list[dict[str, Any]] = []
    skipped = 0
    for entry in _progress(out):
        if entry["status"] == "tile":
            rows.append(entry["row"])
        else:
            skipped += 1
    if not rows:
        raise GeolocError(
            f"{plan.raster}: every one of its {plan.windows} tiles is more than "
            f"{settings.max_nodata:.0%} nodata; nothing to index"
        )
    manifest = out / "manifest.jsonl"
    write_manifest(manifest, rows)
    scale = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))["scale"]
    result = TilingResult(
        manifest=manifest,
        windows=plan.windows,
        tiles=len(rows),
        skipped_nodata=skipped,
        resumed=resumed,
        seconds=seconds,
        bands=plan.bands,
        crs=plan.crs,
        window_px=plan.window_px,
        window_sizes=plan.grid.sizes(),
    )
    summary = {
        "raster": str(plan.raster),
        "crs": plan.crs,
        "bands": {"red": plan.bands[0], "green": plan.bands[1], "blue": plan.bands[2]},
        "palette": plan.palette is not None,
        "scale": scale,
        "tile_m": settings.tile_m,
        "overlap": settings.overlap,
        "px": settings.px,
        "bounds": list(settings.bounds) if settings.bounds else None,
        "bounds_crs": settings.bounds_crs,
        "resampling": settings.resampling,
        "world_files": settings.world_files,
        "window_px": list(plan.window_px),
        "window_px_range": [list(size) for size in plan.grid.sizes()],
        "pixel_m": [round(v, 4) for v in plan.pixel_m],
        "windows": result.windows,
        "tiles": result.tiles,
        "skipped_nodata": skipped,
    }
    atomic.write_json(out / SUMMARY_FILE, summary)
    return result
