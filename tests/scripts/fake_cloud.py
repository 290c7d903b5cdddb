"""A stand-in for Google Cloud on the scripts' PATH: `gcloud`, `curl`, `cdktf` and the release gate, each a
small wrapper that runs this module (see conftest.py). They answer from one JSON state file
($FAKE_CLOUD_DIR/state.json) with output shaped like the real tools', change it the way the real commands
would (a deploy adds a revision, a resize changes the group), log every call to calls.jsonl, and fail the
way the real ones do in the cases the scripts must survive:

- `gcloud builds submit` without `--gcs-source-staging-dir` stages into gcloud's default bucket
  `PROJECT_cloudbuild` and lists the project's buckets to check its owner (storage.buckets.list; see
  googlecloudsdk/api_lib/storage/storage_api.py CreateBucketIfNotExists, check_ownership): a deployer
  without that permission gets gcloud's BucketForbiddenError;
- `gcloud auth print-identity-token` under workload identity federation or impersonation prints gcloud's
  "No identity token can be obtained from the current credentials." (surface/auth/print_identity_token.py).

An unknown command fails loudly (exit 2), so a script calling something the fake does not know is caught.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

DIR = Path(os.environ["FAKE_CLOUD_DIR"])
STATE = DIR / "state.json"

IDENTITY_TOKEN_ERROR = (
    "ERROR: (gcloud.auth.print-identity-token) "
    "No identity token can be obtained from the current credentials."
)
BUCKET_FORBIDDEN = (
    "ERROR: (gcloud.builds.submit) The user is forbidden from accessing the bucket [{bucket}]. Please check "
    'your organization\'s policy or if the user has the "serviceusage.services.use" permission. Giving the '
    "user a role with this permission such as Service Usage Admin may fix this issue. Alternatively, use the "
    "--no-source option and access your source code via a different method."
)


class Fail(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def load() -> dict:
    return json.loads(STATE.read_text())


def save(state: dict) -> None:
    STATE.write_text(json.dumps(state, indent=1))


def log(tool: str, argv: list[str]) -> None:
    with (DIR / "calls.jsonl").open("a") as f:
        f.write(json.dumps([tool, *argv]) + "\n")


def options(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional words and --flag values (`--flag value` or `--flag=value`; a bare flag is "true")."""
    words, flags = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                key, value = arg[2:].split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and arg[2:] not in BARE:
                key, value = arg[2:], argv[i + 1]
                i += 1
            else:
                key, value = arg[2:], "true"
            flags[key] = value
        else:
            words.append(arg)
        i += 1
    return words, flags


BARE = {
    "quiet",
    "no-traffic",
    "stable",
    "enabled",
    "versioning",
    "uniform-bucket-level-access",
    "public-access-prevention",
    "auto-approve",
}


def formatted(value: object, fmt: str | None) -> str:
    """gcloud's --format: json, or value(a.b) of one field (booleans as True/False, like gcloud)."""
    if fmt in (None, "json"):
        return json.dumps(value, indent=2)
    match = re.fullmatch(r"value\(([\w.]+)\)", fmt)
    if not match:
        raise Fail(f"fake gcloud: unsupported --format {fmt}", 2)
    for part in match.group(1).split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


# ---- Cloud Run --------------------------------------------------------------------------------------------
def service_json(name: str, svc: dict) -> dict:
    base = f"{name}-abc123-uc.a.run.app"
    ready = [r["name"] for r in svc["revisions"] if r.get("ready", True)]
    traffic = []
    for entry in svc["traffic"]:
        item = {"revisionName": entry["revision"], "percent": entry["percent"]}
        if entry.get("tag"):
            item |= {"tag": entry["tag"], "url": f"https://{entry['tag']}---{base}"}
        traffic.append(item)
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"image": svc["revisions"][-1]["image"]}]}}},
        "status": {
            "url": f"https://{base}",
            "latestCreatedRevisionName": svc["revisions"][-1]["name"],
            "latestReadyRevisionName": ready[-1] if ready else None,
            "traffic": traffic,
        },
    }


def add_revision(svc: dict, name: str, image: str) -> str:
    revision = f"{name}-{len(svc['revisions']) + 1:05d}-rev"
    svc["revisions"].append({"name": revision, "image": image})
    return revision


def set_tag(svc: dict, tag: str, revision: str) -> None:
    for entry in svc["traffic"]:
        if entry.get("tag") == tag:
            entry["tag"] = None
    for entry in svc["traffic"]:
        if entry["revision"] == revision and not entry.get("tag"):
            entry["tag"] = tag
            break
    else:
        svc["traffic"].append({"revision": revision, "percent": 0, "tag": tag})


