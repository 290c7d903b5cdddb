"""Data: pretraining text shards (parquet), conversation files (JSONL) and the demo corpora."""
