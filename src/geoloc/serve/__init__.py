"""Serving a search index over HTTP (FastAPI + uvicorn), with a web page and a map."""
