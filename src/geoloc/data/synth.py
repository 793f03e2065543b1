"""A synthetic city: procedurally drawn satellite tiles with ground-level descriptions.

Each tile is a small scene on a 3 x 3 grid of cells: a main building (colour, shape, size), up to
three other features (a second building, water, trees, a parking lot, a field) and possibly
roads. Its descriptions are generated from the scene itself, as a person on the ground would put
it: objects, colours, shapes and where they are relative to the tile and to each other, with
synonyms, varied order and partial mentions, so no template can be memorised and no single
attribute names a tile. The output is the generic manifest format (manifest.jsonl + tiles/).
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from geoloc import atomic
from geoloc.choices import CityStyleName

TILE_PIXELS = 128
CELL = TILE_PIXELS // 3

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "blue": (40, 70, 210),
    "yellow": (230, 210, 40),
    "white": (245, 245, 245),
    "orange": (240, 130, 20),
    "purple": (140, 50, 170),
    "black": (25, 25, 25),
}
COLOUR_WORDS: dict[str, list[str]] = {
    "red": ["red", "red", "dark red"],
    "blue": ["blue", "blue", "bright blue"],
    "yellow": ["yellow", "yellow", "pale yellow"],
    "white": ["white", "white", "light"],
    "orange": ["orange", "orange"],
    "purple": ["purple", "purple"],
    "black": ["black", "black", "dark"],
}
SHAPES = ("square", "rectangular", "l-shaped", "round")
SHAPE_WORDS: dict[str, list[str]] = {
    "square": ["square", "square", "boxy"],
    "rectangular": ["rectangular", "long", "rectangular"],
    "l-shaped": ["l-shaped", "l-shaped"],
    "round": ["round", "circular", "round"],
}
BUILDING_WORDS = ["building", "building", "block", "house", "structure"]
FEATURES = ("building", "water", "trees", "parking", "field")
FEATURE_WORDS: dict[str, list[str]] = {
    "water": ["a pond", "a small lake", "some water", "a pool of water"],
    "trees": ["a group of trees", "some trees", "a small grove", "a cluster of trees"],
    "parking": ["a parking lot", "a car park", "a parking area"],
    "field": ["a field", "an open field", "some farmland"],
}
# Cells as (column, row), 0..2 each, with their words.
CELL_WORDS: dict[tuple[int, int], list[str]] = {
    (0, 0): ["in the top left", "in the upper left corner", "in the north-west corner"],
    (1, 0): ["at the top", "along the top", "in the north"],
    (2, 0): ["in the top right", "in the upper right corner", "in the north-east corner"],
    (0, 1): ["on the left", "on the left side", "in the west"],
    (1, 1): ["in the centre", "in the middle", "in the center"],
    (2, 1): ["on the right", "on the right side", "in the east"],
    (0, 2): ["in the bottom left", "in the lower left corner", "in the south-west corner"],
    (1, 2): ["at the bottom", "along the bottom", "in the south"],
    (2, 2): ["in the bottom right", "in the lower right corner", "in the south-east corner"],
}
ROADS = ("none", "ns-left", "ns-centre", "ns-right", "ew-top", "ew-middle", "ew-bottom", "cross")
ROAD_WORDS: dict[str, list[str]] = {
    "ns-left": ["a road runs north-south along the left", "a street runs down the left side"],
    "ns-centre": ["a road runs north-south through the middle", "a street cuts down the centre"],
    "ns-right": ["a road runs north-south along the right", "a street runs down the right side"],
    "ew-top": ["a road runs east-west along the top", "a street runs across the top"],
    "ew-middle": ["a road runs east-west through the middle", "a street cuts across the centre"],
    "ew-bottom": ["a road runs east-west along the bottom", "a street runs across the bottom"],
    "cross": ["two roads cross in the middle", "there is a crossroads in the centre"],
}
OPENINGS = ["", "i see ", "there is ", "i am near ", "i can see "]
# Road clauses with these verbs are never joined with "with" (the demo's "cuts" clauses always
# were, and stay so: its city must not change).
VERBS = (" runs ", "cross", " lines ", " heads ", " passes ")


@dataclass(frozen=True)
class CityStyle:
    """What a city looks like and how its people speak: palette, shapes, features, roads, ground
    and words. `DEMO` is the demo's city; `HOLDOUT` is another city, kept for measuring whether
    a method tuned on the demo's city carries over (docs/study.md)."""

    colours: dict[str, tuple[int, int, int]]
    colour_words: dict[str, list[str]]
    shapes: tuple[str, ...]
    shape_words: dict[str, list[str]]
    building_words: list[str]
    features: tuple[str, ...]
    feature_words: dict[str, list[str]]
    cell_words: dict[tuple[int, int], list[str]]
    roads: tuple[str, ...]
    road_words: dict[str, list[str]]
    openings: list[str]
    ground: tuple[int, int, int]  # the ground's colour, varied a little per tile
    extra_features: tuple[int, int]  # how many features besides the main building (inclusive)


