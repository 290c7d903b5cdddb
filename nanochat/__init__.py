"""nanochat: the engine and training code (torch only; no web or cloud code).

Modules: `gpt` (model), `tokenizer`, `checkpoint` (nanochat file layout), `kv_cache`, `engine` (batched
KV-cached generation), `detokenize` (streaming text), `calculator` (the safe tool), `cli`, `bench`.
"""

__version__ = "0.1.0"
