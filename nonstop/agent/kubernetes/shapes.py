"""What the cluster should look like at one point of a rollout: pure data, and the strategies' shapes.

A ``Shape`` names the Deployments ("tracks") nonstop keeps for an app, which
release each runs with how many replicas, and how traffic is split among
them. ``manifests.render`` turns a shape into the objects to apply; the
rollout reconcilers (``rollout.py``) move from one shape to the next.

Tracks and the Deployments they are:

| track | Deployment | lane | used by |
| --- | --- | --- | --- |
| ``main`` | ``<app>`` | ``main`` | rolling, recreate; the canary's stable side |
| ``canary`` | ``<app>-canary`` | ``main`` | canary |
| ``blue`` / ``green`` | ``<app>-blue`` / ``<app>-green`` | its color | blue-green |

The *lane* is the pod label the app's Service selects without a gateway:
the canary's pods share the stable side's lane, so one Service spreads
requests over both by replica count (the approximated weight).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from nonstop.config import CanaryStrategy, Config

__all__ = [
    "TRACKS",
    "COLORS",
    "KRelease",
    "Track",
    "Shape",
    "deployment_name",
    "service_name",
    "lane",
    "image_for",
    "canary_replicas",
    "effective_weight",
    "rolling_shape",
    "recreate_shape",
    "bluegreen_shape",
    "canary_shape",
    "first_deploy_shape",
    "other_color",
]

TRACKS = ("main", "canary", "blue", "green")
COLORS = ("blue", "green")


@dataclass(frozen=True)
class KRelease:
    """One release as the cluster runs it: an id, the version it was built as, the image (by digest when known)."""

    id: str
    version: str
    image: str
    digest: str | None = None
    created: float = 0.0

    @property
    def image_ref(self) -> str:
        """What pods run: ``image@digest`` when the digest is known (a tag may move later), else the image."""
        if self.digest and "@" not in self.image:
            return f"{self.image.split('@')[0]}@{self.digest}"
        return self.image

    def to_json(self) -> dict:
        return {"id": self.id, "version": self.version, "image": self.image, "digest": self.digest, "created": self.created}

    @classmethod
    def from_json(cls, d: dict) -> "KRelease":
        return cls(str(d["id"]), str(d.get("version") or d["id"]), str(d["image"]), d.get("digest"), float(d.get("created") or 0.0))


@dataclass(frozen=True)
class Track:
    """One Deployment of the app: the release it runs and its replica count."""

    name: str  # one of TRACKS
    release: KRelease
    replicas: int

    def __post_init__(self) -> None:
        if self.name not in TRACKS:
            raise ValueError(f"unknown track {self.name!r}; expected one of {TRACKS}")
        if self.replicas < 0:
            raise ValueError("replicas must not be negative")


@dataclass(frozen=True)
class Shape:
    """The desired state of one app: its tracks (in TRACKS order) and the traffic weights among them."""

    strategy: str  # rolling | recreate | blue-green | canary
    tracks: tuple[Track, ...]
    weights: tuple[tuple[str, int], ...]  # (track, weight 0..100), summing to 100
    preview: str | None = None  # blue-green: the color ``<app>-preview`` selects

    def __post_init__(self) -> None:
        names = [t.name for t in self.tracks]
        if len(set(names)) != len(names):
            raise ValueError(f"a track appears twice: {names}")
        if sorted(names, key=TRACKS.index) != names:
            object.__setattr__(self, "tracks", tuple(sorted(self.tracks, key=lambda t: TRACKS.index(t.name))))
        if sum(w for _, w in self.weights) != 100:
            raise ValueError(f"weights must sum to 100: {self.weights}")
        for t, _ in self.weights:
            if t not in names:
                raise ValueError(f"weight for track {t!r}, which the shape does not have")

    def track(self, name: str) -> Track | None:
        return next((t for t in self.tracks if t.name == name), None)

    @property
    def primary(self) -> str:
        """The track with the most traffic (the first on a tie)."""
        return max(self.weights, key=lambda tw: tw[1])[0]

    def weight(self, track: str) -> int:
        return dict(self.weights).get(track, 0)

    def live_release(self) -> KRelease:
        t = self.track(self.primary)
        assert t is not None
        return t.release

    def with_replicas(self, track: str, replicas: int) -> "Shape":
        return replace(self, tracks=tuple(replace(t, replicas=replicas) if t.name == track else t for t in self.tracks))

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy,
            "tracks": [{"name": t.name, "release": t.release.to_json(), "replicas": t.replicas} for t in self.tracks],
            "weights": [[t, w] for t, w in self.weights],
            "preview": self.preview,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Shape":
        return cls(
            strategy=d["strategy"],
            tracks=tuple(Track(t["name"], KRelease.from_json(t["release"]), int(t["replicas"])) for t in d["tracks"]),
            weights=tuple((str(t), int(w)) for t, w in d["weights"]),
            preview=d.get("preview"),
        )


def deployment_name(app: str, track: str) -> str:
    return app if track == "main" else f"{app}-{track}"


def service_name(app: str, track: str | None = None) -> str:
    """``<app>`` (the app's Service), or a track's own Service for a gateway's backendRefs (``<app>-stable``…)."""
    if track is None:
        return app
    return f"{app}-stable" if track == "main" else f"{app}-{track}"


def lane(track: str) -> str:
    return "main" if track in ("main", "canary") else track


def image_for(cfg: Config, version: str, release_id: str, override: str | None = None) -> str:
    """The image of a release: ``--image`` as given, else ``run.image`` with {version} and {release} filled in."""
    if override:
        return override
    assert cfg.run.image is not None  # config load refuses kubernetes without run.image
    return cfg.run.image.replace("{version}", version).replace("{release}", release_id)


def canary_replicas(n: int, weight: int, *, gateway: bool) -> int:
    """Canary pods for a weight. With a gateway the route splits requests and the canary only needs the
    capacity for its share (``ceil(n × w%)``); without one the split *is* the replica ratio beside the
    ``n`` stable pods (``c / (n + c)`` nearest to ``w``, at least 1)."""
    if weight <= 0:
        return 0
    if weight >= 100:
        return n
    if gateway:
        return max(1, -(-n * weight // 100))
    best, err = 1, None
    for c in range(1, 100 * n + 1):
        e = abs(c / (n + c) * 100 - weight)
        if err is None or e < err - 1e-9:
            best, err = c, e
        elif c / (n + c) * 100 > weight:
            break
    return best


def effective_weight(stable_ready: int, canary_ready: int) -> int:
    """The share a Service's even spread over endpoints gives the canary (percent, rounded)."""
    total = stable_ready + canary_ready
    return round(100 * canary_ready / total) if total else 0


def _gateway(cfg: Config) -> bool:
    return cfg.kubernetes is not None and cfg.kubernetes.gateway is not None


def rolling_shape(cfg: Config, release: KRelease, *, strategy: str = "rolling") -> Shape:
    """One Deployment ``<app>`` running ``release`` at ``run.instances``."""
    return Shape(strategy, (Track("main", release, cfg.run.instances),), (("main", 100),))


def recreate_shape(cfg: Config, release: KRelease) -> Shape:
    return rolling_shape(cfg, release, strategy="recreate")


def other_color(color: str | None) -> str:
    return "green" if color == "blue" else "blue"


def bluegreen_shape(
    cfg: Config,
    *,
    live: str,
    colors: dict[str, tuple[KRelease, int]],
    preview: str | None = None,
    extra: Iterable[Track] = (),
) -> Shape:
    """Both colors as given (release, replicas); all traffic to ``live``; ``extra`` keeps other tracks
    (a previous rolling Deployment kept warm after a strategy change)."""
    tracks = [Track(c, rel, reps) for c, (rel, reps) in colors.items()] + list(extra)
    return Shape("blue-green", tuple(tracks), ((live, 100),), preview=preview)


def canary_shape(cfg: Config, stable: KRelease, canary: KRelease, weight: int, *, canary_pods: int | None = None) -> Shape:
    """``n`` stable pods on ``main`` and the canary's pods for ``weight`` (``canary_pods`` overrides). With
    match rules the canary keeps one pod even at 0%: matching requests go to it at any weight."""
    n = cfg.run.instances
    c = canary_replicas(n, weight, gateway=_gateway(cfg)) if canary_pods is None else canary_pods
    s = cfg.strategy
    if canary_pods is None and isinstance(s, CanaryStrategy) and s.match and (s.match.header or s.match.cookie):
        c = max(c, 1)
    return Shape(
        "canary",
        (Track("main", stable, n), Track("canary", canary, c)),
        (("main", 100 - weight), ("canary", weight)),
    )


def first_deploy_shape(cfg: Config, release: KRelease, strategy: str | None = None) -> Shape:
    """What a first deploy of ``release`` leaves behind (``nonstop manifests`` offline shows this)."""
    s = strategy or cfg.strategy.type
    if s == "blue-green":
        return bluegreen_shape(cfg, live="blue", colors={"blue": (release, cfg.run.instances)}, preview=None)
    if s == "canary":
        # nothing to compare with: the release is simply the stable side
        assert isinstance(cfg.strategy, CanaryStrategy) or strategy == "canary"
        return Shape("canary", (Track("main", release, cfg.run.instances),), (("main", 100),))
    if s == "recreate":
        return recreate_shape(cfg, release)
    return rolling_shape(cfg, release)

