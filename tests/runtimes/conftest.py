"""The container test bed's fixtures (tests/runtimes/containers.py), for the tests in this directory."""

from tests.runtimes.containers import dockerd, example_image, podman_env, sig_image  # noqa: F401  (fixtures)
