# shellcheck shell=bash
# Shared by the scripts in scripts/ (sourced, not run): reading an env file, running or printing gcloud
# commands (--dry-run), the Cloud Run service's traffic, the release gate's credentials, and the one-line
# `ok` / `FAIL` reports of preflight.sh and verify.sh.

DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python3}
ENVS_DIR=${ENVS_DIR:-envs}  # tests point it at a folder of their own env files
exec 3>&1                   # dry-run lines go to the real stdout, also from inside $(...)
# the service's contract (APP_PORT, READY_PATH, CHAT_COMPLETIONS_PATH, METRICS_JOB, ...) from app/contract.py
eval "$("$PYTHON" app/contract.py)"

usage() { sed -n '2,/^set -euo/p' "$1" | sed '$d' | sed 's/^# \{0,1\}//'; }

fail() {  # fail MESSAGE [STATUS]
  echo "${0##*/}: $1" >&2
  exit "${2:-1}"
}

step() { echo "==> $*" >&2; }

# run CMD...: run it, or print it in dry-run mode (on stdout, one line, shell-quoted)
run() {
  if [ "$DRY_RUN" = 1 ]; then
    {
      printf '+'
      printf ' %q' "$@"
      printf '\n'
    } >&3
  else
    "$@"
  fi
}

# query PLACEHOLDER CMD...: the command's output, or PLACEHOLDER in dry-run mode (the command is printed)
query() {
  local placeholder=$1
  shift
  if [ "$DRY_RUN" = 1 ]; then
    if declare -F "$1" >/dev/null; then "$@" >/dev/null; else run "$@"; fi
    echo "$placeholder"
  else
    "$@"
  fi
}

# env_args SCRIPT WITH_DRY_RUN ARGS...: the arguments of the scripts that take only `--env NAME`, `-h`
# and, when WITH_DRY_RUN is `dry-run`, `--dry-run`; sets ENV_ARG (default dev) and DRY_RUN
env_args() {
  local script=$1 dry=$2
  shift 2
  ENV_ARG=dev  # read by the sourcing script
  export ENV_ARG
  while [ $# -gt 0 ]; do
    case "$1" in
      --env) ENV_ARG=${2:?--env needs a name}; shift 2 ;;
      --dry-run) [ "$dry" = dry-run ] || fail "unknown argument $1 (see --help)" 2; DRY_RUN=1; shift ;;
      -h | --help) usage "$script"; exit 0 ;;
      *) fail "unknown argument $1 (see --help)" 2 ;;
    esac
  done
}

