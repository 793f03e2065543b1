"""Data loading: manifests that list images with their descriptions, and safe image decoding."""
