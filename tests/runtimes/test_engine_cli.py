"""The engine's CLI calls on the agent's own loop (uvloop): nothing of the agent leaks into the CLI or
into a daemon it starts (``podman run -d`` leaves ``conmon`` behind), and a call ends when the
command exits, even if such a daemon kept a copy of its output pipe."""

from __future__ import annotations

import time

import uvloop

from nonstop.agent.runtimes.engine import Engine


def _sh() -> Engine:
    return Engine("docker", binary="sh", env={"PATH": "/usr/bin:/bin"})


def test_a_call_returns_when_the_command_exits_though_a_daemon_it_started_holds_its_output():
    async def main():
        t0 = time.monotonic()
        # the background sleep is the "daemon": it keeps stdout and stderr open for 20 s
        res = await _sh().run("-c", "sleep 20 & echo started; echo oops >&2")
        return res, time.monotonic() - t0

    res, took = uvloop.run(main())
    assert res.ok and res.out.strip() == "started" and res.err.strip() == "oops"
    assert took < 5, f"waited {took:.1f}s for the daemon's copy of the pipe"


def test_the_cli_gets_its_three_streams_and_no_other_descriptor():
    async def main():
        spawned = await _sh().spawn("-c", "ls /proc/self/fd")
        out = await spawned.stdout.read()
        assert await spawned.wait() == 0
        ran = await _sh().run("-c", "ls /proc/self/fd")
        return out.decode().split(), ran.out.split()

    spawned, ran = uvloop.run(main())
    # 0-2, and the descriptor `ls` itself opens to read the folder
    assert len(spawned) == 4 and {"0", "1", "2"} <= set(spawned), spawned
    assert len(ran) == 4 and {"0", "1", "2"} <= set(ran), ran


def test_a_call_past_its_timeout_is_killed():
    async def main():
        from nonstop.errors import EngineUnreachable

        t0 = time.monotonic()
        try:
            await _sh().run("-c", "sleep 30", timeout=0.5)
        except EngineUnreachable as e:
            return str(e), time.monotonic() - t0
        raise AssertionError("no timeout")

    msg, took = uvloop.run(main())
    assert "did not answer" in msg and took < 3
