"""`POST /v1/classify` on real `python -m app` servers: the shipped fortunes classifier (models/fortunes),
its results on held-out fortunes, the limits and bad inputs, a server with classification turned off
(404, behind API keys), and one whose model file was changed (503; chat keeps working)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from nanochat.data.corpora import CorpusError
from tracks.classify.dataset import DatasetError, load_fortunes, stratified_split

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
FORTUNES = REPO_ROOT / "models" / "fortunes" / "v1"
METADATA = json.loads((FORTUNES / "metadata.json").read_text())
REPORT = json.loads((FORTUNES / "report.json").read_text())
CLASSES = METADATA["classes"]
HELLO = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4}
BATCH = 64  # NANOCHAT_CLASSIFY_MAX_INPUTS' default


def classify(url: str, body: object, **kwargs) -> httpx.Response:
    """The answer once the classifier has loaded: it loads after /ready says 200 (its worker process takes
    tens of seconds to start on a loaded machine), answering 503 `loading` meanwhile, which clients retry."""
    deadline = time.monotonic() + 300
    while True:
        response = httpx.post(f"{url}/v1/classify", json=body, timeout=300, **kwargs)
        loading = response.status_code == 503 and response.json()["error"]["code"] == "loading"
        if not loading or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


@pytest.fixture(scope="module")
def heldout() -> tuple[list[str], list[str]]:
    """The held-out 20% of the fortunes the shipped model was trained beside (the Debian package, cached
    under build/): the same texts, as the recorded data hash proves."""
    try:
        data = load_fortunes(REPO_ROOT / "build" / "classify" / "downloads")
    except (CorpusError, DatasetError) as e:
        pytest.skip(f"the Debian fortunes package is not available here (apt-get download fortunes): {e}")
    assert data.sha256() == METADATA["dataset"]["sha256"], "the fortunes package is not the one trained on"
    split = METADATA["split"]
    _, test = stratified_split(data, split["test_fraction"], split["seed"])
    return test.texts, test.labels


def test_one_text_gets_a_label_and_every_class_probability(base_url: str) -> None:
    text = "The compiler crashed again."
    response = classify(base_url, {"input": text})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "fortunes/v1"
    assert body["usage"] == {"inputs": 1, "characters": len(text)}
    (result,) = body["data"]
    assert result["index"] == 0 and sorted(result["scores"]) == sorted(CLASSES)
    assert sum(result["scores"].values()) == pytest.approx(1, abs=1e-9)
    assert result["label"] == max(result["scores"], key=result["scores"].get) == "computers"
    assert result["score"] == result["scores"]["computers"]


def test_recorded_held_out_predictions_are_served_unchanged(base_url: str) -> None:
    """The report's most confident mistakes on held-out fortunes: same label, same confidence."""
    worst = REPORT["test"]["worst_predictions"]
    response = classify(base_url, {"input": [w["text"] for w in worst], "model": "fortunes"})
    assert response.status_code == 200, response.text
    for recorded, served in zip(worst, response.json()["data"], strict=True):
        assert served["label"] == recorded["predicted"] != recorded["true"]
        assert served["score"] == pytest.approx(recorded["confidence"], abs=1e-4)


def test_held_out_fortunes_get_their_labels_as_the_report_says(base_url: str, heldout) -> None:
    """Every held-out fortune through the API: the accuracy and the confusion matrix of the report."""
    texts, labels = heldout
    predicted = []
    for start in range(0, len(texts), BATCH):
        response = classify(base_url, {"input": texts[start : start + BATCH], "model": "fortunes/v1"})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert [d["index"] for d in data] == list(range(len(data)))
        for d in data:
            assert sum(d["scores"].values()) == pytest.approx(1, abs=1e-9)
        predicted += [d["label"] for d in data]
    correct = sum(p == t for p, t in zip(predicted, labels, strict=True))
    assert round(correct / len(texts), 3) == REPORT["test"]["accuracy"]
    matrix = [[0] * len(CLASSES) for _ in CLASSES]
    for p, t in zip(predicted, labels, strict=True):
        matrix[CLASSES.index(t)][CLASSES.index(p)] += 1
    assert matrix == REPORT["test"]["confusion_matrix"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": []}, "input", "invalid_value"),
        ({"input": ["ok"] * (BATCH + 1)}, "input", "invalid_value"),
        ({"input": "x" * 10_001}, "input.0", "invalid_value"),
        ({"input": ["fine", "x" * 10_001]}, "input.1", "invalid_value"),
        ({"input": ["fine", "  "]}, "input.1", "invalid_value"),
        ({"input": 3}, "input", "invalid_type"),
        ({"input": ["a", 2]}, "input", "invalid_type"),
        ({"input": {"text": "a"}}, "input", "invalid_type"),
        ({"text": "a"}, "input", "missing_field"),
        ({"input": "a", "model": 5}, "model", "invalid_type"),
        ([{"input": "a"}], None, "invalid_type"),
    ],
)
def test_bad_inputs_are_400_naming_the_field(base_url: str, body, param, code) -> None:
    error = error_of(classify(base_url, body), 400)
    assert error["code"] == code, error
    assert error["param"] == param, error


def test_limits_are_inclusive(base_url: str) -> None:
    response = classify(base_url, {"input": ["y" * 10_000] + ["ok"] * (BATCH - 1)})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == BATCH


def test_unknown_model_is_404(base_url: str) -> None:
    for model in ("guardrail", "fortunes/v2", "demo"):
        error = error_of(classify(base_url, {"input": "a", "model": model}), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "fortunes/v1" in error["message"]


def test_openapi_documents_the_route_with_examples(base_url: str) -> None:
    document = httpx.get(f"{base_url}/openapi.json").json()
    operation = document["paths"]["/v1/classify"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert examples and all("input" in e["value"] for e in examples.values())
    assert {"200", "400", "404", "503"} <= set(operation["responses"]) and "422" not in operation["responses"]
    schemas = document["components"]["schemas"]
    assert schemas["ClassifyResponse"]["examples"][0]["model"] == "fortunes/v1"


def test_turned_off_the_route_is_404_and_still_behind_api_keys(start_server) -> None:
    server = start_server({"NANOCHAT_CLASSIFIER": "", "NANOCHAT_API_KEYS": "k1"})
    assert error_of(classify(server.url, {"input": "a"}), 401)["code"]
    error = error_of(classify(server.url, {"input": "a"}, headers={"Authorization": "Bearer k1"}), 404)
    assert error["code"] == "classifier_disabled" and "NANOCHAT_CLASSIFIER" in error["message"]
    assert "classifier" not in server.log()  # nothing loaded, nothing to say


def test_a_changed_model_file_is_503_with_the_reason_and_chat_keeps_working(start_server, tmp_path) -> None:
    tampered = tmp_path / "fortunes" / "v1"
    shutil.copytree(FORTUNES, tampered)
    model = tampered / "model.skops"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    server = start_server({"NANOCHAT_CLASSIFIER": str(tmp_path / "fortunes")})
    error = error_of(classify(server.url, {"input": "a"}), 503)
    assert error["code"] == "load_failed" and "SHA-256" in error["message"], error
    lines = [json.loads(line) for line in server.log().splitlines() if "classifier failed" in line]
    assert len(lines) == 1 and lines[0]["severity"] == "ERROR" and "SHA-256" in lines[0]["message"]
    assert httpx.get(f"{server.url}/ready").status_code == 200
    assert httpx.post(f"{server.url}/v1/chat/completions", json=HELLO, timeout=120).status_code == 200
