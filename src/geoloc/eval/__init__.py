"""Evaluation: retrieval metrics for text-to-image and image-to-text geo-localization."""
