"""The live suite runs against a real cluster only: without NONSTOP_KUBECONFIG nothing here is collected
(not skipped: there is nothing to count). See tests/k8s_live/README.md (a kind cluster)."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("NONSTOP_KUBECONFIG") else ["test_*.py"]
