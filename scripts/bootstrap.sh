#!/usr/bin/env bash
# Bring an environment up from an empty project (billing on, nothing else), in phases that each succeed on
# their own; re-running skips what is done (every step checks before it creates), so after a failure fix
# the cause and run it again. `make bootstrap ENV=dev`; `make preflight ENV=dev` first says whether the
# account can do it.
#
#   1. state: the Terraform state bucket (versioned, uniform access)
#   2. apis: the APIs Terraform needs before it can enable the stack's own, and a wait until they are on
#   3. foundation: `cdktf deploy ENV` at `phase: foundation` (registry, identities, secrets, Cloud Run on a
#      placeholder, the GPU group at size 0, budget)
#   4. secrets: a first version of every declared secret that has none: the API-keys secret is generated,
#      others come from NANOCHAT_SECRET_<ID> (e.g. NANOCHAT_SECRET_GRAFANA_SMTP_PASSWORD) or are asked for
#   5. release: the first release (scripts/deploy.sh: both images, the gate, promote)
#   6. released: `phase: released` in envs/ENV.yaml, re-apply (the GPU group sized as configured), promote
#      the latest revision if the apply made one (scripts/deploy.sh --promote-latest)
#   7. monitored: wait until the service's metrics are in Managed Prometheus, then `phase: monitored`,
#      re-apply (alert policies, uptime check, Grafana), promote the latest revision
#
#   scripts/bootstrap.sh --env dev [--dry-run]
#
# Options:
#   --env NAME   environment file envs/NAME.yaml (default dev)
#   --dry-run    print every command instead of running it (as on an empty project); changes nothing
#   -h, --help   this text
#
# Secret values are never printed. CDKTF names the cdktf command (default: npx cdktf);
# METRICS_WAIT_S (default 600) is how long step 7 waits for metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release_lib.sh
source scripts/release_lib.sh

env_args "$0" dry-run "$@"

load_env "$ENV_ARG"
read -r -a CDKTF_CMD <<<"${CDKTF:-npx cdktf}"
METRICS_WAIT_S=${METRICS_WAIT_S:-600}
POLL_S=${POLL_S:-30}
# Enabled before Terraform runs: the provider calls the Service Usage and Resource Manager APIs (with this
# project as quota project) to enable the stack's APIs (infra/stack.py), and `gcloud billing` checks.
BOOTSTRAP_APIS=(serviceusage.googleapis.com cloudresourcemanager.googleapis.com storage.googleapis.com
  cloudbilling.googleapis.com)

# exists CMD...: whether CMD succeeds (its output dropped); in dry-run mode it is printed and "no"
exists() {
  if [ "$DRY_RUN" = 1 ]; then
    run "$@"
    return 1
  fi
  "$@" >/dev/null 2>&1
}

# set_phase PHASE: rewrite only the `phase:` line of the env file (comments and everything else stay)
set_phase() {
  PHASE=$1
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ set phase: $1 in $ENV_FILE" >&3
    return
  fi
  "$PYTHON" - "$ENV_FILE" "$1" <<'EOF'
import re
import sys
from pathlib import Path

path, phase = Path(sys.argv[1]), sys.argv[2]
text = path.read_text()
new, found = re.subn(r"^phase:[ \t]*[a-z]+", f"phase: {phase}", text, count=1, flags=re.M)
if not found:  # no line yet (the default, foundation): add one before the first setting
    first = re.search(r"^[a-z_]+:", text, flags=re.M)
    at = first.start() if first else len(text)
    new = f"{text[:at]}phase: {phase}\n{text[at:]}"
path.write_text(new)
EOF
}

apply() {
  step "cdktf deploy $ENV_NAME (phase: $PHASE)"
  run "${CDKTF_CMD[@]}" deploy "$ENV_NAME" --auto-approve
}

# secret_value ID: a first value for the secret, on stdout (never echoed to the terminal)
secret_value() {
  local var value
  var="NANOCHAT_SECRET_$(echo "$1" | tr '[:lower:]-' '[:upper:]_')"
  if [ -n "${!var:-}" ]; then
    printf '%s' "${!var}"
  elif [ "$1" = "$API_KEYS_SECRET" ]; then
    "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32), end="")'
  elif [ -t 0 ]; then
    read -r -s -p "Value for the secret $1 (not shown): " value </dev/tty
    echo >&2
    printf '%s' "$value"
  else
    fail "the secret $1 has no version: set $var (it is read, never printed) or run interactively" 1
  fi
}

