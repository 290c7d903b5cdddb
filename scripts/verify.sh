#!/usr/bin/env bash
# After a deploy: does the environment work end to end? Read-only checks, one line each (`ok`, `skip` or
# `FAIL ... -- fix: ...`); exits 1 when any fails. `make verify ENV=dev`.
#
#   serving      the latest ready revision serves all traffic (else an infra change is not live yet)
#   chat         the service answers a chat completion (identity token + the env's API key)
#   metrics      the service's series are queryable in Managed Service for Prometheus
#   grafana      Grafana's Managed Prometheus datasource passes its health check (phase monitored)
#   email        the alert email channels exist and are not unverified; no API sends a test
#                notification, so the line says where to send one by hand
#   budget       a budget covers the project; the kill switch function is active (budget.kill_switch)
#
#   scripts/verify.sh --env dev
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
WHERE=(--project "$PROJECT" --region "$REGION")
GRAFANA_DATASOURCE_UID=managed-prometheus  # modules/grafana.py DATASOURCE_UID (a test keeps them equal)

# serving
serving=$(current_revision 2>/dev/null) || serving=""
latest=$(latest_ready_revision 2>/dev/null) || latest=""
if [ -n "$latest" ] && [ "$latest" = "$serving" ]; then
  report ok "serving: the latest ready revision $latest has all traffic"
elif [ -n "$latest" ]; then
  report FAIL "serving: $serving has the traffic, the latest ready revision $latest none" "scripts/deploy.sh --env $ENV_NAME --promote-latest (make apply does it after cdktf deploy)"
else
  report FAIL "serving: no ready revision of $SERVICE" "gcloud run services describe $SERVICE ${WHERE[*]}"
fi

# chat
token=$(gate_id_token 2>/dev/null) || token=""
key=$(gate_api_key 2>/dev/null) || key=""
url=$(gcloud run services describe "$SERVICE" "${WHERE[@]}" --format 'value(status.url)' 2>/dev/null) || url=""
headers=(-H "Content-Type: application/json" -H "X-Serverless-Authorization: Bearer $token")
[ -z "$key" ] || headers+=(-H "Authorization: Bearer $key")
if [ -z "$url" ]; then
  report FAIL "chat: $SERVICE has no URL" "make bootstrap ENV=$ENV_NAME"
else
  http "$url$CHAT_COMPLETIONS_PATH" -X POST "${headers[@]}" \
    -d '{"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}'
  if [ "$HTTP_STATUS" = 200 ] && grep -q '"choices"' <<<"$HTTP_BODY"; then
    report ok "chat: $url$CHAT_COMPLETIONS_PATH answered"
  else
    report FAIL "chat: $url$CHAT_COMPLETIONS_PATH answered HTTP $HTTP_STATUS" "gcloud run services logs read $SERVICE ${WHERE[*]}; a 401/403 is the caller's run.invoker or the API key"
  fi
fi

# metrics
probe=$(metrics_probe)
series=$(promql_series "$probe" 2>/dev/null) || series=""
if [ "${series:-0}" -gt 0 ]; then
  report ok "metrics: $series $probe series in Managed Prometheus"
else
  report FAIL "metrics: no $probe series in Managed Prometheus${series:+ (query answered 0)}" "send the service a request and wait a minute; else the collector sidecar's logs (gcloud run services logs read $SERVICE)"
fi

# grafana
if [ "$GRAFANA_ENABLED" != true ]; then
  report skip "grafana: grafana.enabled is false"
elif [ "$PHASE" != monitored ]; then
  report skip "grafana: not deployed before phase monitored (now $PHASE; make bootstrap ENV=$ENV_NAME)"
else
  grafana=$(gcloud run services describe "$GRAFANA_SERVICE" "${WHERE[@]}" --format 'value(status.url)' 2>/dev/null) || grafana=""
  http "$grafana/api/datasources/uid/$GRAFANA_DATASOURCE_UID/health" -H "X-Serverless-Authorization: Bearer $token"
  if [ -n "$grafana" ] && [ "$HTTP_STATUS" = 200 ]; then
    report ok "grafana: datasource $GRAFANA_DATASOURCE_UID is healthy"
  else
    report FAIL "grafana: datasource $GRAFANA_DATASOURCE_UID health check answered HTTP $HTTP_STATUS" "gcloud run services logs read $GRAFANA_SERVICE ${WHERE[*]} (the frontend sidecar needs monitoring.viewer)"
  fi
fi

# email
channels=$(gcloud beta monitoring channels list --project "$PROJECT" --filter 'type="email"' --format json 2>/dev/null) || channels='[]'
for email in $ALERT_EMAILS; do
  status=$("$PYTHON" -c '
import json, sys

for channel in json.loads(sys.argv[1]):
    if channel.get("labels", {}).get("email_address") == sys.argv[2]:
        print(channel.get("verificationStatus") or "VERIFICATION_STATUS_UNSPECIFIED")
        break
' "$channels" "$email")
  if [ -z "$status" ]; then
    report FAIL "email: no notification channel for $email" "cdktf deploy $ENV_NAME (the stack makes one per monitoring.alert_emails)"
  elif [ "$status" = UNVERIFIED ]; then
    report FAIL "email: the channel for $email is unverified" "verify it in the console (Monitoring > Alerting > Edit notification channels)"
  else
    report ok "email: channel for $email exists ($status)"
  fi
done
report skip "email: a test notification is sent by hand: Grafana > Alerting > Contact points > Test (Cloud Monitoring has no API for it)"

# budget and kill switch
number=$(gcloud projects describe "$PROJECT" --format 'value(projectNumber)' 2>/dev/null) || number=""
budgets=$(gcloud billing budgets list --billing-account "$BILLING_ACCOUNT" --format json 2>/dev/null) || budgets='[]'
covered=$("$PYTHON" -c '
import json, sys

budgets, project = json.loads(sys.argv[1]), f"projects/{sys.argv[2]}"
print(next((b.get("displayName", b.get("name")) for b in budgets if project in b.get("budgetFilter", {}).get("projects", [])), ""))
' "$budgets" "$number")
if [ -n "$number" ] && [ -n "$covered" ]; then
  report ok "budget: \"$covered\" covers $PROJECT"
else
  report FAIL "budget: none on billing account $BILLING_ACCOUNT covers $PROJECT" "cdktf deploy $ENV_NAME (the account needs Billing Account Costs Manager on $BILLING_ACCOUNT)"
fi
if [ "$KILL_SWITCH" != true ]; then
  report skip "kill switch: off (budget.kill_switch in $ENV_FILE)"
else
  state=$(gcloud functions describe "$KILL_SWITCH_FUNCTION" "${WHERE[@]}" --format 'value(state)' 2>/dev/null) || state=""
  if [ "$state" = ACTIVE ]; then
    report ok "kill switch: function $KILL_SWITCH_FUNCTION is active"
  else
    report FAIL "kill switch: function $KILL_SWITCH_FUNCTION is ${state:-missing}" "cdktf deploy $ENV_NAME; gcloud functions logs read $KILL_SWITCH_FUNCTION ${WHERE[*]}"
  fi
fi

[ "$FAILURES" -eq 0 ] || fail "$FAILURES check(s) failed" 1
echo "verify of $ENV_NAME: all checks passed"