# load_env NAME: the env's settings and resource names, from envs/NAME.yaml through the typed config
# (infra/config.py) and infra/names.py, so that no name is derived twice. Sets and exports:
#   ENV_NAME ENV_FILE PROJECT REGION PHASE SERVICE IMAGE_REPO GPU_IMAGE_REPO GPU_ENABLED GPU_GROUP
#   GPU_QUOTA_METRIC GPU_NEEDED DEPLOYER_SA BUILD_SA BUILD_STAGING_DIR GATE_AUDIENCE API_KEYS_SECRET
#   SECRETS SERVICE_SECRETS GRAFANA_ENABLED GRAFANA_SERVICE KILL_SWITCH KILL_SWITCH_FUNCTION STATE_BUCKET BILLING_ACCOUNT
#   ALERT_EMAILS
load_env() {
  local file="$ENVS_DIR/$1.yaml" values key value
  [ -f "$file" ] || fail "no environment file $file (one per environment in envs/)" 2
  values=$("$PYTHON" - "$file" <<'EOF'
import sys

from infra import names
from infra.config import ConfigError, load_env

try:
    cfg = load_env(sys.argv[1])
except ConfigError as exc:
    sys.exit(str(exc))
n = names.all_names(cfg)
gpu = cfg.gpu
schedule = getattr(gpu, "schedule", None)
sizes = [1, gpu.target_size, gpu.autoscaling.max_replicas if gpu.autoscaling else 0, schedule.size if schedule else 0]
metric = gpu.accelerator_type.upper().replace("-", "_") + "_GPUS"
shell = {
    "PROJECT": cfg.project,
    "REGION": cfg.region,
    "PHASE": cfg.phase,
    "SERVICE": n["service_name"],
    "IMAGE_REPO": n["image"],
    "GPU_IMAGE_REPO": n["gpu_image"],
    "GPU_ENABLED": n["gpu_enabled"],
    "GPU_GROUP": n["gpu_group"],
    # the regional quota the group's VMs count against, and how many GPUs its largest size needs
    "GPU_QUOTA_METRIC": ("PREEMPTIBLE_" if gpu.spot else "") + metric,
    "GPU_NEEDED": str(gpu.accelerator_count * max(sizes)),
    "DEPLOYER_SA": n["deployer_service_account"],
    "BUILD_SA": n["build_service_account"],
    "BUILD_STAGING_DIR": n["build_staging_dir"],
    "GATE_AUDIENCE": n["gate_audience"],
    "API_KEYS_SECRET": n["api_keys_secret"],
    "SECRETS": " ".join(cfg.secrets),
    # the service's secret env vars, as `gcloud run deploy --update-secrets` takes them
    "SERVICE_SECRETS": ",".join(f"{var}={secret}:latest" for var, secret in cfg.service.secret_env.items()),
    "GRAFANA_ENABLED": "true" if cfg.grafana.enabled else "false",
    "GRAFANA_SERVICE": n["grafana_service"],
    "KILL_SWITCH": n["kill_switch"],
    "KILL_SWITCH_FUNCTION": names.kill_switch_function(cfg),
    "STATE_BUCKET": cfg.state.bucket,
    "BILLING_ACCOUNT": cfg.budget.billing_account,
    "ALERT_EMAILS": " ".join(cfg.monitoring.alert_emails),
}
for key, value in shell.items():
    print(f"{key}={value}")
EOF
  ) || fail "cannot use $file" 2
  while IFS='=' read -r key value; do
    declare -gx "$key=$value"
  done <<<"$values"
  declare -gx ENV_NAME="$1" ENV_FILE="$file"
}

# service_status FIELD [TAG]: from `gcloud run services describe`: the revision serving 100% (FIELD
# revision, no TAG), the revision / URL of the traffic entry tagged TAG (FIELD revision | url), or the
# latest ready revision (FIELD latest). Empty when there is none.
service_status() {
  if [ "$DRY_RUN" = 1 ]; then
    run gcloud run services describe "$SERVICE" --project "$PROJECT" --region "$REGION" --format json
    return
  fi
  gcloud run services describe "$SERVICE" --project "$PROJECT" --region "$REGION" --format json |
    "$PYTHON" -c '
import json, sys

field, tag = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
status = json.load(sys.stdin).get("status", {})
latest = status.get("latestReadyRevisionName", "")
if field == "latest":
    print(latest)
    sys.exit()
for entry in status.get("traffic", []):
    revision = entry.get("revisionName") or (latest if entry.get("latestRevision") else None)
    if (tag is None and entry.get("percent") == 100) or (tag is not None and entry.get("tag") == tag):
        print(revision if field == "revision" else entry.get("url", ""))
        break
' "$@"
}

current_revision() { service_status revision; }
latest_ready_revision() { service_status latest; }
tagged_revision() { service_status revision "$1"; }
tagged_url() { service_status url "$1"; }

# gate_id_token: the identity token the gate sends to the candidate (Cloud Run checks run.invoker).
# LOADTEST_ID_TOKEN when set: CI mints it with the auth action (token_format: id_token, audience
# GATE_AUDIENCE), because gcloud cannot print one from workload identity credentials. Otherwise a
# person's token from `gcloud auth print-identity-token`.
gate_id_token() {
  if [ -n "${LOADTEST_ID_TOKEN:-}" ]; then
    printf '%s\n' "$LOADTEST_ID_TOKEN"
    return
  fi
  if [ -n "${GITHUB_ACTIONS:-}" ]; then
    fail "LOADTEST_ID_TOKEN is not set: in CI the auth step mints it (token_format: id_token, id_token_audience: $GATE_AUDIENCE)" 1
  fi
  query "<identity-token>" gcloud auth print-identity-token ||
    fail "gcloud has no identity token for these credentials (impersonated or workload identity): set LOADTEST_ID_TOKEN, e.g. \$(gcloud auth print-identity-token --impersonate-service-account $DEPLOYER_SA --audiences $GATE_AUDIENCE --include-email)" 1
}