def tidy(svc: dict) -> None:
    svc["traffic"] = [e for e in svc["traffic"] if e["percent"] or e.get("tag")]


def gcloud_run(state: dict, words: list[str], flags: dict) -> str:
    if words[:2] == ["services", "describe"]:
        name = words[2]
        if name not in state["run"]:
            raise Fail(f"ERROR: (gcloud.run.services.describe) Cannot find service [{name}]")
        return formatted(service_json(name, state["run"][name]), flags.get("format"))
    if words[0] == "deploy":
        svc = state["run"][words[1]]
        revision = add_revision(svc, words[1], flags["image"])
        if flags.get("no-traffic") and flags.get("tag"):
            set_tag(svc, flags["tag"], revision)
        return ""
    if words[:2] == ["services", "update-traffic"]:
        svc = state["run"][words[2]]
        if "to-revisions" in flags:
            revision, percent = flags["to-revisions"].split("=")
            for entry in svc["traffic"]:
                entry["percent"] = 0
            target = next((e for e in svc["traffic"] if e["revision"] == revision), None)
            if target is None:
                svc["traffic"].append(target := {"revision": revision, "percent": 0, "tag": None})
            target["percent"] = int(percent)
        for pair in filter(None, flags.get("update-tags", "").split(",")):
            tag, revision = pair.split("=")
            set_tag(svc, tag, revision)
        for tag in filter(None, flags.get("remove-tags", "").split(",")):
            for entry in svc["traffic"]:
                if entry.get("tag") == tag:
                    entry["tag"] = None
        tidy(svc)
        return ""
    raise Fail(f"fake gcloud: unsupported: run {' '.join(words)}", 2)


# ---- the rest of gcloud -----------------------------------------------------------------------------------
def builds_submit(state: dict, flags: dict) -> str:
    project = flags["project"]
    staging = flags.get("gcs-source-staging-dir")
    if staging is None:
        if not state.get("can_list_buckets"):
            raise Fail(BUCKET_FORBIDDEN.format(bucket=f"{project}_cloudbuild"))
    else:
        bucket = urlparse(staging).netloc
        if bucket not in state["buckets"]:
            raise Fail(
                f"ERROR: (gcloud.builds.submit) HTTPError 403: {state['account']} does not have "
                "storage.buckets.create access to the Google Cloud project."
            )
    config = yaml.safe_load(Path(flags["config"]).read_text())
    if "service-account" in flags and config.get("options", {}).get("logging") not in (
        "CLOUD_LOGGING_ONLY",
        "NONE",
    ):
        raise Fail(
            "ERROR: (gcloud.builds.submit) INVALID_ARGUMENT: if 'build.service_account' is specified, the "
            "build must either (a) specify 'build.logs_bucket' ... or (c) use CLOUD_LOGGING_ONLY"
        )
    subs = dict(pair.split("=", 1) for pair in flags["substitutions"].split(","))
    state["builds"].append({"substitutions": subs, "service_account": flags.get("service-account")})
    for key in ("_IMAGE", "_GPU_IMAGE"):
        if subs.get(key):
            state["images"][f"{subs[key]}:{subs['COMMIT_SHA']}"] = f"sha256:{len(state['builds']):064d}"
    return ""


