"""Request headers for a protected server, shared by the locust users and the gate (a module name with a
leading underscore, so `locust -f loadtest/` does not take it for a locustfile)."""

from __future__ import annotations

import os


def auth_headers() -> dict[str, str]:
    """The app's API key (`LOADTEST_API_KEY`) and a Cloud Run identity token (`LOADTEST_ID_TOKEN`, sent in
    X-Serverless-Authorization so that Authorization stays free for the app's key)."""
    headers = {}
    if key := os.environ.get("LOADTEST_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    if token := os.environ.get("LOADTEST_ID_TOKEN"):
        headers["X-Serverless-Authorization"] = f"Bearer {token}"
    return headers
