"""Start-up: `geoloc --help` and argument errors answer without importing the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "fastapi", "uvicorn", "faiss", "rasterio", "pyarrow", "numpy")

# In a fresh interpreter: the parser with every command, a few parses, --help and a bad
# argument through main(); then which heavy libraries got imported.
SCRIPT = """
import contextlib, io, json, sys
from geoloc.cli import build_parser, main
parser = build_parser()
parser.parse_args(["index", "build", "m", "--gallery", "g", "--out", "o", "--kind", "ivf-pq"])
parser.parse_args(["serve", "idx", "--max-body-bytes", "1000"])
parser.parse_args(["search", "idx", "a pond", "-k", "5"])
codes = []
for argv in (["--help"], ["search", "idx", "a pond", "-k", "many"], ["index", "build", "m"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exit:
            codes.append(exit.code)
print(json.dumps({"codes": codes, "heavy": [m for m in HEAVY if m in sys.modules]}))
"""


def test_parsing_commands_imports_no_heavy_library() -> None:
    run = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{SCRIPT}"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result["codes"] == [0, 2, 2]  # --help, then two argument errors
    assert result["heavy"] == [], f"imported while only parsing arguments: {result['heavy']}"