def gcloud(state: dict, argv: list[str]) -> str:
    words, flags = options(argv)
    if words[:1] == ["beta"]:
        words = words[1:]
    key = " ".join(words)
    for prefix, message in state.get("fail", {}).items():
        if key.startswith(prefix):
            raise Fail(message)
    fmt = flags.get("format")
    match words:
        case ["auth", "print-identity-token"]:
            if state["credentials"] != "user":
                raise Fail(IDENTITY_TOKEN_ERROR)
            return "user-identity-token"
        case ["auth", "print-access-token"]:
            return "fake-access-token"
        case ["auth", "list"]:
            return state["account"] or ""
        case ["projects", "describe", project]:
            if project not in state["projects"]:
                raise Fail(f"ERROR: (gcloud.projects.describe) The project [{project}] does not exist.")
            return formatted(state["projects"][project], fmt)
        case ["billing", "projects", "describe", project]:
            info = state["projects"].get(project, {})
            return formatted({"billingEnabled": info.get("billingEnabled", False)}, fmt)
        case ["billing", "budgets", "list"]:
            return formatted(state["budgets"], fmt)
        case ["storage", "buckets", "describe", url]:
            bucket = state["buckets"].get(url.removeprefix("gs://"))
            if bucket is None:
                raise Fail(f"ERROR: (gcloud.storage.buckets.describe) {url} not found: 404.")
            return formatted(bucket, fmt)
        case ["storage", "buckets", "create", url]:
            state["buckets"][url.removeprefix("gs://")] = {
                "versioning_enabled": False,
                "uniform_bucket_level_access": "uniform-bucket-level-access" in flags,
            }
            return ""
        case ["storage", "buckets", "update", url]:
            state["buckets"][url.removeprefix("gs://")]["versioning_enabled"] = "versioning" in flags
            return ""
        case ["services", "list"]:
            return "\n".join(state["enabled_services"])
        case ["services", "enable", *apis]:
            state["enabled_services"] += [a for a in apis if a not in state["enabled_services"]]
            return ""
        case ["secrets", "versions", "access", "latest"]:
            versions = state["secrets"].get(flags["secret"])
            if not versions:
                raise Fail(
                    f"ERROR: (gcloud.secrets.versions.access) NOT_FOUND: Secret [{flags['secret']}] "
                    "not found or has no versions."
                )
            return versions[-1]
        case ["secrets", "versions", "list", secret]:
            count = len(state["secrets"][secret])
            return f"projects/123/secrets/{secret}/versions/{count}" if count else ""
        case ["secrets", "versions", "add", secret]:
            state["secrets"][secret].append(sys.stdin.read())
            return ""
        case ["builds", "submit", *_]:
            return builds_submit(state, flags)
        case ["artifacts", "docker", "images", "describe", ref]:
            if ref not in state["images"]:
                raise Fail(f"ERROR: (gcloud.artifacts.docker.images.describe) Image not found: {ref}")
            return formatted({"image_summary": {"digest": state["images"][ref]}}, fmt)
        case ["run", *rest]:
            return gcloud_run(state, rest, flags)
        case ["compute", "instance-groups", "managed", "all-instances-config", "update", group]:
            return mig(state, "all-instances-config", group, flags)
        case ["compute", "instance-groups", "managed", action, group, *_]:
            return mig(state, action, group, flags)
        case ["compute", "project-info", "describe"]:
            return formatted({"quotas": state["project_quotas"]}, fmt)
        case ["compute", "regions", "describe", region]:
            return formatted({"name": region, "quotas": state["region_quotas"]}, fmt)
        case ["monitoring", "channels", "list"]:
            return formatted(state["channels"], fmt)
        case ["functions", "describe", name]:
            if name not in state["functions"]:
                raise Fail(f"ERROR: (gcloud.functions.describe) NOT_FOUND: Resource '{name}' was not found")
            return formatted(state["functions"][name], fmt)
    raise Fail(f"fake gcloud: unsupported command: gcloud {' '.join(argv)}", 2)


def mig(state: dict, action: str, group: str, flags: dict) -> str:
    if group not in state["migs"]:
        raise Fail(
            f"ERROR: (gcloud.compute.instance-groups.managed.{action}) The resource '{group}' was not found"
        )
    g = state["migs"][group]
    match action:
        case "describe":
            return formatted(
                {
                    "name": group,
                    "targetSize": g["targetSize"],
                    "status": {"autoscaler": g.get("autoscaler", ""), "isStable": True},
                },
                flags.get("format"),
            )
        case "all-instances-config":
            key, value = flags["metadata"].split("=", 1)
            g["metadata"][key] = value
            return ""
        case "wait-until":
            if g.get("errors"):
                raise Fail(
                    "ERROR: (gcloud.compute.instance-groups.managed.wait-until) "
                    "Timeout while waiting for group to become stable."
                )
            return "Group is stable"
        case "list-errors":
            return "\n".join(g.get("errors", []))
        case "list-instances":
            return "\n".join(f"{group}-{i} us-central1-a RUNNING" for i in range(g["targetSize"]))
        case "resize":
            g["targetSize"] = int(flags["size"])
            return ""
        case "update-autoscaling":
            g["autoscaler_mode"] = flags["mode"]
            return ""
    raise Fail(f"fake gcloud: unsupported: instance-groups managed {action}", 2)


# ---- curl: the HTTP APIs the scripts call -----------------------------------------------------------------
def curl(state: dict, argv: list[str]) -> str:
    headers, data, write_out, url = {}, [], None, None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-H", "--header"):
            name, value = argv[i + 1].split(":", 1)
            headers[name.strip().lower()] = value.strip()
            i += 1
        elif arg in ("-d", "--data", "--data-urlencode"):
            data.append(argv[i + 1])
            i += 1
        elif arg in ("-w", "--write-out"):
            write_out = argv[i + 1]
            i += 1
        elif arg == "-X":
            i += 1
        elif arg.startswith("-"):
            if arg not in ("-sS", "-G"):
                raise Fail(f"fake curl: unsupported option {arg}", 2)
        else:
            url = arg
        i += 1
    status, body = answer(state, url, headers, data)
    out = json.dumps(body)
    if write_out:
        out += write_out.replace("\\n", "\n").replace("%{http_code}", str(status))
    return out


