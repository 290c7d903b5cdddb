"""The same text classification with a small transformer fine-tuned by `transformers.Trainer`.

The backbone is any causal LM folder (the default is the exported nanochat demo model): a linear head on
the hidden state of each text's last token (transformers' `GenericForSequenceClassification`, the way
Llama-style classifiers work), every weight trained. Data, split and metrics are the scikit-learn
track's (`dataset.stratified_split`, `report.evaluate`-style figures), so the two land in one table.

It deliberately stays small: a 2-million-parameter backbone trained on CPU for a few epochs. Do not
expect it to beat TF-IDF on five thousand short jokes; the point is to see why.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from tracks.classify.dataset import DatasetError, LabeledTexts, stratified_split


def sequence_classifier(backbone: str | os.PathLike[str], labels: list[str]):
    """A classification model over a causal LM folder (new head, backbone weights loaded)."""
    from transformers import AutoConfig
    from transformers.modeling_layers import GenericForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(backbone)
    causal_lm = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    base_class = next(c for c in causal_lm.__mro__[1:] if c.__name__.endswith("PreTrainedModel"))
    model_class = type(
        f"{base_class.__name__.removesuffix('PreTrainedModel')}ForSequenceClassification",
        (GenericForSequenceClassification, base_class),
        {},
    )
    return model_class.from_pretrained(
        backbone,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        dtype=torch.float32,
    )


def train_transformer_classifier(
    backbone: str | os.PathLike[str],
    data: LabeledTexts,
    out: str | os.PathLike[str],
    epochs: float = 3.0,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    max_len: int = 128,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """Fine-tune on the training split, evaluate on the held-out split; saves the model and metrics.json."""
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoTokenizer, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    if epochs <= 0 or batch_size < 1 or max_len < 2:
        raise DatasetError("epochs must be > 0, batch_size >= 1 and max_len >= 2")
    torch.manual_seed(seed)
    train, test = stratified_split(data, test_fraction, seed)
    labels = train.classes
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    if tokenizer.pad_token_id is None:
        raise DatasetError(f"{backbone}: the tokenizer has no padding token; set one before training")
    model = sequence_classifier(backbone, labels)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-padding token
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    def encode(texts: LabeledTexts) -> list[dict[str, Any]]:
        rows = tokenizer(texts.texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        index = {label: i for i, label in enumerate(labels)}
        return [
            {"input_ids": (bos + ids)[:max_len], "label": index[label]}
            for ids, label in zip(rows, texts.labels, strict=True)
        ]

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            ids[row, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            mask[row, : len(e["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([e["label"] for e in batch])}

    train_rows, test_rows = encode(train), encode(test)
    args = TrainingArguments(
        output_dir=str(Path(out) / ".trainer"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0.05,  # a float below 1 is a fraction of the steps
        weight_decay=0.01,
        logging_steps=20,
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, data_collator=collate)
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start

    model.eval()
    predicted: list[int] = []
    with torch.inference_mode():
        for i in range(0, len(test_rows), 64):
            batch = collate(test_rows[i : i + 64])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            predicted += logits.argmax(-1).tolist()
        singles = []
        for row in test_rows[:100]:
            batch = collate([row])
            t0 = time.perf_counter()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            singles.append((time.perf_counter() - t0) * 1000)
    truth = [row["label"] for row in test_rows]
    metrics = {
        "backbone": str(backbone),
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
        "train_examples": len(train_rows),
        "test_examples": len(test_rows),
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(float(f1_score(truth, predicted, average="macro")), 4),
        "train_seconds": round(train_seconds, 1),
        "single_text_ms_p50": round(statistics.median(singles), 3),
        "train_losses": [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e],
        "dataset_sha256": data.sha256(),
        "split": {"test_fraction": test_fraction, "seed": seed},
    }
    out_dir = Path(out)
    shutil.rmtree(out_dir / ".trainer", ignore_errors=True)  # Trainer's scratch folder
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def comparison_markdown(sklearn_report: dict[str, Any], transformer: dict[str, Any]) -> str:
    """One table: the saved scikit-learn model's held-out figures next to the transformer's."""
    if sklearn_report["dataset"]["sha256"] != transformer["dataset_sha256"]:
        raise DatasetError("the two models were not evaluated on the same data (dataset hashes differ)")
    test, lat = sklearn_report["test"], sklearn_report["latency"]
    losses = " → ".join(f"{x:.2f}" for x in _ends(transformer["train_losses"]))
    rows = [
        ("TF-IDF + " + sklearn_report["model"], test["accuracy"], test["macro_f1"],
         sklearn_report["train_seconds"], lat["single_text_ms_p50"], "-"),
        (f"transformer ({transformer['parameters']:,} params, {transformer['epochs']:g} epochs)",
         transformer["accuracy"], transformer["macro_f1"], transformer["train_seconds"],
         transformer["single_text_ms_p50"], losses),
    ]  # fmt: skip
    lines = [
        f"# {sklearn_report['dataset']['name']}: scikit-learn vs a fine-tuned transformer",
        "",
        f"Same data (sha256 `{transformer['dataset_sha256'][:16]}…`), same stratified split "
        f"({transformer['test_examples']} held-out texts), CPU.",
        "",
        "| model | accuracy | macro-F1 | train s | ms per text (one at a time) | train loss first → last |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {a:.3f} | {f:.3f} | {t:.1f} | {ms:.2f} | {loss} |" for m, a, f, t, ms, loss in rows]
    return "\n".join(lines) + "\n"


def _ends(values: list[float]) -> list[float]:
    return [values[0], values[-1]] if values else []
