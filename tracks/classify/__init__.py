"""Text classification: the scikit-learn track.

- `dataset`: labeled texts (the Debian `fortunes` categories, the curated guardrail set, your JSONL);
- `pipelines`: TF-IDF + logistic regression, linear SVM and random forest, compared by stratified
  cross-validation;
- `report`: metrics, confusion matrix, worst predictions and latency as markdown + JSON + PNG;
- `registry`: versioned model folders `models/<name>/<version>/` (skops file, sha256, metadata.json);
- `guardrail`: a prompt-injection screen (rules + a classifier) for chat requests;
- `transformer`: the same task with a small transformer fine-tuned by Hugging Face's `Trainer`;
- `commands`: `nanochat classify train | eval | predict | guard`.

Nothing here knows about HTTP: the service imports `Guardrail` and `registry.load`.
"""
