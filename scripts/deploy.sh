#!/usr/bin/env bash
# Release the service the safe way: one Cloud Build builds and pushes both images (the CPU image for
# Cloud Run, the GPU image for the GPU group), the CPU image becomes a new revision with no traffic under
# the `candidate` tag, the locust release gate runs against the candidate's URL, then either the
# candidate gets 100% of the traffic (the revision it replaces is tagged `previous`, for
# scripts/rollback.sh) and the GPU group rolls to the new GPU image, or the candidate is untagged and the
# release fails. .github/workflows/deploy.yml runs this on every merge; it is also the release by hand.
#
#   scripts/deploy.sh --env dev [--image IMAGE@sha256:... [--gpu-image IMAGE@sha256:...]] [--dry-run]
#   scripts/deploy.sh --env dev --promote-latest [--dry-run]
#
# Options:
#   --env NAME        environment file envs/NAME.yaml (default dev)
#   --image REF       deploy this CPU image (digest or tag) instead of building; nothing is built
#   --gpu-image REF   with --image: roll the GPU group to this image (without it the group keeps its image)
#   --promote-latest  no build: gate the service's latest ready revision and promote it, when it is not the
#                     one serving (how a `cdktf deploy` change to the service goes live; `make apply`)
#   --tag TAG         image tag of the build (default: the git commit, short)
#   --gate-args "..." extra arguments for the gate (default: --run-time 60s --users 8)
#   --dry-run         print the gcloud and gate commands instead of running them; changes nothing
#   -h, --help        this text
#
# The gate's credentials: LOADTEST_ID_TOKEN if set (CI: the auth action's id_token), else
# `gcloud auth print-identity-token` (a person); the API key from the env's service.api_keys_secret in
# Secret Manager when it sets one (never printed). LOADTEST_GATE replaces the gate command (tests).
# Needs gcloud and python3 with this repository's dependencies. Writes the release to build/release.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release_lib.sh
source scripts/release_lib.sh

