"""Text classification: the scikit-learn track.

- `dataset`: labeled texts (the Debian `fortunes` categories, the curated guardrail set, your JSONL);
- `pipelines`: TF-IDF + logistic regression, linear SVM and random forest, compared by stratified
  cross-validation;
- `report`: metrics, confusion matrix, worst predictions and latency as markdown + JSON + PNG;
- `registry`: writes versioned model folders `models/<name>/<version>/` (skops file, sha256,
  metadata.json); reading them is the service's `app.classifiers`, re-exported;
- `guardrail`: how the service's prompt-injection screen (`app.guardrail`) does on labeled texts;
- `transformer`: the same task with a small transformer fine-tuned by Hugging Face's `Trainer`;
- `commands`: `nanochat classify train | eval | predict | guard`.

Nothing here knows about HTTP, and the service never imports it: it loads what this track registered
through `app.classifiers` and `app.guardrail`.
"""
