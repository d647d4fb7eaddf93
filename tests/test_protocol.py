"""The control API's typed requests: what the CLI sends is what the agent reads; bad fields are named."""

from __future__ import annotations

import pytest

from nonstop.errors import UsageError
from nonstop.protocol import EVENT_FIELDS, DeployRequest, RollbackRequest, SteerRequest, error_json
from nonstop.errors import DeploymentInProgress


def test_requests_round_trip():
    for req in (DeployRequest("v2", "/a.jar", "canary", None, False), RollbackRequest("v1"), SteerRequest("promote_full")):
        assert type(req).from_json(req.to_json()) == req
    # what an older CLI sent (no image, no follow) still reads
    assert DeployRequest.from_json({"version": "v1", "artifact": None, "strategy": None}) == DeployRequest("v1")


@pytest.mark.parametrize("cls,body,field", [
    (DeployRequest, {"version": 3}, "version"),
    (DeployRequest, {"strategy": "yolo"}, "--strategy"),
    (DeployRequest, {"follow": "yes"}, "follow"),
    (RollbackRequest, {"to": ["v1"]}, "to"),
    (SteerRequest, {"action": "explode"}, "action"),
])
def test_bad_fields_are_named(cls, body, field):
    with pytest.raises(UsageError) as e:
        cls.from_json(body)
    assert e.value.detail["field"] == field and e.value.exit_code == 2


def test_a_body_that_is_no_object_is_refused():
    with pytest.raises(UsageError, match="JSON object"):
        DeployRequest.from_json([1, 2])


def test_errors_carry_their_exit_code_and_status():
    body, status = error_json(DeploymentInProgress("deployment #3 of v2 is running"))
    assert status == 409 and body["exit_code"] == 4 and body["error"] == "DeploymentInProgress"


def test_the_events_that_carry_fields_clients_read():
    # the deploy view reads from_release from the start event's fields, never from its message
    assert "from_release" in EVENT_FIELDS["start"] and "received" in EVENT_FIELDS["split_skew"]
