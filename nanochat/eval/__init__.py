"""Evaluation: bits per byte, sampling, chat tasks (multiple choice and exact match), tokenizer compression."""
