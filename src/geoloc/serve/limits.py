"""The server's limits that the command line needs to build its parser, without importing FastAPI."""

from __future__ import annotations

MAX_BODY_BYTES = 32 * 1024
"""The default request body limit. A query is at most MAX_QUERY_CHARS characters, and JSON may
escape each as a surrogate pair, "\\ud83d\\ude00", 12 bytes: the limit lets every schema-valid
body through."""