DEMO = CityStyle(
    COLOURS, COLOUR_WORDS, SHAPES, SHAPE_WORDS, BUILDING_WORDS, FEATURES, FEATURE_WORDS, CELL_WORDS,
    ROADS, ROAD_WORDS, OPENINGS, ground=(80, 150, 70), extra_features=(1, 3),
)  # fmt: skip

# Another city: grey-brown ground, another palette and other shapes, sports pitches and plazas
# instead of fields and car parks, 2 to 4 features a tile, fewer roads and none through the
# centre, and other words for everything.
HOLDOUT = CityStyle(
    colours={
        "green": (40, 170, 70),
        "teal": (20, 150, 150),
        "pink": (240, 120, 180),
        "brown": (130, 80, 40),
        "navy": (30, 40, 110),
        "cream": (240, 230, 190),
        "red": (220, 60, 30),
    },
    colour_words={
        "green": ["green", "bright green", "leafy green"],
        "teal": ["teal", "blue-green", "turquoise"],
        "pink": ["pink", "rose", "salmon"],
        "brown": ["brown", "chocolate", "rusty brown"],
        "navy": ["navy", "deep blue", "navy blue"],
        "cream": ["cream", "beige", "off-white"],
        "red": ["scarlet", "bright red", "red"],
    },
    shapes=("square", "t-shaped", "u-shaped", "round"),
    shape_words={
        "square": ["square", "squat", "cube-like"],
        "t-shaped": ["t-shaped", "cross-shaped"],
        "u-shaped": ["u-shaped", "horseshoe"],
        "round": ["domed", "circular", "drum-shaped"],
    },
    building_words=["tower", "hall", "warehouse", "tenement", "office"],
    features=("building", "water", "trees", "pitch", "plaza"),
    feature_words={
        "water": ["a fountain basin", "a reflecting pool", "a canal stretch"],
        "trees": ["a row of trees", "a wooded patch", "some tall trees"],
        "pitch": ["a sports pitch", "a football field", "a playing field"],
        "plaza": ["a paved plaza", "a public square", "a tiled courtyard"],
    },
    cell_words={
        (0, 0): ["at the far top left", "up in the north-west", "top left-hand corner"],
        (1, 0): ["up top", "along the northern edge", "at the top middle"],
        (2, 0): ["at the far top right", "up in the north-east", "top right-hand corner"],
        (0, 1): ["to the west", "along the western edge", "on the left-hand side"],
        (1, 1): ["dead centre", "right in the middle", "at the heart of it"],
        (2, 1): ["to the east", "along the eastern edge", "on the right-hand side"],
        (0, 2): ["at the far bottom left", "down in the south-west", "bottom left-hand corner"],
        (1, 2): ["down below", "along the southern edge", "at the bottom middle"],
        (2, 2): ["at the far bottom right", "down in the south-east", "bottom right-hand corner"],
    },
    roads=("none", "none", "ns-left", "ns-right", "ew-top", "ew-bottom"),
    road_words={
        "ns-left": ["an avenue lines the western edge", "a lane heads north along the left"],
        "ns-right": ["an avenue lines the eastern edge", "a lane heads north along the right"],
        "ew-top": ["a boulevard passes along the north", "a lane crosses the top edge"],
        "ew-bottom": ["a boulevard passes along the south", "a lane crosses the bottom edge"],
    },
    openings=["", "from here i notice ", "next to me is ", "looking around, ", "in front of me: "],
    ground=(150, 135, 110),
    extra_features=(2, 4),
)
STYLES: dict[CityStyleName, CityStyle] = {"demo": DEMO, "holdout": HOLDOUT}


