# shellcheck shell=bash
# Shared by scripts/deploy.sh and scripts/rollback.sh (sourced, not run): reading an env file, running or
# printing gcloud commands (--dry-run), and reading the Cloud Run service's traffic.

DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python3}
exec 3>&1  # dry-run lines go to the real stdout, also from inside $(...)

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

# load_env NAME: PROJECT, REGION, SERVICE and IMAGE_REPO from envs/NAME.yaml (schema: infra/config.py)
load_env() {
  local file="envs/$1.yaml" values
  [ -f "$file" ] || fail "no environment file $file (one per environment in envs/)" 2
  values=$("$PYTHON" - "$file" <<'EOF'
import sys

import yaml

path = sys.argv[1]
try:
    data = yaml.safe_load(open(path, encoding="utf-8")) or {}
except (OSError, yaml.YAMLError) as e:
    sys.exit(f"cannot read {path}: {e}")
project, region = data.get("project"), data.get("region")
if not project or not region:
    sys.exit(f"{path} needs project and region")
service = (data.get("service") or {}).get("name", "nanochat")
repository = (data.get("registry") or {}).get("repository", "nanochat")
print(project, region, service, f"{region}-docker.pkg.dev/{project}/{repository}/{service}")
EOF
  ) || fail "cannot use $file" 2
  read -r PROJECT REGION SERVICE IMAGE_REPO <<<"$values"
  export PROJECT REGION SERVICE IMAGE_REPO
}

# traffic FIELD [TAG]: from the service's traffic list, the revision serving 100% (FIELD revision, no TAG),
# or the revision / URL of the entry tagged TAG (FIELD revision | url). Empty when there is none.
traffic() {
  if [ "$DRY_RUN" = 1 ]; then
    run gcloud run services describe "$SERVICE" --project "$PROJECT" --region "$REGION" --format json
    return
  fi
  gcloud run services describe "$SERVICE" --project "$PROJECT" --region "$REGION" --format json |
    "$PYTHON" -c '
import json, sys

field, tag = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
status = json.load(sys.stdin).get("status", {})
for entry in status.get("traffic", []):
    revision = entry.get("revisionName") or (status.get("latestReadyRevisionName") if entry.get("latestRevision") else None)
    if (tag is None and entry.get("percent") == 100) or (tag is not None and entry.get("tag") == tag):
        print(revision if field == "revision" else entry.get("url", ""))
        break
' "$@"
}

current_revision() { traffic revision; }
tagged_revision() { traffic revision "$1"; }
tagged_url() { traffic url "$1"; }

# record_release ENV REVISION IMAGE PREVIOUS: what now serves, in build/release.json (and the job summary)
record_release() {
  local line
  line=$(printf '{"env": "%s", "service": "%s", "revision": "%s", "image": "%s", "previous": "%s", "at": "%s"}' \
    "$1" "$SERVICE" "$2" "$3" "$4" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")
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
