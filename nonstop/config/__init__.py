"""The one configuration object: ``nonstop.yml`` loaded, validated, resolved.

Every setting is declared once, in the module of its block (default, validation, help); ``load()``
turns every problem into a ``ConfigProblems`` (a ``ConfigError``) listing each with its field path
(``strategy.steps[1].weight``), file and line, which the CLI reports with exit code 2.

The package's modules, one part each (import from ``nonstop.config``: these re-exports are the API):

- ``fields``      field types every block shares (``Duration``, ``Command``, ``split_command``)
- ``run``         the ``build``, ``run`` and ``health`` blocks; ``port_list``, ``PLACEHOLDERS``
- ``analysis``    canary analysis and the watch after a switch; ``Limit``, ``RateLimit``, ``LatencyLimit``
- ``strategies``  the ``strategy`` block, one model per strategy; ``resolve_count``
- ``routers``     the ``router`` block, one model per router; ``ROUTER_CAPABILITIES``
- ``dashboard``, ``notify``, ``tls``, ``kubernetes``: those blocks
- ``model``       the root ``Config``, its checks across blocks and its paths
- ``loader``      ``load(path)`` and ``from_dict(data)``: pydantic's errors as ``ConfigProblems``
- ``template``    the ``nonstop.yml`` that ``nonstop init`` writes
"""

from __future__ import annotations

from nonstop.config.analysis import AnalysisConfig, CanaryAnalysis, LatencyLimit, Limit, RateLimit, RollingAnalysis, WatchAnalysis
from nonstop.config.dashboard import DashboardConfig
from nonstop.config.fields import Command, Duration, split_command
from nonstop.config.kubernetes import GatewayRef, KubernetesConfig
from nonstop.config.loader import CONFIG_NAME, from_dict, load
from nonstop.config.model import Config
from nonstop.config.notify import NotifyConfig
from nonstop.config.routers import ROUTER_CAPABILITIES, EmbeddedRouter, HaproxyRouter, NginxRouter, Router, router_capabilities
from nonstop.config.run import HOOK_PLACEHOLDERS, IMAGE_PLACEHOLDERS, PLACEHOLDERS, BuildConfig, HealthConfig, RunConfig, port_list
from nonstop.config.strategies import (
    STRATEGY_BLOCKS,
    BlueGreenStrategy,
    CanaryStrategy,
    CountOrPercent,
    MatchConfig,
    RecreateStrategy,
    RollingStrategy,
    SplitKey,
    Step,
    Strategy,
    resolve_count,
)
from nonstop.config.template import TEMPLATE
from nonstop.config.tls import AcmeConfig, CertificateFiles, TlsConfig
from nonstop.configfile import ConfigProblems, Problem

__all__ = [
    # reading the file
    "CONFIG_NAME",
    "load",
    "from_dict",
    "ConfigProblems",
    "Problem",
    "TEMPLATE",
    # the root object
    "Config",
    # field types
    "Duration",
    "Command",
    "split_command",
    # build, run, health
    "BuildConfig",
    "RunConfig",
    "HealthConfig",
    "PLACEHOLDERS",
    "IMAGE_PLACEHOLDERS",
    "HOOK_PLACEHOLDERS",
    "port_list",
    # strategies and analysis
    "Strategy",
    "STRATEGY_BLOCKS",
    "RecreateStrategy",
    "BlueGreenStrategy",
    "CanaryStrategy",
    "RollingStrategy",
    "Step",
    "MatchConfig",
    "SplitKey",
    "CountOrPercent",
    "resolve_count",
    "AnalysisConfig",
    "CanaryAnalysis",
    "WatchAnalysis",
    "RollingAnalysis",
    "Limit",
    "RateLimit",
    "LatencyLimit",
    # routers
    "Router",
    "EmbeddedRouter",
    "NginxRouter",
    "HaproxyRouter",
    "ROUTER_CAPABILITIES",
    "router_capabilities",
    # the other blocks
    "DashboardConfig",
    "NotifyConfig",
    "TlsConfig",
    "CertificateFiles",
    "AcmeConfig",
    "KubernetesConfig",
    "GatewayRef",
]
