"""HTTP routes, thin: `completions` (OpenAI's /v1/...), `web` (nanochat's /chat/completions), `classify`
(/v1/classify), `health` (probes, stats, metrics). What they share lives in `serving` (the one generation
pipeline, `prepare_generation`, and the streams), `deps` (the Runtime and the request id as dependencies)
and `middleware` (request ids, API keys, body size)."""
