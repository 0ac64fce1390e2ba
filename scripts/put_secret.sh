#!/bin/bash
# Puts one Humansa secret (/humansa/<env>/<NAME>) from stdin; the value never reaches a command
# line, the shell history or the terminal.  Usage: make secrets ENV=production NAME=OPENAI_API_KEY
# To mark a provider as not configured again, put the placeholder value UNSET.
# GHCR_TOKEN (the ECR pull-through cache credential) is stored as the JSON ECR requires,
# {"username": $GHCR_USERNAME, "accessToken": <stdin>}, in ecr-pullthroughcache/humansa/<env>/ghcr-credential
# (a Data stack secret: it exists before the first ghcr fleet, docs/boot.md "The GHCR token").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config_dir="${HUMANSA_CONFIG_DIR:-$root/config}"
# The environments are the config files (dev, staging, production first); account.yaml is not one.
ENVS=""
for preferred in dev staging production; do
  [ -f "$config_dir/$preferred.yaml" ] && ENVS="$ENVS $preferred"
done
for file in "$config_dir"/*.yaml; do
  n="$(basename "$file" .yaml)"
  case "$n" in account | dev | staging | production) ;; *) ENVS="$ENVS $n" ;; esac
done
ENVS="${ENVS# }"
NAMES="OPENAI_API_KEY ANTHROPIC_API_KEY DEEPSEEK_API_KEY GOOGLE_API_KEY XAI_API_KEY AZURE_INFERENCE_ENDPOINT AZURE_INFERENCE_CREDENTIAL WEBSHARE_PROXY_USERNAME WEBSHARE_PROXY_PASSWORD MEM0_API_KEY ADMIN_API_KEY GHCR_TOKEN"
env_name="${1:-}"
name="${2:-}"
case " $ENVS " in *" $env_name "*) [ -n "$env_name" ] ;; *) false ;; esac \
  || { echo "put_secret: ENV must be one of $ENVS (got '$env_name')" >&2; exit 2; }
case " $NAMES " in *" $name "*) [ -n "$name" ] ;; *) false ;; esac \
  || { echo "put_secret: NAME must be one of $NAMES (got '$name')" >&2; exit 2; }
# The environment's region, from its config file (a top-level `region: <name>` line).
region="$(sed -n 's/^region:[[:space:]]*"\{0,1\}\([a-z0-9-]*\)"\{0,1\}.*$/\1/p' "$config_dir/$env_name.yaml" | head -n 1)"
[ -n "$region" ] || { echo "put_secret: no region: in $config_dir/$env_name.yaml" >&2; exit 2; }
# The AWS CLI on PATH, else the venv's pinned awscli (make does not activate the venv).
aws="$(command -v aws || true)"
[ -n "$aws" ] || [ ! -x "$root/.venv/bin/aws" ] || aws="$root/.venv/bin/aws"
[ -n "$aws" ] || { echo "put_secret: needs the AWS CLI (aws is neither on PATH nor in .venv): make install (the venv pins awscli), or install the AWS CLI" >&2; exit 3; }
if [ -t 0 ]; then
  read -r -s -p "Value for /humansa/$env_name/$name (not echoed): " value
  echo >&2
else
  value=$(cat)
fi
[ -n "$value" ] || { echo "put_secret: empty value refused (put UNSET to disable a provider)" >&2; exit 2; }
secret_id="/humansa/$env_name/$name"
if [ "$name" = GHCR_TOKEN ]; then
  [ -n "${GHCR_USERNAME:-}" ] \
    || { echo "put_secret: GHCR_TOKEN needs GHCR_USERNAME=<GitHub user owning the token>" >&2; exit 2; }
  [ "$value" != UNSET ] || { echo "put_secret: GHCR_TOKEN has no 'not configured' value; put a token" >&2; exit 2; }
  secret_id="ecr-pullthroughcache/humansa/$env_name/ghcr-credential"
  # The token goes through stdin into the JSON; only the user name is in the environment.
  value=$(printf '%s' "$value" | python3 -c \
    'import json, os, sys; print(json.dumps({"username": os.environ["GHCR_USERNAME"], "accessToken": sys.stdin.read()}))')
fi
if ! failed=$(printf '%s' "$value" | "$aws" secretsmanager put-secret-value --region "$region" \
  --secret-id "$secret_id" --secret-string file:///dev/stdin --query VersionId --output text 2>&1 >/dev/null); then
  case "$failed" in
    *ResourceNotFoundException*)
      if [ "$name" = GHCR_TOKEN ]; then
        title="$(printf '%s' "$env_name" | sed -E 's/(^|-)([a-z0-9])/\U\2/g')"
        echo "put_secret: $secret_id does not exist in $region yet: the Data stack creates it (npx cdk deploy -c env=$env_name Humansa-$title-Data deploys only Network and Data)" >&2
      else
        echo "put_secret: $secret_id does not exist in $region yet: the Service stack creates it (make deploy ENV=$env_name first)" >&2
      fi ;;
    *) failed="${failed//$'\n'/ }"; echo "put_secret: $secret_id in $region: ${failed#"${failed%%[![:space:]]*}"}" >&2 ;;
  esac
  exit 1
fi
echo "put_secret: stored a new version of $secret_id in $region" >&2
