"""Random, nearby and mined batches compared on two synthetic cities (issue 22, docs/study.md).

The demo's recipe (configs/synthetic-tiny.yaml) trains on each city with each `train.batching`
and training seed; each run's best checkpoint (by validation R@1) is scored on the city's test
tiles. Two cities: the demo's (`geoloc synth`, seed 0, 1,200 tiles), on which methods may be
tuned, and a held-out one never used for tuning (`--style holdout`: another palette, shapes,
features, roads, ground and vocabulary, 900 tiles, city seed 7). Runs go `--jobs` at a time, one
torch thread each; finished runs are kept, so an interrupted comparison continues.

    python benchmarks/batching.py --out runs/batching            # 2 cities x 3 methods x 3 seeds
    python benchmarks/batching.py --out runs/batching --cities holdout --methods random,mined \\
        --set train.false_negative_margin=-2

Prints one row per city and method: the mean and the sample standard deviation over seeds of
test R@1/5/10, the optimizer steps, the training command's wall time and the mining time in it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEOLOC = [sys.executable, "-m", "geoloc"]
CITIES = {  # name: (geoloc synth arguments)
    "demo": ["--tiles", "1200", "--seed", "0"],
    "holdout": ["--tiles", "900", "--seed", "7", "--style", "holdout"],
}


def _run(command: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")


def city(out: Path, name: str) -> Path:
    manifest = out / "cities" / name / "manifest.jsonl"
    if not manifest.is_file():
        out.joinpath("cities").mkdir(parents=True, exist_ok=True)
        _run([*GEOLOC, "synth", str(manifest.parent), *CITIES[name]], out / "cities" / f"{name}.log")
    return manifest


def one_run(out: Path, manifest: Path, city_name: str, method: str, seed: int, overrides: list[str]) -> dict:
    run = out / city_name / f"{method}-seed{seed}"
    result = run / "test" / "metrics.json"
    if not result.is_file():
        sets = [
            f"data.train={manifest}",
            f"train.batching={method}",
            f"train.seed={seed}",
            "train.progress=false",
            "train.num_workers=0",
            *overrides,
        ]
        if run.exists() and not (run / "final").exists():
            shutil.rmtree(run)  # an interrupted run: train it again from the start
        if not (run / "final").exists():
            command = [*GEOLOC, "train", "configs/synthetic-tiny.yaml", "--out", str(run)]
            started = time.perf_counter()
            _run(
                command + [a for s in sets for a in ("--set", s)],
                out / f"{city_name}-{method}-{seed}.train.log",
            )
            (run / "train_time.json").write_text(json.dumps({"train_s": time.perf_counter() - started}))
        _run(
            [
                *GEOLOC,
                "eval",
                str(run),
                "--data",
                str(manifest),
                "--split",
                "test",
                "--out",
                str(run / "test"),
            ]
            + ["--no-cache"],
            out / f"{city_name}-{method}-{seed}.eval.log",
        )
    metrics = json.loads(result.read_text())["text_to_image"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = max(r["step"] for r in logged if r["type"] == "train")
    mining = sum(r["seconds"] for r in logged if r["type"] == "mining")
    timing = json.loads((run / "train_time.json").read_text())
    return {
        "city": city_name,
        "method": method,
        "seed": seed,
        "R@1": metrics["R@1"],
        "R@5": metrics["R@5"],
        "R@10": metrics["R@10"],
        "steps": steps,
        "mining_s": mining,
        "train_s": timing["train_s"],
    }


def summarise(rows: list[dict]) -> str:
    lines = [
        "| city | batching | runs | R@1 | R@5 | R@10 | steps | training s | of which mining s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for city_name, method in dict.fromkeys((r["city"], r["method"]) for r in rows):
        group = [r for r in rows if r["city"] == city_name and r["method"] == method]

        def cell(key: str, digits: int = 1, group: list[dict] = group) -> str:
            values = [r[key] for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"

        lines.append(
            f"| {city_name} | {method} | {len(group)} | {cell('R@1')} | {cell('R@5')} | {cell('R@10')} | "
            f"{cell('steps', 0)} | {cell('train_s', 0)} | {cell('mining_s', 0)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "batching")
    parser.add_argument("--cities", default="demo,holdout")
    parser.add_argument("--methods", default="random,nearby,mined")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one torch thread each")
    parser.add_argument("--set", action="append", default=[], help="a config override for every run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cities = {name: city(args.out, name) for name in args.cities.split(",")}
    plan = [
        (name, method, int(seed))
        for name in cities
        for seed in args.seeds.split(",")
        for method in args.methods.split(",")
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda p: one_run(args.out, cities[p[0]], p[0], p[1], p[2], args.set), plan))
    for row in rows:
        print(json.dumps(row))
    print(summarise(rows))


if __name__ == "__main__":
    main()
