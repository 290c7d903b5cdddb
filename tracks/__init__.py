"""The learning tracks, beside the engine: what you learn with, not what the service runs.

- `classify/`: scikit-learn text classifiers, the guardrail's training and evaluation, a transformer
  baseline (`nanochat classify …`; docs/classify.md);
- `pytorch/`: PyTorch exercises with tests as their answer key (docs/learn/README.md);
- `hf_finetune`: Hugging Face full vs LoRA fine-tuning vs nanochat SFT (`nanochat hf …`; docs/hf.md);
- `daily_log`: `nanochat log draft`, the day's learning-log entry (docs/learning-path.md).

The tracks may import the engine (`nanochat`) and the service's model loader (`app.classifiers`, for the
registry they write to); nothing in `nanochat/` or `app/` imports them. Their `nanochat` subcommands are
entry points of the group `nanochat.commands` (pyproject.toml). Extra: `pip install -e '.[tracks]'`.
"""
