"""Release naming through the driver against the API's transport fake (tests/kubernetes/fakeapi.py; no
Kubernetes server can run here): ``run.image`` with ``{release}``."""

from __future__ import annotations

import asyncio

from tests.kubernetes.test_driver import driver


def test_run_image_with_release_names_the_id_a_version_gets(fake):
    _cluster, _served, path = fake
    d, _ = driver(path, run={"image": "registry.example/roomescape:{release}"})
    v1 = asyncio.run(d.new_release("v1"))
    assert (v1.id, v1.image) == ("v1", "registry.example/roomescape:v1")
    assert asyncio.run(d.deploy(v1)).ok
    # the registry moved: v1 names another image now, so it is v1-2, and {release} says so in the tag
    d2, _ = driver(path, run={"image": "registry2.example/roomescape:{release}"})
    again = asyncio.run(d2.new_release("v1"))
    assert (again.id, again.image) == ("v1-2", "registry2.example/roomescape:v1-2")
