"""Day 26: fine-tune a causal language model with the Hugging Face Trainer.

Write `finetune(model, train_dataset, eval_dataset, out_dir)`: measure the eval loss on eval_dataset,
train on train_dataset for the steps in `arguments`, measure the eval loss again, and return
{"eval_loss_before": ..., "eval_loss_after": ...}. The datasets are lists of {"input_ids", "labels"};
the model computes its own loss from the labels.
"""

from transformers import Trainer, TrainingArguments


def arguments(out_dir: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out_dir,
        max_steps=8,
        learning_rate=2e-2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )


def finetune(model, train_dataset, eval_dataset, out_dir: str) -> dict[str, float]:
    # TODO: a Trainer with the model, the arguments and both datasets; evaluate, train, evaluate
    raise NotImplementedError("the Trainer, two evaluations and the training")
