"""The inference service: a FastAPI app over the nanochat engine (OpenAI-compatible API, web chat)."""
