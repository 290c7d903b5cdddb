"""HTTP routes, thin: `openai` (/v1/...), `web` (nanochat's /chat/completions), `health` (probes, stats,
metrics). What they share lives in `serving` (prompts, limits, streams), `deps` (the Runtime) and
`middleware` (request ids, API keys, body size)."""
