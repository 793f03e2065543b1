import json
from pathlib import Path

import numpy as np

from geoloc.cli import main
from geoloc.distance import haversine_km
from geoloc.index.store import read_index


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_build_search_explain_add_remove_from_the_command_line(
    lora_model: Path, tiny_city: Path, tmp_path: Path, capsys
) -> None:
    index = str(tmp_path / "index")
    status, out, _ = run(
        [
            "index",
            "build",
            str(lora_model),
            "--gallery",
            str(tiny_city),
            "--out",
            index,
            "--split",
            "train",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert status == 0 and "indexed 32 tiles (exact, dimension 128)" in out

    status, out, _ = run(["search", index, "a red building by a pond", "-k", "3", "--json"], capsys)
    answer = json.loads(out)
    assert status == 0 and [r["rank"] for r in answer["results"]] == [1, 2, 3]
    assert set(answer["results"][0]) >= {"score", "key", "lat", "lon"}
    scores = [r["score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True)

    status, out, _ = run(["search", index, "a red building by a pond", "-k", "2"], capsys)
    assert status == 0 and answer["results"][0]["key"] in out and "score" in out.splitlines()[0]

    status, out, _ = run(
        [
            "explain",
            index,
            "a red building by a pond",
            "--top",
            "2",
            "--rerank",
            "--max-new-tokens",
            "3",
            "--json",
        ],
        capsys,
    )
    explained = json.loads(out)["results"]
    assert status == 0 and len(explained) == 2
    assert all(isinstance(r["explanation"], str) for r in explained)
    judgements = [r["judgement"] for r in explained]
    assert judgements == sorted(judgements, reverse=True)

    status, out, _ = run(["index", "add", index, "--gallery", str(tiny_city), "--split", "test"], capsys)
    assert status == 0 and "added 4 tiles" in out and read_index(index).manifest["count"] == 36
    first = read_index(index).tiles.key[0]
    status, out, _ = run(["index", "remove", index, first], capsys)
    assert status == 0 and "removed 1 tiles" in out and first not in read_index(index).tiles.key


def test_command_line_errors_are_one_line(city_index: Path, tmp_path: Path, capsys) -> None:
    cases = [
        (["search", str(city_index), "", "-k", "3"], "the query is empty"),
        (["search", str(city_index), "a pond", "-k", "1001"], "k must be between 1 and 1000"),
        (["search", str(tmp_path / "nothing"), "a pond"], "no such folder"),
        (
            ["search", str(city_index), "a pond", "--model", "tiny-smolvlm"],
            "the query model is a different one",
        ),
        (["index", "remove", str(city_index), "nope.png"], "no tile with key 'nope.png'"),
        (
            ["index", "build", "tiny-smolvlm", "--gallery", str(tmp_path), "--out", str(tmp_path / "i")],
            "no manifest",
        ),
    ]
    for argv, message in cases:
        status, _, err = run(argv, capsys)
        assert status == 2, argv
        assert err.startswith("geoloc: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "i").exists()


def test_index_build_skips_and_lists_bad_tiles_when_asked(tiny_city: Path, tmp_path: Path, capsys) -> None:
    import shutil

    gallery = tmp_path / "gallery"
    shutil.copytree(tiny_city.parent, gallery)
    rows = [json.loads(line) for line in (gallery / "manifest.jsonl").read_text().splitlines()]
    (gallery / rows[3]["image"]).write_bytes(b"not an image at all")  # a corrupt tile
    args = ["index", "build", "tiny-smolvlm", "--gallery", str(gallery), "--out", str(tmp_path / "idx")]
    assert main([*args, "--no-cache"]) == 2
    assert rows[3]["image"] in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()

    assert main([*args, "--no-cache", "--on-bad-record", "skip"]) == 0
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["count"] == len(rows) - 1
    listed = [json.loads(line) for line in (tmp_path / "idx.skipped_records.jsonl").read_text().splitlines()]
    assert len(listed) == 1 and rows[3]["image"] in json.dumps(listed[0])


def test_search_within_a_box_a_geojson_file_or_a_radius(
    city_index: Path, search_index, tmp_path: Path, capsys
) -> None:
    from geoloc.index.region import Region

    query = "a red building by a pond"
    tiles = search_index.stored.tiles
    lat, lon = np.array(tiles.lat, dtype=np.float64), np.array(tiles.lon, dtype=np.float64)
    west, south, east, north = lon.min(), lat.min(), np.median(lon), np.median(lat)
    box = Region.bbox(west, south, east, north)
    expected = [hit.key for hit in search_index.search(query, 40, box)]
    assert 3 < len(expected) < len(search_index)
    square = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    area = tmp_path / "area.geojson"
    area.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}}))
    for within in (f"{west},{south},{east},{north}", str(area)):
        status, out, _ = run(
            ["search", str(city_index), query, "-k", "40", f"--within={within}", "--json"], capsys
        )
        assert status == 0 and [r["key"] for r in json.loads(out)["results"]] == expected, within

    centre = f"{lat[0]},{lon[0]}"
    status, out, _ = run(
        ["search", str(city_index), query, f"--near={centre}", "--radius-km", "0.2", "--json"], capsys
    )
    results = json.loads(out)["results"]
    assert (
        status == 0
        and results
        and all(haversine_km(lat[0], lon[0], r["lat"], r["lon"]) <= 0.2 for r in results)
    )
    assert len(results) < len(search_index)

    for argv, message in [
        (["--within", "1,2,3"], "neither W,S,E,N"),
        (["--within", "0,95,1,96"], "latitude 95.0 is not between -90 and 90"),
        (["--near", "1,2"], "--near needs --radius-km"),
        (["--radius-km", "3"], "--radius-km needs --near"),
    ]:
        status, _, err = run(["search", str(city_index), query, *argv], capsys)
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, argv
