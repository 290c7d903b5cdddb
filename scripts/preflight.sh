#!/usr/bin/env bash
# Before `make bootstrap`: can this account bring the environment up? Read-only checks, one line each
# (`ok` or `FAIL ... -- fix: ...`); exits 1 when any fails. `make preflight ENV=dev`.
#
#   tools        gcloud, npx (cdktf) and terraform on PATH
#   account      gcloud has an active account
#   project      the env's project exists, billing is enabled on it
#   permissions  the account holds what each bootstrap phase needs (projects.testIamPermissions, which
#                counts roles from groups too), and may create the budget on the billing account
#   GPU quota    GPUS_ALL_REGIONS (project) and the L4 quota of the region (spot: PREEMPTIBLE_...) cover
#                the group's largest size
#
#   scripts/preflight.sh --env dev
#
# Options:
#   --env NAME   environment file envs/NAME.yaml (default dev)
#   -h, --help   this text
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release_lib.sh
source scripts/release_lib.sh

env_args "$0" no "$@"
load_env "$ENV_ARG"

# What each phase calls; a role that grants them all is roles/owner on the project.
declare -A PHASE_PERMISSIONS=(
  [state]="storage.buckets.create storage.buckets.get storage.buckets.update"
  [apis]="serviceusage.services.enable serviceusage.services.list"
  [foundation]="iam.serviceAccounts.create resourcemanager.projects.setIamPolicy iam.workloadIdentityPools.create artifactregistry.repositories.create secretmanager.secrets.create secretmanager.versions.add run.services.create compute.instanceTemplates.create compute.instanceGroupManagers.create monitoring.notificationChannels.create pubsub.topics.create"
  [release]="cloudbuild.builds.create run.services.update iam.serviceAccounts.actAs"
  [monitored]="monitoring.alertPolicies.create monitoring.uptimeCheckConfigs.create"
)
PHASES=(state apis foundation release monitored)

# granted URL PERMISSION...: the permissions the caller holds, one a line (a testIamPermissions call)
granted() {
  local url=$1 body
  shift
  body=$(printf '%s\n' "$@" | "$PYTHON" -c 'import json, sys; print(json.dumps({"permissions": sys.stdin.read().split()}))')
  http "$url" -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" -d "$body"
  [ "$HTTP_STATUS" = 200 ] || return 1
  printf '%s' "$HTTP_BODY" | "$PYTHON" -c 'import json, sys; print("\n".join(json.load(sys.stdin).get("permissions", [])))'
}

# quota_limit METRIC: the limit of METRIC in the quotas JSON document on stdin (empty if absent)
quota_limit() {
  "$PYTHON" -c '
import json, sys

for quota in json.load(sys.stdin).get("quotas", []):
    if quota.get("metric") == sys.argv[1]:
        print(int(quota.get("limit", 0)))
' "$1"
}

# tools
for tool in gcloud npx terraform; do
  if command -v "$tool" >/dev/null; then
    report ok "tool $tool"
  else
    report FAIL "tool $tool is not on PATH" "install it (docs/infra.md \"Bootstrap\")"
  fi
done

# account
account=$(gcloud auth list --filter=status:ACTIVE --format 'value(account)' 2>/dev/null | head -n 1) || true
if [ -n "$account" ]; then
  report ok "account $account"
else
  report FAIL "no active gcloud account" "gcloud auth login (and gcloud auth application-default login for cdktf)"
fi

# project and billing
state=$(gcloud projects describe "$PROJECT" --format 'value(lifecycleState)' 2>/dev/null) || true
if [ "$state" = ACTIVE ]; then
  report ok "project $PROJECT"
else
  report FAIL "project $PROJECT not found or not active${state:+ ($state)}" "create it (gcloud projects create $PROJECT) or fix project: in $ENV_FILE"
fi
billing=$(gcloud billing projects describe "$PROJECT" --format 'value(billingEnabled)' 2>/dev/null) || true
if [ "${billing,,}" = true ]; then
  report ok "billing enabled on $PROJECT"
else
  report FAIL "billing is not enabled on $PROJECT" "gcloud billing projects link $PROJECT --billing-account $BILLING_ACCOUNT"
fi

# permissions, per phase
TOKEN=$(gcloud auth print-access-token 2>/dev/null) || TOKEN=""
for phase in "${PHASES[@]}"; do
  read -r -a wanted <<<"${PHASE_PERMISSIONS[$phase]}"
  if ! have=$(granted "https://cloudresourcemanager.googleapis.com/v1/projects/$PROJECT:testIamPermissions" "${wanted[@]}"); then
    report FAIL "permissions for phase $phase: cannot test them (HTTP $HTTP_STATUS)" "check the account and the project above"
    continue
  fi
  lacking=()
  for permission in "${wanted[@]}"; do
    grep -qx "$permission" <<<"$have" || lacking+=("$permission")
  done
  if [ ${#lacking[@]} -eq 0 ]; then
    report ok "permissions for phase $phase"
  else
    report FAIL "permissions for phase $phase: missing ${lacking[*]}" "grant $account roles/owner on $PROJECT (or roles holding these)"
  fi
done
if have=$(granted "https://cloudbilling.googleapis.com/v1/billingAccounts/$BILLING_ACCOUNT:testIamPermissions" billing.budgets.create) &&
  grep -qx billing.budgets.create <<<"$have"; then
  report ok "budget: may create budgets on billing account $BILLING_ACCOUNT"
else
  report FAIL "budget: cannot create budgets on billing account $BILLING_ACCOUNT" "grant $account Billing Account Costs Manager (roles/billing.costsManager) on it"
fi

# GPU quota
if [ "$GPU_ENABLED" = true ]; then
  quota_url="https://console.cloud.google.com/iam-admin/quotas?project=$PROJECT"
  if project_info=$(gcloud compute project-info describe --project "$PROJECT" --format json 2>/dev/null); then
    limit=$(quota_limit GPUS_ALL_REGIONS <<<"$project_info")
    if [ "${limit:-0}" -ge "$GPU_NEEDED" ]; then
      report ok "GPU quota GPUS_ALL_REGIONS $limit >= $GPU_NEEDED"
    else
      report FAIL "GPU quota GPUS_ALL_REGIONS is ${limit:-0}, the group needs $GPU_NEEDED" "request GPUS_ALL_REGIONS >= $GPU_NEEDED at $quota_url (new projects have 0)"
    fi
    region_info=$(gcloud compute regions describe "$REGION" --project "$PROJECT" --format json 2>/dev/null) || region_info='{}'
    limit=$(quota_limit "$GPU_QUOTA_METRIC" <<<"$region_info")
    if [ "${limit:-0}" -ge "$GPU_NEEDED" ]; then
      report ok "GPU quota $GPU_QUOTA_METRIC in $REGION $limit >= $GPU_NEEDED"
    else
      report FAIL "GPU quota $GPU_QUOTA_METRIC in $REGION is ${limit:-0}, the group needs $GPU_NEEDED" "request $GPU_QUOTA_METRIC >= $GPU_NEEDED in $REGION at $quota_url"
    fi
  else
    report FAIL "GPU quota: cannot read the project's quotas (Compute Engine API off?)" "gcloud services enable compute.googleapis.com --project $PROJECT, then run this again"
  fi
fi

[ "$FAILURES" -eq 0 ] || fail "$FAILURES check(s) failed" 1
echo "preflight of $ENV_NAME: all checks passed"
