"""Bearer-token access for a server a team shares.

The token comes from the environment (`GEOLOC_API_TOKEN`) or a file (`--token-file`), never from
the command line, where other users of the machine could read it in the process list. Every
request for data (search, explain, heat map, tiles, health) must carry `Authorization: Bearer
TOKEN`; without it, or with another token, the answer is 401 and says nothing about the index.
The page, its static files and the API's description (no tile keys in it) stay open, so a
browser can load the page that then asks for the token. Tokens are compared as SHA-256 digests
with `hmac.compare_digest`: in constant time, whatever their lengths.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from geoloc.errors import GeolocError

ENV = "GEOLOC_API_TOKEN"
MIN_CHARS = 16
HOW = "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > token.txt"
OPEN_PATHS = frozenset({"/", "/docs", "/openapi.json"})


def read_token(token_file: str | Path | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The server's token: from `token_file` if given, else from $GEOLOC_API_TOKEN; None if neither."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise GeolocError(f"{token_file}: cannot read the token ({error})") from error
        where = str(token_file)
    elif environ.get(ENV):
        token, where = environ[ENV].strip(), f"${ENV}"
    else:
        return None
    if len(token) < MIN_CHARS or any(c.isspace() for c in token):
        raise GeolocError(
            f"{where}: the token must be at least {MIN_CHARS} characters without spaces ({HOW})"
        )
    return token


def is_open(path: str) -> bool:
    """Paths served without the token: the page, its static files, the API's description."""
    return path in OPEN_PATHS or path.startswith("/static/")


def authorised(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` as a bearer token (constant time)."""
    scheme, _, given = (header or "").partition(" ")
    same = hmac.compare_digest(
        hashlib.sha256(given.strip().encode()).digest(), hashlib.sha256(token.encode()).digest()
    )
    return same and scheme.lower() == "bearer"
