"""The incident verbs' quick path: what it takes, that it never loads click, and that it answers
exactly as the click commands do (against a fake agent on a real Unix socket)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nonstop.cli.quick import Invocation, parse
from tests.cli.test_client import Canned


@pytest.mark.parametrize("argv, inv", [
    (["rollback"], Invocation(None, "rollback")),
    (["rollback", "--json"], Invocation(None, "rollback", json=True)),
    (["-c", "x.yml", "rollback", "--to", "v1", "--json"], Invocation("x.yml", "rollback", "v1", json=True)),
    (["--config=x.yml", "rollback", "--to=v1"], Invocation("x.yml", "rollback", "v1")),
    (["--config", "x.yml", "abort"], Invocation("x.yml", "abort")),
    (["promote", "--full"], Invocation(None, "promote", full=True)),
    (["pause", "--json"], Invocation(None, "pause", json=True)),
    (["resume"], Invocation(None, "resume")),
])
def test_the_plain_forms_are_taken(argv, inv):
    assert parse(argv) == inv


@pytest.mark.parametrize("argv", [
    [], ["status"], ["deploy"], ["--help"], ["rollback", "--help"], ["rollback", "-h"], ["--version"],
    ["rollback", "--to"], ["rollback", "--to="], ["rollback", "--to", "--json"], ["rollback", "--to", "a", "--to", "b"],
    ["abort", "--full"], ["promote", "--to", "v1"], ["rollback", "extra"], ["rollback", "--json", "--json"],
    ["-c"], ["-c", "--json", "rollback"], ["--config="], ["-x", "rollback"], ["rollbak"],
])
def test_everything_else_goes_to_click(argv):
    assert parse(argv) is None


def _events(*events: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body


ROLLED_BACK = _events(b'{"type": "start", "ts": 1.0, "message": "rollback to v1"}\n',
                      b'{"type": "result", "ok": true, "deployment": 7, "state": "succeeded", "release": "v1", "ts": 1.1}\n')
REFUSED = _events(b'{"type": "result", "ok": false, "deployment": 8, "state": "failed", "reason": "nothing kept", "ts": 1.1}\n')
BUSY_BODY = b'{"error": "Busy", "message": "deployment 7 is running", "exit_code": 4}'
BUSY = b"HTTP/1.1 409 Conflict\r\nContent-Length: %d\r\n\r\n%s" % (len(BUSY_BODY), BUSY_BODY)
STEERED_BODY = b'{"ok": true, "deployment": 7, "action": "promote_full"}'
STEERED = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(STEERED_BODY), STEERED_BODY)


def _run(tmp_path, answer: bytes, argv: list[str], quick: bool):
    sock = tmp_path / ".nonstop" / "agent.sock"
    sock.parent.mkdir(exist_ok=True)
    if sock.exists():
        sock.unlink()
    agent = Canned(sock, answer)
    env = {k: v for k, v in os.environ.items() if k != "NONSTOP_NO_QUICK"}
    if not quick:
        env["NONSTOP_NO_QUICK"] = "1"
    code = "import sys, runpy; sys.argv = ['nonstop', *sys.argv[1:]]; runpy.run_module('nonstop', run_name='__main__')"
    probe = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('CLICK-LOADED\\n' if 'click' in sys.modules else ''));"
             + code)
    r = subprocess.run([sys.executable, "-c", probe, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env=env)
    agent.close()
    return r.returncode, r.stdout, r.stderr, agent.request


@pytest.mark.parametrize("answer, argv, exit_code", [
    (ROLLED_BACK, ["rollback", "--json"], 0),
    (ROLLED_BACK, ["rollback", "--to", "v1", "--json"], 0),
    (REFUSED, ["rollback", "--json"], 1),
    (BUSY, ["rollback", "--json"], 4),
    (BUSY, ["abort"], 4),
    (STEERED, ["promote", "--full", "--json"], 0),
    (STEERED, ["pause"], 0),
])
def test_the_quick_path_answers_as_click_does_without_loading_it(tmp_path, answer, argv, exit_code):
    (tmp_path / "nonstop.yml").write_text("app: shop\n")
    fast = _run(tmp_path, answer, argv, quick=True)
    slow = _run(tmp_path, answer, argv, quick=False)
    assert "CLICK-LOADED" not in fast[2] and "CLICK-LOADED" in slow[2]
    assert fast[0] == slow[0] == exit_code
    assert fast[1] == slow[1]  # stdout
    assert fast[2] == slow[2].replace("CLICK-LOADED\n", "")  # stderr
    assert fast[3] == slow[3]  # the request the agent got
