#!/usr/bin/env bash
# Release the service to Cloud Run the safe way: build and push the image, deploy it as a new revision with
# no traffic under the `candidate` tag, run the locust release gate against the candidate's URL, then
# either promote it to 100% of the traffic (the revision it replaces is tagged `previous`, for
# scripts/rollback.sh) or untag it and fail. The same steps as .github/workflows/deploy.yml, by hand.
#
#   scripts/deploy.sh --env dev [--image IMAGE@sha256:...] [--dry-run]
#
# Options:
#   --env NAME        environment file envs/NAME.yaml: project, region, service name, registry (default dev)
#   --image REF       deploy this image (digest or tag) instead of building one with Cloud Build
#   --tag TAG         image tag of the build (default: the git commit, short)
#   --gate-args "..." extra arguments for `python -m loadtest.gate` (default: --run-time 60s --users 8)
#   --dry-run         print the gcloud and gate commands instead of running them; changes nothing
#   -h, --help        this text
#
# Needs gcloud (authenticated: workload identity in CI, `gcloud auth login` by hand) and python3 with this
# repository's dependencies (for the gate). Writes the released image digest to build/release.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/release_lib.sh
source scripts/release_lib.sh

ENV_NAME=dev
IMAGE=""
TAG=""
GATE_ARGS="--run-time 60s --users 8"
while [ $# -gt 0 ]; do
  case "$1" in
    --env) ENV_NAME=${2:?--env needs a name}; shift 2 ;;
    --image) IMAGE=${2:?--image needs a reference}; shift 2 ;;
    --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
    --gate-args) GATE_ARGS=${2?--gate-args needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage "$0"; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" 2 ;;
  esac
done

load_env "$ENV_NAME"
[ -n "$TAG" ] || TAG=$(git rev-parse --short=12 HEAD 2>/dev/null || echo manual)
step "release $SERVICE in $PROJECT/$REGION ($ENV_NAME)"

# 1. the image: build and push with Cloud Build, then pin it by digest
if [ -z "$IMAGE" ]; then
  step "build $IMAGE_REPO:$TAG with Cloud Build"
  run gcloud builds submit --project "$PROJECT" --region "$REGION" --config cloudbuild.yaml \
    --substitutions "_IMAGE=$IMAGE_REPO,COMMIT_SHA=$TAG" . \
    --service-account "projects/$PROJECT/serviceAccounts/nanochat-build-$ENV_NAME@$PROJECT.iam.gserviceaccount.com"
  digest=$(query "sha256:<digest>" gcloud artifacts docker images describe "$IMAGE_REPO:$TAG" \
    --project "$PROJECT" --format 'value(image_summary.digest)')
  IMAGE="$IMAGE_REPO@$digest"
fi

# 2. a new revision with no traffic, reachable at the candidate tag's URL
step "deploy $IMAGE as a candidate (no traffic)"
serving=$(query "<serving-revision>" current_revision)
run gcloud run deploy "$SERVICE" --project "$PROJECT" --region "$REGION" --image "$IMAGE" \
  --no-traffic --tag candidate --quiet
candidate=$(query "<candidate-revision>" tagged_revision candidate)
url=$(query "https://candidate---$SERVICE-<hash>.a.run.app" tagged_url candidate)

# 3. the gate, against the candidate only (an identity token passes Cloud Run's IAM check)
step "release gate against $url"
token=$(query "<identity-token>" gcloud auth print-identity-token)
# shellcheck disable=SC2086  # GATE_ARGS is a list of arguments
if ! LOADTEST_ID_TOKEN="$token" run "${PYTHON:-python3}" -m loadtest.gate --host "$url" --out build/loadtest $GATE_ARGS; then
  step "the gate failed: untagging $candidate; traffic stays on $serving"
  run gcloud run services update-traffic "$SERVICE" --project "$PROJECT" --region "$REGION" \
    --remove-tags candidate --quiet
  fail "release rejected by the gate (reports: build/loadtest/)" 1
fi

# 4. promote: all traffic to the candidate; the replaced revision keeps the `previous` tag for rollback
step "promote $candidate to 100% (previous: $serving)"
run gcloud run services update-traffic "$SERVICE" --project "$PROJECT" --region "$REGION" \
  --to-revisions "$candidate=100" --update-tags "previous=$serving" --remove-tags candidate --quiet
record_release "$ENV_NAME" "$candidate" "$IMAGE" "$serving"
step "released $IMAGE as $candidate"
