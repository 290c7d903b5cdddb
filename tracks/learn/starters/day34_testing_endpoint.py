"""Day 34: the test of the classifier's endpoint (day 31), written so that it catches real bugs.

Write `test_classify_endpoint(client)`: `client` is a TestClient of an app that should follow day 31's
contract (POST /classify {"text"} → 200 {"label", "confidence"}; an empty or missing text → 422); its
classifier labels a text "injection" (confidence 0.9) when it contains "ignore", else "benign" (0.8).
Assert the contract. The check runs your test against a correct app (it must pass) and against broken
ones (it must fail on each).
"""


def test_classify_endpoint(client) -> None:
    r = client.post("/classify", json={"text": "hello there"})
    assert r.status_code == 200
    # TODO: assert the body; an injection example; an empty and a missing text
    raise NotImplementedError("the assertions")
