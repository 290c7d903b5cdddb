"""`nanochat classify train | eval | predict | guard`: the classifiers from the command line.

- `train --dataset fortunes|guardrail|FILE.jsonl`: compare the candidates by cross-validation, fit one,
  evaluate it on the held-out split and save it with its report as the next version in the registry;
- `eval --model DIR`: the saved model's metrics on the held-out split of its own data (checked by hash),
  or on every example of another labeled file;
- `predict --model DIR [TEXT ...]`: one JSON line per text (texts from stdin when none are given);
- `guard [TEXT ...]`: the guardrail's decision per text, as JSON lines.

Errors a user can cause are `ValueError` subclasses from the classify modules: the main CLI prints them as
one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from nanochat.cliargs import int_at_least, non_negative_int, positive_int
from tracks.classify import registry
from tracks.classify.dataset import DEFAULT_CACHE, DatasetError, load_dataset, stratified_split
from tracks.classify.pipelines import CANDIDATES, FEATURES, compact

MIN_FOLDS = 2


def register(subparsers: Any) -> argparse.ArgumentParser:
    classify = subparsers.add_parser("classify", help="text classifiers: train, evaluate, predict, guardrail")
    commands = classify.add_subparsers(dest="classify_command", required=True, parser_class=type(classify))

    train = commands.add_parser("train", help="cross-validate the candidates, fit one, save it with a report")
    train.add_argument("--dataset", required=True, help="fortunes, guardrail, or a JSONL file of text/label")
    train.add_argument("--name", help="model name in the registry (default: the dataset's name)")
    train.add_argument("--version", help="version tag v1, v2, ... (default: the next free one)")
    train.add_argument(
        "--registry", default=str(registry.DEFAULT_ROOT), help="registry root (default models)"
    )
    train.add_argument("--model", choices=CANDIDATES, default="logreg", help="the candidate to save (logreg)")
    train.add_argument("--features", choices=FEATURES, help="default: words+chars for guardrail, else words")
    train.add_argument(
        "--folds", type=int_at_least(MIN_FOLDS, "an integer >= 2"), default=5, help="CV folds (5)"
    )
    train.add_argument("--seed", type=non_negative_int, default=0, help="split and model seed (default 0)")
    train.add_argument("--cache", default=str(DEFAULT_CACHE), help="where downloaded packages are kept")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("eval", help="metrics of a saved model (JSON)")
    evaluate.add_argument("--model", required=True, metavar="DIR", help="models/NAME[/VERSION]")
    evaluate.add_argument("--dataset", help="default: the dataset the model was trained on")
    evaluate.add_argument("--cache", default=str(DEFAULT_CACHE), help="where downloaded packages are kept")
    evaluate.set_defaults(handler=cmd_eval)

    predict = commands.add_parser("predict", help="label texts with a saved model (JSON lines)")
    predict.add_argument("--model", required=True, metavar="DIR", help="models/NAME[/VERSION]")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts (default: one per line on stdin)")
    predict.set_defaults(handler=cmd_predict)

    guard = commands.add_parser("guard", help="screen texts for prompt injection (JSON lines)")
    guard.add_argument("--model", default=None, metavar="DIR", help="default: models/guardrail (latest)")
    guard.add_argument("--mode", choices=("block", "flag"), default="block", help="default block")
    guard.add_argument("--threshold", type=float, help="probability that counts as injection (default 0.6)")
    guard.add_argument("texts", nargs="*", metavar="TEXT", help="texts (default: one per line on stdin)")
    guard.set_defaults(handler=cmd_guard)
    tf = commands.add_parser("transformer", help="fine-tune a small transformer classifier with Trainer")
    tf.add_argument("--dataset", required=True, help="fortunes, guardrail, or a JSONL file of text/label")
    tf.add_argument(
        "--backbone", required=True, metavar="DIR", help="causal LM folder (e.g. nanochat export hf)"
    )
    tf.add_argument("--out", required=True, metavar="DIR", help="folder for the model and metrics.json")
    tf.add_argument("--compare", metavar="DIR", help="a saved scikit-learn model: write comparison.md")
    tf.add_argument("--epochs", type=float, default=3.0, help="training epochs (default 3)")
    tf.add_argument("--batch-size", type=int, default=32, help="default 32")
    tf.add_argument("--learning-rate", type=float, default=1e-3, help="default 1e-3")
    tf.add_argument("--seed", type=non_negative_int, default=0, help="split and training seed (default 0)")
    tf.add_argument("--cache", default=str(DEFAULT_CACHE), help="where downloaded packages are kept")
    tf.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    tf.set_defaults(handler=cmd_transformer)
    return classify


def _texts(args: argparse.Namespace) -> list[str]:
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise DatasetError("no texts given: pass them as arguments or one per line on stdin")
    return texts


def train_and_save(
    dataset: str,
    registry_root: str | Path,
    name: str | None = None,
    version: str | None = None,
    model: str = "logreg",
    features: str | None = None,
    folds: int = 5,
    seed: int = 0,
    cache: str | Path = DEFAULT_CACHE,
) -> tuple[Path, dict[str, Any]]:
    """The `train` command as a function: returns the version folder and the report."""
    from tracks.classify.report import markdown, plot_confusion, run_experiment

    data = load_dataset(dataset, cache)
    registry.check_name(name or data.name, version)  # before minutes of training, not after
    features = features or ("words+chars" if data.name == "guardrail" else "words")
    pipeline, report = run_experiment(data, model, features, folds, seed)
    if data.name == "guardrail":
        from app.guardrail import Guardrail
        from tracks.classify.guardrail import evaluate_screen

        _, test = stratified_split(data, report["split"]["test_fraction"], seed)
        report["guardrail"] = evaluate_screen(Guardrail(pipeline), test.texts, test.labels)
    metadata = {
        "task": "text-classification",
        "classes": [str(c) for c in pipeline.classes_],
        "dataset": report["dataset"],
        "split": report["split"],
        "features": features,
        "estimator": model,
        "metrics": {k: report["test"][k] for k in ("accuracy", "macro_f1")}
        | {"cv_" + k: v for k, v in report["cross_validation"]["models"][model].items()},
        "train_seconds": report["train_seconds"],
        "latency": report["latency"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = {"report.json": Path(tmp) / "report.json", "report.md": Path(tmp) / "report.md"}
        files["report.json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        files["report.md"].write_text(markdown(report) + _guardrail_markdown(report))
        files["confusion.png"] = plot_confusion(report, Path(tmp) / "confusion.png")
        folder = registry.save(compact(pipeline), registry_root, name or data.name, metadata, version, files)
    return folder, report


def _guardrail_markdown(report: dict[str, Any]) -> str:
    screen = report.get("guardrail")
    if not screen:
        return ""
    lines = [
        "## Guardrail: rules, classifier and both on the held-out split",
        "",
        f"{screen['injections']} injections, {screen['benign']} benign texts; classifier threshold "
        f"{screen['threshold']}.",
        "",
        "| screen | injections caught | benign texts stopped |",
        "|---|---|---|",
    ]
    for name in ("rules", "model", "combined"):
        s = screen[name]
        caught = f"{s['recall']:.1%} ({s['caught']})"
        lines.append(f"| {name} | {caught} | {s['false_positive_rate']:.1%} ({s['false_alarms']}) |")
    lines += ["", "Classifier alone at other thresholds:", "", "| threshold | recall | false-positive rate |"]
    lines.append("|---|---|---|")
    for row in screen["model_threshold_sweep"]:
        lines.append(f"| {row['threshold']} | {row['recall']:.1%} | {row['false_positive_rate']:.1%} |")
    return "\n".join(lines) + "\n"


def cmd_train(args: argparse.Namespace) -> int:
    folder, report = train_and_save(
        args.dataset,
        args.registry,
        args.name,
        args.version,
        args.model,
        args.features,
        args.folds,
        args.seed,
        args.cache,
    )
    test = report["test"]
    print(
        f"classify: {report['dataset']['name']} ({report['dataset']['examples']} examples), {args.model}: "
        f"held-out accuracy {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f} -> {folder}"
    )
    return 0


def evaluate_saved(
    model_dir: str | Path, dataset: str | None = None, cache: str | Path = DEFAULT_CACHE
) -> dict:
    """The `eval` command as a function."""
    from tracks.classify.report import evaluate

    loaded = registry.load(model_dir)
    recorded = loaded.metadata["dataset"]
    if dataset is None and recorded["name"] not in ("fortunes", "guardrail"):
        raise DatasetError(
            f"the model was trained on {recorded.get('file', recorded['name'])}; pass it with --dataset"
        )
    data = load_dataset(dataset or recorded["name"], cache)
    if data.sha256() == recorded["sha256"]:
        split = loaded.metadata["split"]
        _, test = stratified_split(data, split["test_fraction"], split["seed"])
        scope = "the held-out split of the training data"
    else:
        test = data
        scope = "every example (not the data the model was trained on)"
    unknown = sorted(set(test.labels) - set(loaded.metadata["classes"]))
    if unknown:
        raise DatasetError(f"{data.name} has labels the model does not know: {unknown}")
    metrics = evaluate(loaded.model, test)
    return {
        "model": f"{loaded.metadata['name']}/{loaded.version}",
        "data": data.name,
        "evaluated_on": scope,
        **{k: metrics[k] for k in ("examples", "accuracy", "macro_f1", "per_class", "confused_pairs")},
    }


def cmd_eval(args: argparse.Namespace) -> int:
    print(json.dumps(evaluate_saved(args.model, args.dataset, args.cache), indent=2, ensure_ascii=False))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tracks.classify.pipelines import confidence

    loaded = registry.load(args.model)
    texts = _texts(args)
    labels, scores = confidence(loaded.model, texts)
    for text, label, score in zip(texts, labels, scores, strict=True):
        print(json.dumps({"text": text, "label": str(label), "confidence": round(float(score), 4)}))
    return 0


def cmd_guard(args: argparse.Namespace) -> int:
    from app.guardrail import DEFAULT_MODEL, DEFAULT_THRESHOLD, Guardrail

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    guardrail = Guardrail.load(args.model or DEFAULT_MODEL, args.mode, threshold)
    for text in _texts(args):
        print(json.dumps({"text": text, **guardrail.check(text).to_dict()}, ensure_ascii=False))
    return 0


def cmd_transformer(args: argparse.Namespace) -> int:
    from tracks.classify.transformer import comparison_markdown, train_transformer_classifier

    data = load_dataset(args.dataset, args.cache)
    metrics = train_transformer_classifier(
        args.backbone, data, args.out, args.epochs, args.batch_size, args.learning_rate, seed=args.seed
    )
    scores = f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
    print(f"classify transformer: {scores} -> {args.out}")
    if args.compare:
        folder = registry.resolve(args.compare)
        report = json.loads((folder / "report.json").read_text())
        (Path(args.out) / "comparison.md").write_text(comparison_markdown(report, metrics))
        print(f"comparison -> {Path(args.out) / 'comparison.md'}")
    return 0
