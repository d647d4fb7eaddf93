"""hooks: pre_deploy before anything changes (a failure moves nothing), post_deploy once the release is live."""

from __future__ import annotations

import sys

from tests.e2e.artifacts import RUN_COMMAND, make_artifact


def test_pre_deploy_failing_moves_nothing_and_post_deploy_runs_with_placeholders(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.2")
    out = tmp_path / "post.txt"
    st = stack_factory(run={"command": RUN_COMMAND}, hooks={
        "post_deploy": [sys.executable, "-c", f"import sys; open({str(out)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')",
                        "{release}", "{version}"],
    })
    st.deploy("v1", "--artifact", str(good))
    assert out.read_text() == "v1 v1\n"
    st.write_config(hooks={"pre_deploy": [sys.executable, "-c", "import sys; print('no: migrations pending'); sys.exit(3)"]})
    before = st.status()
    res = st.deploy("v2", "--artifact", str(good), expect=1)
    assert res["state"] == "failed" and "hook pre_deploy failed with exit code 3" in res["reason"], res
    assert "migrations pending" in res["reason"]
    after = st.status()
    assert after["live_release"] == "v1"
    assert [(i["id"], i["pid"]) for i in after["instances"]] == [(i["id"], i["pid"]) for i in before["instances"]]
