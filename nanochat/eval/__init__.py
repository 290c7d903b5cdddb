"""Evaluation: bits per byte, sampling, chat tasks (multiple choice and exact match), tokenizer compression.

Modules: `bpb` (validation bits per byte and a unigram baseline), `tasks` (ARC, MMLU, GSM8K loaders and a
synthetic arithmetic task), `chat_eval` (the harness over a model and tokenizer), `tokenizer_eval`
(compression against baselines), `commands` (the `nanochat eval ...` command group).
"""


class EvalError(ValueError):
    """An evaluation that cannot run as asked (bad data, arguments or model); the message says what to fix."""
