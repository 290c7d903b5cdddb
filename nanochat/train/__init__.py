"""Training: tokenizer, base pretraining, SFT; optimizers, data loading, run tracking."""
