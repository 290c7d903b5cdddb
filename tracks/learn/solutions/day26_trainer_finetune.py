"""Day 26: a Trainer fine-tune (reference: tracks/hf_finetune.py `finetune`)."""

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
    trainer = Trainer(
        model=model, args=arguments(out_dir), train_dataset=train_dataset, eval_dataset=eval_dataset
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    return {"eval_loss_before": before, "eval_loss_after": after}
