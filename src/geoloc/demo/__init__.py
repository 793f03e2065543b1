"""The offline demos: `geoloc demo` (train and score on a synthetic city, `run.run_demo`) and
`geoloc demo-map` (a GeoTIFF cut, indexed, searched and served, `run.run_map_demo`)."""
