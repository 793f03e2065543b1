"""geoloc: find the satellite tile a person describes, with a multimodal LLM as retriever."""

__version__ = "0.1.0"
