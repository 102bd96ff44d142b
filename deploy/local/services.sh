#!/usr/bin/env bash
# Start, stop or check the local PostgreSQL and Apache Kafka (no containers needed).
#   deploy/local/services.sh up|down|status
# `make services-up` / `make services-down` call this. It is idempotent: a second
# `up` only checks that both answer. Logs: .local/postgres/postgres.log, .local/kafka/kafka.log
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/leadstage ]; then
  echo "No environment yet: run 'make install' first." >&2
  exit 1
fi
exec .venv/bin/leadstage services "$@"
