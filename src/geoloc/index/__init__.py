"""Search: index a gallery of satellite tiles, ask in words, get places.

- `build`: build an index folder from a gallery manifest; add or remove tiles in place.
- `search`: `SearchIndex`, which encodes queries with the index's own model and ranks tiles.
- `explain`: the backbone as a generator (adapter off) judging and explaining the top tiles.
- `ann`: exact, IVF or HNSW FAISS structures; `store`: the folder format; `identity`: which
  model made the vectors.
"""