ENV_ARG=dev
IMAGE=""
GPU_IMAGE=""
TAG=""
PROMOTE_LATEST=0
GATE_ARGS="--run-time 60s --users 8"
while [ $# -gt 0 ]; do
  case "$1" in
    --env) ENV_ARG=${2:?--env needs a name}; shift 2 ;;
    --image) IMAGE=${2:?--image needs a reference}; shift 2 ;;
    --gpu-image) GPU_IMAGE=${2:?--gpu-image needs a reference}; shift 2 ;;
    --promote-latest) PROMOTE_LATEST=1; shift ;;
    --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
    --gate-args) GATE_ARGS=${2?--gate-args needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" 2 ;;
  esac
done
[ "$PROMOTE_LATEST" = 0 ] || [ -z "$IMAGE$GPU_IMAGE" ] || fail "--promote-latest deploys no image" 2
[ -z "$GPU_IMAGE" ] || [ -n "$IMAGE" ] || fail "--gpu-image needs --image" 2

load_env "$ENV_ARG"
[ -n "$TAG" ] || TAG=$(git rev-parse --short=12 HEAD 2>/dev/null || echo manual)
WHERE=(--project "$PROJECT" --region "$REGION")
read -r -a GATE <<<"${LOADTEST_GATE:-$PYTHON -m loadtest.gate}"

# The gate's credentials first, so that a missing one fails before anything is built or deployed.
GATE_TOKEN=$(gate_id_token) || exit 1
GATE_KEY=$(gate_api_key) || exit 1

# gate URL: the locust gate against URL, with the identity token and the API key in its environment only
gate() {
  step "release gate against $1"
  # shellcheck disable=SC2086  # GATE_ARGS is a list of arguments
  LOADTEST_ID_TOKEN="$GATE_TOKEN" LOADTEST_API_KEY="$GATE_KEY" run "${GATE[@]}" --host "$1" --out build/loadtest $GATE_ARGS
}

# gate_or_untag URL CANDIDATE SERVING: the gate; on failure the candidate loses its tag and the release fails
gate_or_untag() {
  if ! gate "$1"; then
    step "the gate failed: untagging $2; traffic stays on $3"
    run gcloud run services update-traffic "$SERVICE" "${WHERE[@]}" --remove-tags candidate --quiet
    fail "release rejected by the gate (reports: build/loadtest/)" 1
  fi
}

# promote CANDIDATE SERVING: all traffic to the candidate; the replaced revision keeps `previous`
promote() {
  step "promote $1 to 100% (previous: $2)"
  run gcloud run services update-traffic "$SERVICE" "${WHERE[@]}" \
    --to-revisions "$1=100" --update-tags "previous=$2" --remove-tags candidate --quiet
}

# image_digest REPO: REPO@sha256:... of REPO:$TAG, as the build pushed it
image_digest() {
  local digest
  digest=$(query "sha256:<digest>" gcloud artifacts docker images describe "$1:$TAG" \
    --project "$PROJECT" --format 'value(image_summary.digest)')
  [ -n "$digest" ] || fail "no digest for $1:$TAG (did the build push it?)" 1
  echo "$1@$digest"
}

# roll_gpu_group IMAGE: the group's VMs run IMAGE (all-instances configuration: its metadata overrides the
# template's, and the group's PROACTIVE update policy replaces the VMs); wait while it has any
roll_gpu_group() {
  step "roll $GPU_GROUP to $1"
  run gcloud compute instance-groups managed all-instances-config update "$GPU_GROUP" "${WHERE[@]}" \
    --metadata="nanochat-image=$1"
  local size
  size=$(query 1 gcloud compute instance-groups managed describe "$GPU_GROUP" "${WHERE[@]}" \
    --format 'value(targetSize)')
  if [ "${size:-0}" -gt 0 ]; then
    if ! run gcloud compute instance-groups managed wait-until "$GPU_GROUP" --stable --timeout 1800 "${WHERE[@]}"; then
      run gcloud compute instance-groups managed list-errors "$GPU_GROUP" "${WHERE[@]}" >&2 || true
      fail "$GPU_GROUP did not become stable on $1 (errors above); Cloud Run already serves the release" 1
    fi
  else
    step "$GPU_GROUP has no VMs: new ones will start on $1"
  fi
}

if [ "$PROMOTE_LATEST" = 1 ]; then
  step "promote the latest revision of $SERVICE in $PROJECT/$REGION ($ENV_NAME) if it does not serve"
  serving=$(query "<serving-revision>" current_revision)
  latest=$(query "<latest-ready-revision>" latest_ready_revision)
  [ -n "$latest" ] || fail "$SERVICE has no ready revision" 1
  if [ "$latest" = "$serving" ]; then
    step "$latest already serves all traffic: nothing to promote"
    exit 0
  fi
  run gcloud run services update-traffic "$SERVICE" "${WHERE[@]}" --update-tags "candidate=$latest" --quiet
  url=$(query "https://candidate---$SERVICE-<hash>.a.run.app" tagged_url candidate)
  gate_or_untag "$url" "$latest" "$serving"
  promote "$latest" "$serving"
  record_release "$ENV_NAME" "$latest" "(latest revision)" "$serving"
  step "promoted $latest"
  exit 0
fi

step "release $SERVICE in $PROJECT/$REGION ($ENV_NAME)"
# 1. the images: one build of both targets, staged in the stack's bucket, run as the build account
if [ -z "$IMAGE" ]; then
  gpu_repo=""
  [ "$GPU_ENABLED" != true ] || gpu_repo=$GPU_IMAGE_REPO
  step "build $IMAGE_REPO:$TAG${gpu_repo:+ and $gpu_repo:$TAG} with Cloud Build"
  run gcloud builds submit "${WHERE[@]}" --config cloudbuild.yaml \
    --substitutions "_IMAGE=$IMAGE_REPO,_GPU_IMAGE=$gpu_repo,COMMIT_SHA=$TAG" \
    --gcs-source-staging-dir "$BUILD_STAGING_DIR" \
    --service-account "projects/$PROJECT/serviceAccounts/$BUILD_SA" .
  IMAGE=$(image_digest "$IMAGE_REPO")
  [ -z "$gpu_repo" ] || GPU_IMAGE=$(image_digest "$gpu_repo")
fi

# 2. a new revision with no traffic, reachable at the candidate tag's URL
step "deploy $IMAGE as a candidate (no traffic)"
serving=$(query "<serving-revision>" current_revision)
# The env's secret env vars ride with every release: Terraform mounts them only once they have values
# (phase released), and a first release must not run without its API keys (the gate checks they work).
SECRET_FLAGS=()
[ -z "$SERVICE_SECRETS" ] || SECRET_FLAGS=(--update-secrets "$SERVICE_SECRETS")
run gcloud run deploy "$SERVICE" "${WHERE[@]}" --image "$IMAGE" "${SECRET_FLAGS[@]}" \
  --no-traffic --tag candidate --quiet
candidate=$(query "<candidate-revision>" tagged_revision candidate)
url=$(query "https://candidate---$SERVICE-<hash>.a.run.app" tagged_url candidate)

# 3. the gate, against the candidate only; 4. promote
gate_or_untag "$url" "$candidate" "$serving"
promote "$candidate" "$serving"
record_release "$ENV_NAME" "$candidate" "$IMAGE" "$serving" "$GPU_IMAGE"

# 5. the GPU group follows the release (its image belongs to releases, not to Terraform)
if [ "$GPU_ENABLED" = true ] && [ -n "$GPU_IMAGE" ]; then
  roll_gpu_group "$GPU_IMAGE"
fi
step "released $IMAGE as $candidate${GPU_IMAGE:+; GPU: $GPU_IMAGE}"