@dataclass
class Feature:
    kind: str  # "main", "building", or one of FEATURES
    cell: tuple[int, int]
    colour: str = ""
    shape: str = ""
    large: bool = False


@dataclass
class Scene:
    road: str
    main: Feature
    others: list[Feature] = field(default_factory=list)


def _free_cells(road: str) -> list[tuple[int, int]]:
    """Cells not covered by the roads, so that objects stay visible."""
    blocked: set[tuple[int, int]] = set()
    if road in ("ns-centre", "cross"):
        blocked |= {(1, r) for r in range(3)}
    if road in ("ew-middle", "cross"):
        blocked |= {(c, 1) for c in range(3)}
    return [(c, r) for r in range(3) for c in range(3) if (c, r) not in blocked]


def random_scene(rng: random.Random, style: CityStyle = DEMO) -> Scene:
    road = rng.choice(style.roads)
    cells = _free_cells(road)
    rng.shuffle(cells)
    colours, shapes = list(style.colours), style.shapes
    main = Feature("main", cells.pop(), rng.choice(colours), rng.choice(shapes), rng.random() < 0.5)
    others: list[Feature] = []
    for kind in rng.sample(style.features, k=rng.randint(*style.extra_features)):
        if not cells:
            break
        cell = cells.pop()
        if kind == "building":
            colour = rng.choice([c for c in colours if c != main.colour])
            others.append(Feature("building", cell, colour, rng.choice(shapes)))
        else:
            others.append(Feature(kind, cell))
    return Scene(road, main, others)


