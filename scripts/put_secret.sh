#!/bin/bash
# Puts one Humansa secret (/humansa/<env>/<NAME>) from stdin; the value never reaches a command
# line, the shell history or the terminal.  Usage: make secrets ENV=production NAME=OPENAI_API_KEY
# To mark a provider as not configured again, put the placeholder value UNSET.
set -euo pipefail
ENVS="dev staging production"
NAMES="OPENAI_API_KEY ANTHROPIC_API_KEY DEEPSEEK_API_KEY GOOGLE_API_KEY XAI_API_KEY AZURE_INFERENCE_ENDPOINT AZURE_INFERENCE_CREDENTIAL WEBSHARE_PROXY_USERNAME WEBSHARE_PROXY_PASSWORD MEM0_API_KEY GHCR_TOKEN"
env_name="${1:-}"
name="${2:-}"
case " $ENVS " in *" $env_name "*) [ -n "$env_name" ] ;; *) false ;; esac \
  || { echo "put_secret: ENV must be one of $ENVS (got '$env_name')" >&2; exit 2; }
case " $NAMES " in *" $name "*) [ -n "$name" ] ;; *) false ;; esac \
  || { echo "put_secret: NAME must be one of $NAMES (got '$name')" >&2; exit 2; }
if [ -t 0 ]; then
  read -r -s -p "Value for /humansa/$env_name/$name (not echoed): " value
  echo >&2
else
  value=$(cat)
fi
[ -n "$value" ] || { echo "put_secret: empty value refused (put UNSET to disable a provider)" >&2; exit 2; }
printf '%s' "$value" | aws secretsmanager put-secret-value --secret-id "/humansa/$env_name/$name" \
  --secret-string file:///dev/stdin --query VersionId --output text >/dev/null
echo "put_secret: stored a new version of /humansa/$env_name/$name" >&2
