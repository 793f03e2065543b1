"""The encoder: one multimodal LLM that embeds both text queries and satellite tiles."""
