#!/bin/bash
# Container entry point: uvicorn (uvloop + httptools) serving the gateway on ML_SERVER_PORT.
set -euo pipefail

echo "Starting Humansa ML Server..."
echo "Environment: ${ENVIRONMENT:-development}"
echo "Port: ${ML_SERVER_PORT:-5001}"

# Settings are validated first (one clear line on error), then migrations run at start-up.
exec python -m ml_server serve
