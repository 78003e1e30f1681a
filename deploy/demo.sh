#!/usr/bin/env bash
# Portcullis demo: Redis + Dovecot (users demo/demo and demo2/demo2pw, ~20 messages in demo's
# INBOX) + Portcullis on 127.0.0.1, everything under ./demo-run/ (gitignored).
#
#   bash deploy/demo.sh start [--no-proxy]   (make demo)       needs root (Dovecot) and `make`
#   bash deploy/demo.sh stop                 (make demo-stop)  stops everything by PID
#
# Builds nothing: `make demo` builds build/portcullis first. PORTCULLIS_BIN=path overrides the
# binary; --no-proxy starts only Redis and Dovecot. Proxy ports are 10993 (imaps), 10143 (imap +
# STARTTLS), 10995 (pop3s), 10110 (pop3 + STLS) when free, else free ports (printed).
# The work is done by tests/integration/mailenv.py (the same code the integration tests use).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
DIR=demo-run

case "${1:-}" in
start)
    shift
    exec "$PYTHON" tests/integration/mailenv.py demo-start "$DIR" "$@"
    ;;
stop)
    exec "$PYTHON" tests/integration/mailenv.py demo-stop "$DIR"
    ;;
*)
    echo "usage: $0 start [--no-proxy] | stop" >&2
    exit 2
    ;;
esac
