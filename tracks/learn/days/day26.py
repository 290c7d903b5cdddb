"""Day 26: a Trainer fine-tune of a tiny local GPT-2 on a repeating sentence; losses are re-measured."""

from __future__ import annotations

import tempfile
from types import ModuleType

from tracks.learn.core import Exercise, Failure

SENTENCE = ["the", "cat", "sat", "on", "a", "mat", "and", "the", "dog", "ran", "to", "the", "sun"]


def sequences(tokenizer, offsets: range, length: int = 8) -> list[dict]:
    ids = tokenizer.convert_tokens_to_ids(SENTENCE * 3)
    return [{"input_ids": ids[o : o + length], "labels": ids[o : o + length]} for o in offsets]


def eval_loss(model, dataset: list[dict]) -> tuple[float, float]:
    """The mean loss per predicted token, and the same sum divided by every label token (what some
    transformers versions' Trainer.evaluate reports): either is accepted."""
    import torch

    model.eval()
    with torch.no_grad():
        ids = torch.tensor([row["input_ids"] for row in dataset])
        loss = float(model(input_ids=ids, labels=ids).loss)
    return loss, loss * (ids.shape[1] - 1) / ids.shape[1]


def matches(value: float, losses: tuple[float, float]) -> bool:
    return any(abs(value - loss) < 1e-3 for loss in losses)


def check(module: ModuleType) -> None:
    from tracks.learn.tiny_hf import tiny_gpt2, tiny_tokenizer

    tokenizer, model = tiny_tokenizer(), tiny_gpt2()
    train = sequences(tokenizer, range(0, 12)) * 2
    held_out = sequences(tokenizer, range(12, 20))
    given = "a tiny GPT-2 (local config); 24 training and 8 held-out windows of a repeating sentence"
    want_before, train_before = eval_loss(model, held_out), eval_loss(model, train)
    with tempfile.TemporaryDirectory() as out_dir:
        got = module.finetune(model, train, held_out, out_dir)
    if not isinstance(got, dict) or not {"eval_loss_before", "eval_loss_after"} <= set(got):
        raise Failure(
            "the result lacks the two losses",
            given,
            "{'eval_loss_before', 'eval_loss_after'}",
            repr(got)[:120],
            "trainer.evaluate() returns a dict with 'eval_loss'",
        )
    before, after = float(got["eval_loss_before"]), float(got["eval_loss_after"])
    if not matches(before, want_before):
        hint = "evaluate before training, on eval_dataset"
        if matches(before, train_before):
            hint = "that is the loss on the training data: pass eval_dataset=eval_dataset to the Trainer"
        raise Failure(
            "eval_loss_before is not the held-out loss of the untrained model",
            given,
            f"{want_before[0]:.4f}",
            f"{before:.4f}",
            hint,
        )
    want_after = eval_loss(model, held_out)
    if not matches(after, want_after):
        raise Failure(
            "eval_loss_after is not the held-out loss of the trained model",
            given,
            f"{want_after[0]:.4f}",
            f"{after:.4f}",
            "evaluate again after trainer.train(), on eval_dataset",
        )
    if after > 0.5 * before:
        hint = (
            "call trainer.train() between the two evaluations"
            if abs(after - before) < 1e-6
            else ("the learning rate or the number of steps is too small to learn a repeating sentence")
        )
        raise Failure(
            "the model did not learn",
            given,
            f"held-out loss below {0.5 * before:.3f}",
            f"{before:.3f} → {after:.3f}",
            hint,
        )


HINTS = (
    "Trainer(model=..., args=arguments(out_dir), train_dataset=..., eval_dataset=...) does the loop.",
    "trainer.evaluate()['eval_loss'] before and after trainer.train().",
    "before = trainer.evaluate()['eval_loss']; trainer.train(); after = trainer.evaluate()['eval_loss'].",
)
EXERCISE = Exercise(
    26,
    "trainer_finetune",
    "a Trainer fine-tune",
    "intermediate",
    HINTS,
    ("tracks/hf_finetune.py: finetune (tests/tracks/test_hf_finetune.py)",),
    check,
)