# gate_api_key: the first key of the env's API-keys secret (service.api_keys_secret), for the gate's
# Authorization header; nothing when the service needs no key. Never printed, also not in dry-run mode.
gate_api_key() {
  [ -n "$API_KEYS_SECRET" ] || return 0
  local keys
  keys=$(query "<api-key>" gcloud secrets versions access latest --secret "$API_KEYS_SECRET" --project "$PROJECT") ||
    fail "cannot read the secret $API_KEYS_SECRET (the deployer needs secretmanager.secretAccessor on it; bootstrap.sh adds its first version)" 1
  keys=${keys%%,*}
  keys=${keys//[[:space:]]/}
  [ -n "$keys" ] || fail "the secret $API_KEYS_SECRET holds no key" 1
  printf '%s\n' "$keys"
}

# record_release ENV REVISION IMAGE PREVIOUS [GPU_IMAGE]: what now serves, in build/release.json (and
# the job summary)
record_release() {
  local line
  line=$(printf '{"env": "%s", "service": "%s", "revision": "%s", "image": "%s", "gpu_image": "%s", "previous": "%s", "at": "%s"}' \
    "$1" "$SERVICE" "$2" "$3" "${5:-}" "$4" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ record build/release.json $line" >&3
    return
  fi
  mkdir -p build
  echo "$line" >build/release.json
  if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    # shellcheck disable=SC2016  # the backticks are Markdown
    printf '### Released\n\n```json\n%s\n```\n' "$line" >>"$GITHUB_STEP_SUMMARY"
  fi
}

# report ok|skip|FAIL WHAT [FIX]: one line of preflight.sh / verify.sh; FAIL lines count in FAILURES
FAILURES=0
report() {
  if [ "$1" = ok ] || [ "$1" = skip ]; then
    printf '%-5s %s\n' "$1" "$2"
  else
    printf 'FAIL  %s -- fix: %s\n' "$2" "${3:-}"
    FAILURES=$((FAILURES + 1))
  fi
}

# json_field FIELD.PATH: one field of the JSON document on stdin (dots walk into objects); empty if absent
json_field() {
  "$PYTHON" -c '
import json, sys

value = json.load(sys.stdin)
for part in sys.argv[1].split("."):
    value = value.get(part) if isinstance(value, dict) else None
print("" if value is None else str(value).lower() if isinstance(value, bool) else value)
' "$1"
}

# http URL CURL_ARGS...: one HTTP request; sets HTTP_STATUS (000: no answer) and HTTP_BODY
http() {
  local url=$1 out
  shift
  out=$(curl -sS -w '\n%{http_code}' "$@" "$url" 2>&1) || true
  HTTP_STATUS=${out##*$'\n'}
  HTTP_BODY=${out%$'\n'*}
}

# promql_series QUERY: how many series QUERY returns from Managed Service for Prometheus, through its
# Prometheus-compatible HTTP API (monitoring.googleapis.com/v1/projects/P/location/global/prometheus)
promql_series() {
  local url="https://monitoring.googleapis.com/v1/projects/$PROJECT/location/global/prometheus/api/v1/query"
  local token
  token=$(query "<access-token>" gcloud auth print-access-token) || return 1
  if [ "$DRY_RUN" = 1 ]; then
    run curl -sS -G -H "Authorization: Bearer $token" --data-urlencode "query=$1" "$url"
    echo 1
    return
  fi
  http "$url" -G -H "Authorization: Bearer $token" --data-urlencode "query=$1"
  if [ "$HTTP_STATUS" != 200 ]; then
    echo "${0##*/}: PromQL query failed (HTTP $HTTP_STATUS): $HTTP_BODY" >&2
    return 1
  fi
  printf '%s' "$HTTP_BODY" | "$PYTHON" -c 'import json, sys; print(len(json.load(sys.stdin)["data"]["result"]))'
}

# metrics_probe: the PromQL query that finds the service's metrics (a catalog gauge every instance writes)
metrics_probe() {
  "$PYTHON" -c 'from app.observability.catalog import BUILD_INFO; print(BUILD_INFO.name)'
}
