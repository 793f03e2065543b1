"""Cutting a large GeoTIFF into tiles: tiles/s and peak memory, against the raster's decoded size.

    .venv/bin/python benchmarks/geodata_cut.py                      # 16384 x 16384 RGB (768 MiB decoded)
    .venv/bin/python benchmarks/geodata_cut.py --size 8192 --px 512 --overlap 0
    .venv/bin/python benchmarks/geodata_cut.py --limit-mb 512       # cut under a hard memory limit
    .venv/bin/python benchmarks/geodata_cut.py --sparse 1000000 --tile-m 1000  # plan only (dry run)

A synthetic RGB GeoTIFF (UTM 18N, 0.3 m pixels, tiled and deflate-compressed, written a strip
at a time) is cut by `geoloc tiles` in a child process. Reported: the raster's size decoded and
on disk, the windows cut, wall time, tiles/s, and the child's peak resident memory while it cut
(VmHWM, reset after the imports), also less its resident memory after importing everything (the
cut's own share). With --limit-mb the child runs under RLIMIT_AS of that many MiB on top of its imports:
a cut that tried to hold the raster would fail. The machine's other jobs make timings upper bounds.

With --sparse SIZE the raster is SIZE x SIZE pixels of 1 m with no block written (GDAL's
SPARSE_OK: all nodata, a few hundred KiB on disk), and the child only plans the cut, as
`geoloc tiles --dry-run` does: the windows counted, the time and the peak memory of planning.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy, PIL.Image, pyproj, rasterio, tqdm  # everything the cut imports, loaded first
from geoloc.geodata.raster import TilingSettings, cut_raster, plan_cut

def status(name):  # from /proc/self/status, in KiB: this process's own, not inherited
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(name + ":"))

raster, out, tile_m, overlap, px, limit_mb, plan_only = sys.argv[1:8]
imported_kib = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the memory resident now: the imports
if float(limit_mb) > 0:
    # The address space now plus the allowance: the cut must fit in it.
    limit = status("VmSize") * 1024 + int(float(limit_mb) * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
start = time.perf_counter()
settings = TilingSettings(float(tile_m), float(overlap), int(px))
if plan_only == "1":
    plan = plan_cut(raster, settings)
    result = {"windows": plan.windows, "tiles": None, "skipped": None, "window_px": plan.window_px}
else:
    cut = cut_raster(raster, out, settings, show_progress=False)
    result = {"windows": cut.windows, "tiles": cut.tiles, "skipped": cut.skipped_nodata,
              "window_px": cut.window_px}
seconds = time.perf_counter() - start
print(json.dumps({**result, "seconds": seconds, "imported_kib": imported_kib, "peak_kib": status("VmHWM")}))
"""


def write_raster(path: Path, size: int, pixel_m: float = 0.3) -> None:
    """A size x size RGB raster of blocks and gradients (compressible, not uniform), by strips."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    palette = rng.integers(30, 230, size=(64, 3), dtype=np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32618",
        transform=from_origin(583_000, 4_507_000, pixel_m, pixel_m),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        photometric="RGB",
        BIGTIFF="IF_SAFER",
    ) as dst:
        strip = 512
        cols = np.arange(size)
        for top in range(0, size, strip):
            rows = np.arange(top, min(size, top + strip))[:, None]
            block = ((rows // 97) * 31 + (cols[None, :] // 89) * 17) % 64  # a patchwork of "fields"
            pixels = palette[block].transpose(2, 0, 1).copy()
            pixels[0] = pixels[0] + ((cols[None, :] + rows) % 16).astype(np.uint8)
            dst.write(pixels, window=Window(0, top, size, len(rows)))


def write_sparse_raster(path: Path, size: int) -> None:
    """A size x size raster of 1 m pixels with no block written: all nodata, tiny on disk."""
    import rasterio
    from rasterio.transform import from_origin

    blocks = {"tiled": True, "blockxsize": 4096, "blockysize": 4096, "sparse_ok": True, "BIGTIFF": "YES"}
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        nodata=0,
        crs="EPSG:32618",
        transform=from_origin(583_000, 4_507_000, 1.0, 1.0),
        **blocks,
    ):
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="raster side in pixels (default 16384)")
    parser.add_argument("--tile-m", type=float, default=150.0)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--limit-mb", type=float, default=0, help="RLIMIT_AS allowance for the cut, MiB")
    parser.add_argument("--work", help="folder for the raster and tiles (default: a temporary one)")
    parser.add_argument("--sparse", type=int, help="plan only, on an empty SIZE x SIZE raster of 1 m pixels")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.work) as work:
        raster = Path(work) / "big.tif"
        started = time.perf_counter()
        size = args.sparse or args.size
        if args.sparse:
            write_sparse_raster(raster, size)
        else:
            write_raster(raster, size)
        written_s = time.perf_counter() - started
        decoded_mib = size * size * (1 if args.sparse else 3) / 2**20
        command = [sys.executable, "-c", CHILD, str(raster), str(Path(work) / "tiles"), str(args.tile_m)]
        command += [str(args.overlap), str(args.px), str(args.limit_mb), "1" if args.sparse else "0"]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            print(child.stderr[-3000:], file=sys.stderr)
            print(f"the cut failed (exit {child.returncode})")
            return 1
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        report = {
            "raster": (
                f"{size} x {size} x 1 uint8, 1 m pixels, sparse (no block written), EPSG:32618, planned only"
                if args.sparse
                else f"{size} x {size} x 3 uint8, 0.3 m pixels, EPSG:32618"
            ),
            "decoded_mib": round(decoded_mib, 1),
            "file_mib": round(raster.stat().st_size / 2**20, 1),
            "write_s": round(written_s, 1),
            "tile_m": args.tile_m,
            "overlap": args.overlap,
            "px": args.px,
            "window_px": measured["window_px"],
            "windows": measured["windows"],
            "tiles": measured["tiles"],
            "cut_s": round(measured["seconds"], 2),
            "tiles_per_s": None if args.sparse else round(measured["windows"] / measured["seconds"], 1),
            "peak_rss_mib": round(measured["peak_kib"] / 1024, 1),
            "rss_after_imports_mib": round(measured["imported_kib"] / 1024, 1),
            "cut_rss_mib": round((measured["peak_kib"] - measured["imported_kib"]) / 1024, 1),
            "limit_mb": args.limit_mb or None,
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
