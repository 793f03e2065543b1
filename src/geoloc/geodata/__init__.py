"""Real geodata in and out: georeferenced rasters and web-map tiles become galleries; answers
become GeoJSON.

- `footprint`: a tile's ground extent as a WGS84 polygon ring (RFC 7946 orientation), checked,
  cut at the antimeridian when written out.
- `raster`: cut a GeoTIFF / COG in any CRS into PNG tiles and a manifest, in bounded memory.
- `grid`: the windows of a cut, in rows whose tile size is measured where they lie, never listed.
- `xyz`: a manifest straight from a `z/x/y.png` folder of slippy-map tiles (XYZ, TMS, gdal2tiles).
- `mbtiles`: an MBTiles file's tiles written out as such a folder.
- `geojson`: search results as an RFC 7946 FeatureCollection.

rasterio, pyproj and mercantile are imported by the modules that need them, not here: reading
a manifest (which checks footprints) must not load GDAL.
"""