step "bootstrap $ENV_NAME in $PROJECT ($REGION), now at phase: $PHASE"

# 1. state
if exists gcloud storage buckets describe "gs://$STATE_BUCKET" --project "$PROJECT" --format json; then
  step "state bucket gs://$STATE_BUCKET exists"
else
  run gcloud storage buckets create "gs://$STATE_BUCKET" --project "$PROJECT" --location "$REGION" \
    --uniform-bucket-level-access --public-access-prevention
fi
versioning=$(query false gcloud storage buckets describe "gs://$STATE_BUCKET" --project "$PROJECT" \
  --format 'value(versioning_enabled)')
[ "${versioning,,}" = true ] ||
  run gcloud storage buckets update "gs://$STATE_BUCKET" --project "$PROJECT" --versioning

# 2. apis
enabled=$(query "" gcloud services list --enabled --project "$PROJECT" --format 'value(config.name)')
missing=()
for api in "${BOOTSTRAP_APIS[@]}"; do
  grep -qx "$api" <<<"$enabled" || missing+=("$api")
done
if [ ${#missing[@]} -gt 0 ]; then
  run gcloud services enable "${missing[@]}" --project "$PROJECT"
  for _ in 1 2 3 4 5 6 7 8 9 10; do  # enable returns when the operation is done; the list can lag
    enabled=$(query "${BOOTSTRAP_APIS[*]}" gcloud services list --enabled --project "$PROJECT" --format 'value(config.name)')
    still=0
    for api in "${missing[@]}"; do grep -qw "$api" <<<"$enabled" || still=1; done
    [ "$still" = 1 ] || break
    sleep "$POLL_S"
  done
  [ "$still" = 0 ] || fail "APIs not enabled after waiting: ${missing[*]} (gcloud services list --enabled)" 1
else
  step "APIs enabled: ${BOOTSTRAP_APIS[*]}"
fi

# 3. foundation (Terraform makes no change when it is done)
apply

# 4. secrets
for secret in $SECRETS; do
  versions=$(query "" gcloud secrets versions list "$secret" --project "$PROJECT" --filter state:ENABLED \
    --format 'value(name)' --limit 1)
  if [ -n "$versions" ]; then
    step "secret $secret has a version"
    continue
  fi
  step "secret $secret: adding its first version"
  if [ "$DRY_RUN" = 1 ]; then
    run gcloud secrets versions add "$secret" --project "$PROJECT" --data-file=-
  else
    value=$(secret_value "$secret") || exit 1
    printf '%s' "$value" | gcloud secrets versions add "$secret" --project "$PROJECT" --data-file=- >/dev/null
    unset value
  fi
done

# 5. the first release (the phase moves on only once it succeeded)
if [ "$PHASE" = foundation ]; then
  run scripts/deploy.sh --env "$ENV_NAME"
  set_phase released
  # 6. released
  apply
  run scripts/deploy.sh --env "$ENV_NAME" --promote-latest
else
  step "already released (phase: $PHASE)"
fi

# 7. monitored
if [ "$PHASE" = released ]; then
  probe=$(metrics_probe)
  waited=0
  until [ "$(promql_series "$probe" || echo 0)" -gt 0 ]; do
    [ "$waited" -lt "$METRICS_WAIT_S" ] ||
      fail "no $probe series in Managed Prometheus after ${METRICS_WAIT_S}s: send the service a request, then run this again" 1
    step "waiting for $probe in Managed Prometheus (${waited}s)"
    sleep "$POLL_S"
    waited=$((waited + POLL_S))
  done
  set_phase monitored
  apply
  run scripts/deploy.sh --env "$ENV_NAME" --promote-latest
else
  step "already monitored"
fi
step "bootstrap of $ENV_NAME done: phase $PHASE (check it: make verify ENV=$ENV_NAME)"
