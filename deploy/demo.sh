#!/usr/bin/env bash
# Portcullis demo: Redis + Dovecot (users demo/demo and demo2/demo2pw, 20 messages and one
# carrying the EICAR test string in demo's INBOX) + Portcullis on 127.0.0.1, with the login
# policy and the session registry in that Redis and scanning on (a generated test signature),
# everything under ./demo-run/ (gitignored; PORTCULLIS_DEMO_DIR=DIR puts it elsewhere).
#
#   bash deploy/demo.sh start [--no-proxy]   (make demo)       needs root (Dovecot) and `make`
#   bash deploy/demo.sh stop                 (make demo-stop)  stops everything by PID
#
# Builds nothing: `make demo` builds build/portcullis first. PORTCULLIS_BIN=path overrides the
# binary; --no-proxy starts only Redis and Dovecot. Proxy ports are 10993 (imaps), 10143 (imap +
# STARTTLS), 10995 (pop3s), 10110 (pop3 + STLS), admin/metrics 10190 when free, else free ports
# (printed). Readiness is checked on the admin /healthz, never by connecting to a listener.
# The work is done by tests/integration/mailenv.py (the same code the integration tests use).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
DIR=${PORTCULLIS_DEMO_DIR:-demo-run}

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