# -- drawing ------------------------------------------------------------------------------------
def _cell_box(cell: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    c, r = cell
    return (c * CELL + margin, r * CELL + margin, (c + 1) * CELL - margin, (r + 1) * CELL - margin)


def _draw_building(draw: ImageDraw.ImageDraw, f: Feature, rng: random.Random, style: CityStyle) -> None:
    x0, y0, x1, y1 = _cell_box(f.cell, 3 if f.large else 9)
    colour = style.colours[f.colour]
    outline = tuple(max(0, v - 60) for v in colour)
    if f.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour, outline=outline, width=2)
    elif f.shape == "rectangular":
        if rng.random() < 0.5:
            mid = (y0 + y1) // 2
            draw.rectangle(
                (x0, mid - (y1 - y0) // 4, x1, mid + (y1 - y0) // 4), fill=colour, outline=outline, width=2
            )
        else:
            mid = (x0 + x1) // 2
            draw.rectangle(
                (mid - (x1 - x0) // 4, y0, mid + (x1 - x0) // 4, y1), fill=colour, outline=outline, width=2
            )
    elif f.shape == "l-shaped":
        w = (x1 - x0) // 2
        draw.rectangle((x0, y0, x0 + w, y1), fill=colour, outline=outline, width=2)
        draw.rectangle((x0, y1 - w, x1, y1), fill=colour, outline=outline, width=2)
    elif f.shape == "t-shaped":
        third = (x1 - x0) // 3
        draw.rectangle((x0, y0, x1, y0 + third), fill=colour, outline=outline, width=2)
        draw.rectangle((x0 + third, y0, x1 - third, y1), fill=colour, outline=outline, width=2)
    elif f.shape == "u-shaped":
        third = (x1 - x0) // 3
        draw.rectangle((x0, y0, x0 + third, y1), fill=colour, outline=outline, width=2)
        draw.rectangle((x1 - third, y0, x1, y1), fill=colour, outline=outline, width=2)
        draw.rectangle((x0, y1 - third, x1, y1), fill=colour, outline=outline, width=2)
    else:
        draw.ellipse((x0, y0, x1, y1), fill=colour, outline=outline, width=2)


_Box = tuple[int, int, int, int]  # a cell's (x0, y0, x1, y1) in pixels, as `_cell_box` gives it


def _draw_feature(draw: ImageDraw.ImageDraw, f: Feature, rng: random.Random) -> None:
    """Draw a non-building feature in its cell; a kind without a drawing is left out.

    Only the trees draw from `rng`: the other kinds must not, or every later tile of the city
    would change.
    """
    box = _cell_box(f.cell, 4)
    if f.kind == "water":
        _draw_water(draw, box)
    elif f.kind == "trees":
        _draw_trees(draw, box, rng)
    elif f.kind == "parking":
        _draw_parking(draw, box)
    elif f.kind == "field":
        _draw_field(draw, box)
    elif f.kind == "pitch":
        _draw_pitch(draw, box)
    elif f.kind == "plaza":
        _draw_plaza(draw, box)


def _draw_water(draw: ImageDraw.ImageDraw, box: _Box) -> None:
    """A pond: a blue ellipse a little flatter than its cell."""
    x0, y0, x1, y1 = box
    draw.ellipse((x0, y0 + 4, x1, y1 - 4), fill=(30, 110, 190))


def _draw_trees(draw: ImageDraw.ImageDraw, box: _Box, rng: random.Random) -> None:
    """Seven tree crowns of random size, at random places kept off the cell's edge."""
    x0, y0, x1, y1 = box
    for _ in range(7):
        cx, cy, radius = rng.randint(x0 + 6, x1 - 6), rng.randint(y0 + 6, y1 - 6), rng.randint(4, 7)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(20, 90, 30))


def _draw_parking(draw: ImageDraw.ImageDraw, box: _Box) -> None:
    """Grey tarmac with two rows of white bay lines, one above and one below the middle."""
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1, y1), fill=(95, 95, 100))
    for x in range(x0 + 4, x1, 6):
        draw.line((x, y0 + 2, x, (y0 + y1) // 2 - 2), fill=(235, 235, 235))
        draw.line((x, (y0 + y1) // 2 + 2, x, y1 - 2), fill=(235, 235, 235))


def _draw_field(draw: ImageDraw.ImageDraw, box: _Box) -> None:
    """A ploughed field: horizontal stripes in two alternating earth colours."""
    x0, y0, x1, y1 = box
    for i, y in enumerate(range(y0, y1, 5)):
        draw.rectangle((x0, y, x1, y + 4), fill=(190, 160, 80) if i % 2 else (160, 140, 60))


def _draw_pitch(draw: ImageDraw.ImageDraw, box: _Box) -> None:
    """A sports pitch: green with a white outline and a halfway line."""
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1, y1), fill=(60, 140, 60), outline=(245, 245, 245), width=1)
    draw.line(((x0 + x1) // 2, y0, (x0 + x1) // 2, y1), fill=(245, 245, 245))


def _draw_plaza(draw: ImageDraw.ImageDraw, box: _Box) -> None:
    """A paved plaza: a checkerboard of two stone shades."""
    x0, y0, x1, y1 = box
    for i, x in enumerate(range(x0, x1, 6)):
        for j, y in enumerate(range(y0, y1, 6)):
            draw.rectangle((x, y, x + 5, y + 5), fill=(205, 200, 190) if (i + j) % 2 else (180, 175, 165))


def _draw_roads(draw: ImageDraw.ImageDraw, road: str) -> None:
    grey, half = (120, 120, 120), 7
    centres = {"left": CELL // 2 - 6, "centre": TILE_PIXELS // 2, "right": TILE_PIXELS - CELL // 2 + 6}
    rows = {"top": CELL // 2 - 6, "middle": TILE_PIXELS // 2, "bottom": TILE_PIXELS - CELL // 2 + 6}
    vertical = {"ns-left": "left", "ns-centre": "centre", "ns-right": "right", "cross": "centre"}
    horizontal = {"ew-top": "top", "ew-middle": "middle", "ew-bottom": "bottom", "cross": "middle"}
    if road in vertical:
        x = centres[vertical[road]]
        draw.rectangle((x - half, 0, x + half, TILE_PIXELS), fill=grey)
    if road in horizontal:
        y = rows[horizontal[road]]
        draw.rectangle((0, y - half, TILE_PIXELS, y + half), fill=grey)


def draw_scene(scene: Scene, rng: random.Random, style: CityStyle = DEMO) -> Image.Image:
    red, green, blue = style.ground
    base = (red + rng.randint(-10, 10), green + rng.randint(-15, 15), blue + rng.randint(-10, 10))
    image = Image.new("RGB", (TILE_PIXELS, TILE_PIXELS), base)
    draw = ImageDraw.Draw(image)
    # Ground texture, so that no two tiles are pixel-identical.
    for _ in range(60):
        x, y = rng.randrange(TILE_PIXELS), rng.randrange(TILE_PIXELS)
        shade = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in base)
        draw.rectangle((x, y, x + 2, y + 2), fill=shade)
    _draw_roads(draw, scene.road)
    for f in scene.others:
        if f.kind == "building":
            _draw_building(draw, f, rng, style)
        else:
            _draw_feature(draw, f, rng)
    _draw_building(draw, scene.main, rng, style)
    return image


# -- describing ---------------------------------------------------------------------------------
def _relation(a: tuple[int, int], b: tuple[int, int]) -> str:
    """Where cell a lies as seen from cell b, in words."""
    dc, dr = a[0] - b[0], a[1] - b[1]
    vertical = "above" if dr < 0 else "below" if dr > 0 else ""
    horizontal = "to the left of" if dc < 0 else "to the right of" if dc > 0 else ""
    if vertical and horizontal:
        return f"{vertical} and {horizontal.replace('to the ', '')}"
    return vertical or horizontal


def _building_phrase(f: Feature, rng: random.Random, style: CityStyle) -> str:
    words = []
    if f.kind == "main" and rng.random() < 0.5:
        words.append("large" if f.large else "small")
    words.append(rng.choice(style.colour_words[f.colour]))
    if rng.random() < 0.75:
        words.append(rng.choice(style.shape_words[f.shape]))
    words.append(rng.choice(style.building_words))
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def describe(scene: Scene, rng: random.Random, style: CityStyle = DEMO) -> str:
    main = scene.main
    cell_words = style.cell_words
    clauses = [f"{_building_phrase(main, rng, style)} {rng.choice(cell_words[main.cell])}"]
    # Partial mentions: each other feature is left out now and then.
    for f in scene.others:
        if rng.random() < 0.2:
            continue
        thing = (
            _building_phrase(f, rng, style)
            if f.kind == "building"
            else rng.choice(style.feature_words[f.kind])
        )
        if rng.random() < 0.5:
            clauses.append(f"{thing} {rng.choice(cell_words[f.cell])}")
        else:
            it = rng.choice(["it", "the main building", "that building"])
            clauses.append(f"{thing} {_relation(f.cell, main.cell)} {it}")
    if scene.road != "none" and rng.random() < 0.85:
        clauses.append(rng.choice(style.road_words[scene.road]))
    first, rest = clauses[0], clauses[1:]
    rng.shuffle(rest)
    text = rng.choice(style.openings) + first
    for clause in rest:
        # "with" joins noun phrases only, not a clause that has its own verb.
        joiners = [", ", " and ", "; "] + ([", with "] if not any(verb in clause for verb in VERBS) else [])
        text += rng.choice(joiners) + clause
    return text


# -- the city -----------------------------------------------------------------------------------
ORIGIN = (40.7000, -74.0200)  # lat, lon of the city's north-west corner
TILE_DEGREES = 0.0015  # about 150 m of latitude per tile
# The city as one georeferenced raster (`geotiff=True`): UTM zone 18 north, the zone of its
# origin, with each tile 150 m square on the ground.
UTM_CRS = "EPSG:32618"
TILE_METRES = 150.0
RASTER_NAME = "city.tif"


class _Layout:
    """Where tile number i lies: its centre and footprint, on a lat/lon grid or in UTM."""

    def __init__(self, columns: int, geotiff: bool):
        self.columns = columns
        self.geotiff = geotiff
        if geotiff:
            from pyproj import Transformer

            self.to_wgs84 = Transformer.from_crs(UTM_CRS, "EPSG:4326", always_xy=True)
            east, north = Transformer.from_crs("EPSG:4326", UTM_CRS, always_xy=True).transform(
                ORIGIN[1], ORIGIN[0]
            )
            # Whole metres: a tidy geotransform, and the tile grid the cutter finds again.
            self.west, self.north = round(east), round(north)

    def place(self, i: int) -> tuple[float, float, list[list[float]]]:
        """(lat, lon, footprint ring) of tile i."""
        from geoloc.geodata.footprint import box_ring, make_ring

        row, col = divmod(i, self.columns)
        if not self.geotiff:
            lon_step = TILE_DEGREES / math.cos(math.radians(ORIGIN[0]))
            north, west = ORIGIN[0] - row * TILE_DEGREES, ORIGIN[1] + col * lon_step
            ring = box_ring(west, north - TILE_DEGREES, west + lon_step, north)
            # The centre as it was always computed, so the coordinates of a seeded city stay put.
            lat = ORIGIN[0] - (row + 0.5) * TILE_DEGREES
            lon = ORIGIN[1] + (col + 0.5) * TILE_DEGREES / math.cos(math.radians(ORIGIN[0]))
            return lat, lon, ring
        x0, y0 = self.west + col * TILE_METRES, self.north - row * TILE_METRES
        corners = [
            (x0, y0),
            (x0, y0 - TILE_METRES),
            (x0 + TILE_METRES, y0 - TILE_METRES),
            (x0 + TILE_METRES, y0),
        ]
        ring = make_ring([self.to_wgs84.transform(x, y) for x, y in corners])
        lon, lat = self.to_wgs84.transform(x0 + TILE_METRES / 2, y0 - TILE_METRES / 2)
        return lat, lon, ring

    def transform(self) -> Any:
        from rasterio.transform import from_origin

        return from_origin(self.west, self.north, TILE_METRES / TILE_PIXELS, TILE_METRES / TILE_PIXELS)


def _open_raster(path: Path, layout: _Layout, tiles: int) -> Any:
    import rasterio

    rows = math.ceil(tiles / layout.columns)
    return rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=layout.columns * TILE_PIXELS,
        height=rows * TILE_PIXELS,
        count=3,
        dtype="uint8",
        crs=UTM_CRS,
        transform=layout.transform(),
        nodata=0,  # the cells after the last tile; drawn scenes never hold a pure black pixel
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        photometric="RGB",
    )


def generate_city(
    out: str | Path,
    tiles: int = 1200,
    seed: int = 0,
    texts_per_tile: int = 4,
    val_share: float = 0.1,
    test_share: float = 0.1,
    geotiff: bool = False,
    style: CityStyle = DEMO,
) -> Path:
    """Write `tiles` scenes and their descriptions under `out`; return the manifest's path.

    With `geotiff`, the city is also written as one georeferenced raster, `out/city.tif`, in UTM
    (tile i at column i % columns, row i // columns, TILE_METRES square), and the manifest's
    coordinates and footprints are those of the raster. The scenes and descriptions are the same
    either way, for the same seed. `style` is the city's look and vocabulary (DEMO, HOLDOUT).
    """
    if tiles < 3:
        raise ValueError("a synthetic city needs at least 3 tiles (train, val and test)")
    out = Path(out)
    rng = random.Random(seed)
    columns = math.ceil(math.sqrt(tiles))
    layout = _Layout(columns, geotiff)
    order = list(range(tiles))
    rng.shuffle(order)
    n_test = max(1, round(tiles * test_share))
    n_val = max(1, round(tiles * val_share))
    split_of = {i: "test" for i in order[:n_test]} | {i: "val" for i in order[n_test : n_test + n_val]}
    rows = []
    (out / "tiles").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        raster = None
        if geotiff:
            tmp = stack.enter_context(atomic.atomic_path(out / RASTER_NAME))
            raster = stack.enter_context(_open_raster(tmp, layout, tiles))
        for i in range(tiles):
            tile_rng = random.Random(rng.getrandbits(64))
            scene = random_scene(tile_rng, style)
            image = draw_scene(scene, tile_rng, style)
            key = f"tiles/{i:06d}.png"
            with atomic.atomic_path(out / key) as tmp_png:
                image.save(tmp_png, format="PNG")
            if raster is not None:
                _write_tile(raster, image, i, columns)
            texts: list[str] = []
            for _ in range(texts_per_tile * 3):
                text = describe(scene, tile_rng, style)
                if text not in texts:
                    texts.append(text)
                if len(texts) == texts_per_tile:
                    break
            lat, lon, ring = layout.place(i)
            rows.append(
                {
                    "image": key,
                    "texts": texts,
                    "lat": round(lat, 7),
                    "lon": round(lon, 7),
                    "group": f"{i:06d}",
                    "split": split_of.get(i, "train"),
                    "footprint": {"type": "Polygon", "coordinates": [ring]},
                }
            )
    from geoloc.data.manifest import write_manifest

    manifest = out / "manifest.jsonl"
    write_manifest(manifest, rows)
    return manifest


def _write_tile(raster: Any, image: Image.Image, i: int, columns: int) -> None:
    import numpy as np
    from rasterio.windows import Window

    row, col = divmod(i, columns)
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    raster.write(pixels, window=Window(col * TILE_PIXELS, row * TILE_PIXELS, TILE_PIXELS, TILE_PIXELS))
