"""`make demo` (deploy/demo.sh) shows the product (issue 18): the proxy uses the Redis the demo
starts (policy and session registry), scanning is on and the printed curl line for the EICAR
message shows the notice, the admin URL is printed, and the demo's own start-up leaves no
failed TLS handshake behind."""

from __future__ import annotations

import imaplib
import json
import os
import shlex
import subprocess
from pathlib import Path

import clients
import mailenv


def test_demo_start_shows_scanning_registry_and_a_clean_log(env_tmp, request):
    d = env_tmp / "demo"
    binary = request.config.getoption("--proxy-binary")
    env = dict(os.environ, PORTCULLIS_DEMO_DIR=str(d), PORTCULLIS_BIN=binary)
    demo = ["bash", str(mailenv.REPO / "deploy" / "demo.sh")]
    r = subprocess.run(demo + ["start"], cwd=mailenv.REPO, env=env, capture_output=True,
                       text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        state = json.loads((d / "state.json").read_text())
        admin = state["proxy"]["admin_port"]
        assert f"curl http://127.0.0.1:{admin}/metrics" in out, out
        assert "make demo-stop" in out

        # The printed line for the infected message, run as printed (from the repo root, where
        # demo.sh runs): the client gets the notice, not the message.
        uid = mailenv.DEMO_MESSAGES + 1
        line = next((ln for ln in out.splitlines() if f"/INBOX;UID={uid}" in ln), None)
        assert line, out
        got = subprocess.run(shlex.split(line), cwd=mailenv.REPO, capture_output=True,
                             text=True, timeout=30)
        assert got.returncode == 0, got.stderr
        assert "X-Portcullis-Verdict: infected" in got.stdout, got.stdout[:2000]
        assert "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" not in got.stdout

        # A live session is in the registry of the demo's Redis.
        rd = mailenv.Redis()
        rd.port = state["redis"]["port"]
        ctx = mailenv.ssl_context(d / "certs" / "ca.pem")
        m = imaplib.IMAP4_SSL(mailenv.LOCAL, state["proxy"]["ports"]["imaps"], ssl_context=ctx,
                              timeout=15)
        m.login("demo", "demo")
        keys = clients.wait_for(lambda: rd.command("KEYS", "demo:sess:*"), 5,
                                what="a demo:sess:* registry key in the demo's Redis")
        assert any("{demo}" in k for k in keys), keys
        m.logout()

        # No failed handshakes: readiness came from /healthz, not from probing the TLS ports.
        px = mailenv.Proxy()
        px.admin_port = admin
        m = px.metrics()
        fails = {k: v for k, v in m.items() if k[0] == "portcullis_tls_handshake_failures_total"}
        assert fails and not any(fails.values()), fails
        assert m[("portcullis_scan_verdicts_total", frozenset({("verdict", "infected")}))] >= 1
        assert m[("portcullis_redis_connections_ready", frozenset())] >= 1
        log = Path(state["proxy"]["log"]).read_text()
        assert "event=tls_failed" not in log, log
        assert "event=scan_verdict" in log and "infected" in log
    finally:
        stop = subprocess.run(demo + ["stop"], cwd=mailenv.REPO, env=env, capture_output=True,
                              text=True, timeout=60)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    pids = [v["pid"] for v in state.values() if isinstance(v, dict) and "pid" in v]
    assert len(pids) == 3 and not any(mailenv.pid_alive(p) for p in pids), (pids, stop.stdout)
    # Under a sanitizer build, the demo's proxy log is checked as the fixtures check theirs.
    problems = [ln for ln in Path(state["proxy"]["log"]).read_text().splitlines()
                if any(p in ln for p in mailenv.LOG_PROBLEMS)]
    assert not problems, problems