def answer(state: dict, url: str, headers: dict, data: list[str]) -> tuple[int, object]:
    parsed = urlparse(url)
    if parsed.netloc == "monitoring.googleapis.com" and parsed.path.endswith("/prometheus/api/v1/query"):
        if headers.get("authorization") != "Bearer fake-access-token":
            return 401, {"error": "unauthenticated"}
        query = parse_qs("&".join(data))["query"][0]
        result = [
            {"metric": {"__name__": query, "instance": f"i{n}"}, "value": [0, "1"]}
            for n in range(state["series"].get(query, 0))
        ]
        return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}
    if parsed.path.endswith(":testIamPermissions"):
        wanted = json.loads(data[0])["permissions"]
        have = state["billing_permissions"] if "cloudbilling" in parsed.netloc else state["permissions"]
        return 200, {"permissions": [p for p in wanted if "*" in have or p in have]} if have else {}
    if parsed.path == "/v1/chat/completions":
        state["chats"].append(
            {
                "authorization": headers.get("authorization"),
                "serverless": headers.get("x-serverless-authorization"),
            }
        )
        status = state["chat_status"]
        return status, {"choices": [{"message": {"content": "hi"}}]} if status == 200 else {"error": "no"}
    if parsed.path.startswith("/api/datasources/uid/"):
        return state["grafana_status"], {
            "message": "Successfully queried the Prometheus API.",
            "status": "OK",
        }
    raise Fail(f"fake curl: unknown URL {url}", 2)


# ---- cdktf and the gate -----------------------------------------------------------------------------------
def cdktf(state: dict, argv: list[str]) -> str:
    """`cdktf deploy ENV --auto-approve`: what the stack makes in the env's phase (an apply with nothing to
    change changes nothing)."""
    words, _ = options(argv)
    assert words[0] == "deploy", argv
    env = yaml.safe_load((Path(os.environ["ENVS_DIR"]) / f"{words[1]}.yaml").read_text())
    state["applies"].append(env.get("phase", "foundation"))
    project, service = env["project"], env["service"]["name"]
    state["buckets"].setdefault(f"{project}-nanochat-build", {"versioning_enabled": False})
    for secret in env.get("secrets", {}):
        state["secrets"].setdefault(secret, [])
    if service in state["run"]:
        if state.get("apply_changes_template"):  # a changed template: a new revision, no traffic
            svc = state["run"][service]
            add_revision(svc, service, svc["revisions"][-1]["image"])
    else:
        state["run"][service] = {"revisions": [], "traffic": []}
        first = add_revision(state["run"][service], service, env["service"]["initial_image"])
        state["run"][service]["traffic"] = [{"revision": first, "percent": 100, "tag": None}]
    if (
        env.get("phase") == "monitored"
        and env.get("grafana", {}).get("enabled", True)
        and "grafana" not in state["run"]
    ):
        state["run"]["grafana"] = {"revisions": [], "traffic": []}
        first = add_revision(state["run"]["grafana"], "grafana", "docker.io/grafana/grafana")
        state["run"]["grafana"]["traffic"] = [{"revision": first, "percent": 100, "tag": None}]
    if env["gpu"]["enabled"]:
        state["migs"].setdefault(f"nanochat-gpu-{words[1]}", {"targetSize": 0, "metadata": {}, "errors": []})
    return ""


def gate(state: dict, argv: list[str]) -> str:
    state["gates"].append(
        {
            "argv": argv,
            "id_token": os.environ.get("LOADTEST_ID_TOKEN"),
            "api_key": os.environ.get("LOADTEST_API_KEY"),
        }
    )
    if state["gate_status"]:
        raise Fail("gate: the candidate broke its SLOs", state["gate_status"])
    return "gate: passed"


def main() -> int:
    tool, argv = sys.argv[1], sys.argv[2:]
    log(tool, argv)
    state = load()
    try:
        out = {"gcloud": gcloud, "curl": curl, "cdktf": cdktf, "gate": gate}[tool](state, argv)
    except Fail as exc:
        print(exc, file=sys.stderr)
        return exc.status
    save(state)
    if out:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
