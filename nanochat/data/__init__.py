"""Data: pretraining text shards (parquet), conversation files (JSONL) and the demo corpora.

See docs/data.md for the formats, the demo sources and their licences, and how to use your own data.
"""
