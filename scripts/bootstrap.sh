#!/usr/bin/env bash
# make bootstrap ENV=<name|ci>: create or update the two customer-managed policies in
# bootstrap/ (the CloudFormation execution policy and the permissions boundary every app role
# carries), then `cdk bootstrap` with that execution policy instead of AdministratorAccess.
# Needs admin credentials for the target account (run once per account/region, and again
# after editing bootstrap/*.json). docs/security.md says what to widen to add a service.
set -euo pipefail
env_name="${1:-}"
[[ -n "$env_name" ]] || { echo "make bootstrap needs ENV=<name> (dev, staging, production or ci)" >&2; exit 2; }
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
read -r account region qualifier < <("$PY" - "$env_name" <<'PYEOF'
import sys
from config import CI_SELECTOR, load_account, load_all
name = sys.argv[1]
account = load_account()
if name == CI_SELECTOR:
    print(account.account, account.region, account.bootstrap_qualifier)
else:
    (env,) = load_all([name])
    print(env.account, env.region, account.bootstrap_qualifier)
PYEOF
)
# IAM is global, but the AWS CLI still refuses to run without a region: use the environment's.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-$region}"
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

put_policy() {  # name file: create the managed policy, or make the file its default version
  local name="$1" file="$2" arn="arn:aws:iam::${account}:policy/$1"
  sed "s/\${ACCOUNT}/${account}/g" "$file" >"$workdir/$name.json"
  if aws iam get-policy --policy-arn "$arn" >/dev/null 2>&1; then
    # IAM keeps at most 5 versions: drop the oldest non-default one first.
    # shellcheck disable=SC2016  # a JMESPath literal, not a shell expansion
    oldest="$(aws iam list-policy-versions --policy-arn "$arn" \
      --query 'Versions[?IsDefaultVersion==`false`]|sort_by(@,&CreateDate)[0].VersionId' --output text)"
    if [[ "$(aws iam list-policy-versions --policy-arn "$arn" --query 'length(Versions)')" -ge 5 ]]; then
      aws iam delete-policy-version --policy-arn "$arn" --version-id "$oldest"
    fi
    aws iam create-policy-version --policy-arn "$arn" --set-as-default \
      --policy-document "file://$workdir/$name.json" >/dev/null
    echo "bootstrap: updated $arn"
  else
    aws iam create-policy --policy-name "$name" --description "Humansa CDK: see docs/security.md" \
      --policy-document "file://$workdir/$name.json" >/dev/null
    echo "bootstrap: created $arn"
  fi
}

put_policy humansa-permissions-boundary bootstrap/permissions-boundary.json
put_policy humansa-cdk-execution bootstrap/execution-policy.json
# --app '': the environment is named, so the CLI needs no synth of the app (it would run
# app.py for every environment, ~1 min, only to list environments it then ignores).
node_modules/.bin/cdk bootstrap "aws://${account}/${region}" --app '' --no-notices \
  --qualifier "$qualifier" \
  --cloudformation-execution-policies "arn:aws:iam::${account}:policy/humansa-cdk-execution"
