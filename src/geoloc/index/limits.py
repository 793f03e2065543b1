"""The search's choices and limits that the command line needs to build its parser.

Kept apart from `ann` and `search` so that `geoloc --help` and argument errors answer without
importing faiss, torch or transformers.
"""

from __future__ import annotations

KINDS: tuple[str, ...] = ("exact", "ivf", "hnsw", "ivf-pq", "sq8")
"""The index kinds `geoloc index build --kind` offers; `ann` builds each (and checks it has these)."""
MAX_K = 1000
"""The most tiles one search returns."""
MAX_QUERY_CHARS = 2000
"""The longest query: far beyond what the model reads (max_text_tokens), and cheap to refuse."""
