"""Releases on disk: build, copy the artifact into ``releases/<id>/``, prune.

A release's folder is written once (into a temporary folder, then renamed
into place) and made read-only, so a later build never overwrites the jar a
running instance uses, and a rollback never rebuilds. A failed build changes
nothing: no release row and no folder (its log stays in ``logs/`` to read).

A version names one artifact, recorded by its digest (``artifact_digest``:
sha256 of the file, or of a folder's files). Deploying a version that exists
with the same artifact (or with none given) reuses its release; with a
different one it is refused (``VersionTaken``), naming both digests.
"""

from __future__ import annotations

import glob
import json
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from nonstop.agent.commands import fill_build, render_build
from nonstop.agent.runtimes.base import ImageInfo
from nonstop.agent.room import is_disk_full
from nonstop.agent.store import Release, Store, validate_version
from nonstop.config import BuildConfig, split_command
from nonstop.errors import DeploymentFailed, UsageError

__all__ = ["Releases", "BuildFailed", "VersionTaken", "default_version", "artifact_digest", "artifact_bytes"]

LOG_TAIL_LINES = 30
IMAGE_FILE = "image.json"


class BuildFailed(DeploymentFailed):
    """A ``build:`` command failed, timed out, or produced no artifact; nothing was stored."""


class VersionTaken(UsageError):
    """``--version`` names a release that exists and cannot be deployed again as asked (another artifact, or a build)."""


Log = Callable[[str], None]


def artifact_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of an artifact: a file's bytes; for a folder, every entry in path order with its
    relative path, its kind, a file's bytes and executable bit, a link's target (its own name is not part of it,
    so a copy under ``releases/<id>/`` has the digest of its source)."""
    root = Path(path)
    if not root.is_dir() or root.is_symlink():
        return "sha256:" + _file_sha256(root).hex()
    h = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            entries.append(os.path.normpath(os.path.join(rel, name)))
    for rel in sorted(entries):
        full = root / rel
        if full.is_symlink():
            h.update(b"L\0" + rel.encode() + b"\0" + os.readlink(full).encode() + b"\0")
        elif full.is_dir():
            h.update(b"D\0" + rel.encode() + b"\0")
        else:
            x = b"x" if os.stat(full).st_mode & stat.S_IXUSR else b"-"
            h.update(b"F\0" + rel.encode() + b"\0" + x + _file_sha256(full) + b"\0")
    return "sha256:" + h.hexdigest()


def _file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def artifact_bytes(path: str | Path) -> int:
    """What a copy of the artifact takes: a file's size, or the sum over a folder's files."""
    root = Path(path)
    if not root.is_dir():
        return root.stat().st_size
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def short(digest: str | None) -> str:
    """``sha256:1f2e3d4c5b6a`` (12 hex digits: enough to tell two artifacts apart in a message)."""
    if digest is None:
        return "no artifact"
    algo, _, hexd = digest.partition(":")
    return f"{algo}:{hexd[:12]}"


def _say(log: Log | None, msg: str) -> None:
    if log is None:
        return
    info = getattr(log, "info", None)  # a logging.Logger works too
    (info or log)(msg)


def _git_sha(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha.isalnum() else None


def default_version(workdir: Path | None, now: float | None = None) -> str:
    """``20261125-094512`` plus ``-<short sha>`` when ``workdir`` is in a git repository."""
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc).strftime("%Y%m%d-%H%M%S")
    sha = _git_sha(workdir) if workdir is not None and workdir.is_dir() else None
    return f"{stamp}-{sha}" if sha else stamp


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _make_read_only(root: Path) -> None:
    """Files r--r--r-- (r-x when executable), folders r-x: the release is immutable."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            mode = os.stat(p).st_mode
            ro = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
            if mode & stat.S_IXUSR:
                ro |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
            os.chmod(p, ro)
        os.chmod(dirpath, 0o555)


def _remove_tree(root: Path) -> None:
    """rmtree for a read-only tree: give the folders back their write bit first."""
    if not root.exists() and not root.is_symlink():
        return
    if root.is_dir() and not root.is_symlink():
        for dirpath, _dirnames, _files in os.walk(root):
            try:
                os.chmod(dirpath, 0o755)
            except OSError:
                pass
        shutil.rmtree(root)
    else:
        root.unlink()


class Releases:
    """Owns ``<state_dir>/releases/`` and the build logs in ``<state_dir>/logs/``:
    runs builds, stores immutable artifact copies with their release rows,
    and prunes old ones."""

    def __init__(self, state_dir: Path, store: Store) -> None:
        self.state_dir = Path(state_dir)
        self.store = store
        self.dir = self.state_dir / "releases"
        self.logs_dir = self.state_dir / "logs"

    # -- paths -------------------------------------------------------------------
    def release_dir(self, release: Release | str) -> Path:
        rid = release if isinstance(release, str) else release.id
        return self.dir / rid

    def image(self, release: Release | str) -> ImageInfo | None:
        """The image a container release runs (``releases/<id>/image.json``: the reference and its id)."""
        try:
            data = json.loads((self.release_dir(release) / IMAGE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return ImageInfo(data["ref"], data["id"])

    def artifact_path(self, release: Release | str) -> Path | None:
        """Where the release's artifact copy is (None for a command-only release)."""
        rel = self.store.get_release(release) if isinstance(release, str) else release
        if rel is None or rel.artifact is None:
            return None
        p = Path(rel.artifact)
        return p if p.is_absolute() else self.release_dir(rel) / p

    # -- create ------------------------------------------------------------------
    def create(
        self,
        version: str | None,
        artifact: Path | None,
        build: BuildConfig | None,
        base_dir: Path,
        log: Log | None = None,
        image: Callable[[str, str], ImageInfo] | None = None,
    ) -> Release:
        """Build (when ``build`` has commands), copy the artifact, store the release.

        ``image(release_id, version)`` (container runtimes) names and resolves the release's image after the
        build; its reference and id are stored with the release, so a rollback runs those exact bytes.

        ``artifact`` (the ``--artifact`` path; relative to ``base_dir``) wins
        over ``build.artifact`` (relative to the build workdir). Neither →
        a release without artifact. Raises ``BuildFailed`` (log tail in the
        message and in ``detail["log_tail"]``) or ``UsageError``; either way
        nothing is stored. Blocking: call it in a thread from asyncio.
        """
        base_dir = Path(base_dir)
        workdir = (base_dir / build.workdir).resolve() if build else base_dir
        named = version is not None
        if version is None:
            version = default_version(workdir)
        validate_version(version)
        artifact = self.resolve_artifact(artifact, base_dir)
        if named:
            existing = self.existing(version, artifact, build, base_dir)
            if existing is not None:
                _say(log, f"release {existing.id} is stored with this artifact ({short(self.digest_of(existing))}): deploying it again")
                return existing

        # A version the user named is that release's id; only a generated one moves on to -2, -3 on a clash.
        rid = version if named else self.store.release_id(version)
        build_log: Path | None = None
        if build is not None and build.commands:
            build_log = self.logs_dir / f"build-{rid}.log"
            values = {"version": version, "release": rid, "state_dir": str(self.state_dir)}
            self._build(build, workdir, build_log, log, values)

        src: Path | None = artifact
        if src is None and build is not None and build.artifact:
            src = self._find_build_artifact(build.artifact, workdir, build_log)
        info = image(rid, version) if image is not None else None
        if info is not None:
            _say(log, f"image {info.ref} is {info.id}")

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-{rid}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            name: str | None = None
            if src is not None:
                name = src.name
                _say(log, f"copying {src} into releases/{rid}/")
                if src.is_dir():
                    shutil.copytree(src, tmp / name, symlinks=True)
                else:
                    shutil.copy2(src, tmp / name)
            if info is not None:
                (tmp / IMAGE_FILE).write_text(json.dumps({"ref": info.ref, "id": info.id}) + "\n")
            _make_read_only(tmp)
            digest = artifact_digest(tmp / name) if name else None
            rel = self._place(tmp, version, rid, name, build_log, log, digest=digest, suffix=not named)
        except BaseException as e:
            _remove_tree(tmp)
            if is_disk_full(e):
                raise self.store.full(f"copying {src}") from e
            raise
        _say(log, f"release {rel.id} stored" + (f" ({name})" if name else " (no artifact)"))
        return rel

    def _place(
        self, tmp: Path, version: str, rid: str, name: str | None, build_log: Path | None, log: Log | None,
        *, digest: str | None = None, suffix: bool = True,
    ) -> Release:
        """Rename the finished folder into place and insert its row; if another
        process took the id meanwhile, take the next one (``suffix``) or refuse."""
        for _ in range(20):
            final = self.dir / rid
            if final.exists():
                if self.store.get_release(rid) is not None:
                    if not suffix:
                        raise VersionTaken(f"--version {version}: another deploy stored release {rid} meanwhile",
                                           detail={"field": "--version"})
                    rid = self._next_id(version, rid)
                    continue
                # Left over by a crash between rename and insert: no release owns it.
                _remove_tree(final)
            try:
                os.rename(tmp, final)
            except OSError:
                rid = self._next_id(version, rid)
                continue
            if build_log is not None and build_log.name != f"build-{rid}.log":
                new_log = build_log.with_name(f"build-{rid}.log")
                os.replace(build_log, new_log)
                build_log = new_log
            artifact = str(final / name) if name else None
            try:
                return self.store.add_release(
                    version, artifact, str(build_log) if build_log else None, id=rid, digest=digest
                )
            except UsageError:
                os.rename(final, tmp)
                if not suffix:
                    raise VersionTaken(f"--version {version}: another deploy stored release {rid} meanwhile",
                                       detail={"field": "--version"}) from None
                rid = self._next_id(version, rid)
        raise UsageError(f"could not find a free release id for version {version!r}")  # pragma: no cover

    # -- versions name one artifact -------------------------------------------------
    @staticmethod
    def resolve_artifact(artifact: str | Path | None, base_dir: Path) -> Path | None:
        """The ``--artifact`` path, relative to ``base_dir``; ``UsageError`` when nothing is there."""
        if artifact is None:
            return None
        p = Path(os.path.expanduser(str(artifact)))
        if not p.is_absolute():
            p = Path(base_dir) / p
        if not p.exists():
            raise UsageError(f"--artifact: no such file or directory: {p}", detail={"field": "--artifact"})
        return p

    def digest_of(self, rel: Release) -> str | None:
        """The release's artifact digest (computed from its immutable copy, once, for releases stored before digests)."""
        if rel.digest is not None or rel.artifact is None:
            return rel.digest
        path = self.artifact_path(rel)
        if path is None or not path.exists():
            return None
        digest = artifact_digest(path)
        self.store.set_digest(rel.id, digest)
        rel.digest = digest
        return digest

    def existing(
        self, version: str, artifact: Path | None, build: BuildConfig | None, base_dir: Path
    ) -> Release | None:
        """The stored release ``version`` names, if any, when deploying it again as asked is the same artifact.

        None: no such release (a new one will be stored). Raises ``VersionTaken`` when the
        version names a release and the deploy would bring another artifact: a different
        ``--artifact`` (both digests named), or a build (which makes a new one)."""
        rel = self.store.find_release(version)
        if rel is None:
            return None
        have = self.digest_of(rel)
        if artifact is None and build is not None and build.commands:
            raise VersionTaken(
                f"--version {version}: release {rel.id} exists ({short(have)}), and a build would make a new artifact "
                f"under the same name. Choose a new version, or run {rel.id} again as stored with "
                f"`nonstop rollback --to {rel.id}`",
                detail={"field": "--version", "release": rel.id, "digest": have},
            )
        src = artifact
        if src is None and build is not None and build.artifact:
            workdir = (Path(base_dir) / build.workdir).resolve()
            src = self._find_build_artifact(build.artifact, workdir, None)
        if src is None:
            return rel  # nothing given: the release as stored
        given = artifact_digest(src)
        if given != have:
            raise VersionTaken(
                f"--version {version}: release {rel.id} is {short(have)}, but {src} is {short(given)}. "
                "A version names one artifact: choose a new version for this one",
                detail={"field": "--version", "release": rel.id, "digest": have, "given": given},
            )
        return rel

    def _next_id(self, version: str, taken: str) -> str:
        rid = self.store.release_id(version)
        if rid != taken and not (self.dir / rid).exists():
            return rid
        n = 2
        while True:
            cand = f"{version}-{n}"
            if cand != taken and self.store.get_release(cand) is None and not (self.dir / cand).exists():
                return cand
            n += 1

    def run_build(self, build: BuildConfig, workdir: Path, name: str, log: Log | None = None) -> Path:
        """Run ``build.commands`` alone, into ``logs/build-<name>.log`` (no artifact copy, no release row: the
        kubernetes runtime builds and pushes images). ``BuildFailed`` as ``create``; returns the log's path."""
        log_path = self.logs_dir / f"build-{name}.log"
        self._build(build, workdir, log_path, log)
        return log_path

    def _build(self, build: BuildConfig, workdir: Path, log_path: Path, log: Log | None,
               values: dict[str, str] | None = None) -> None:  # values: BUILD_PLACEHOLDERS to fill in; None: as given
        if not workdir.is_dir():
            raise BuildFailed(
                f"build.workdir: {workdir} does not exist", detail={"field": "build.workdir", "log": None}
            )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + build.timeout
        with open(log_path, "wb") as out:
            for cmd in build.commands:
                argv = render_build(cmd, values, shell=build.shell) if values else split_command(cmd, shell=build.shell)
                shown = fill_build(cmd if isinstance(cmd, str) else " ".join(cmd), values or {})
                _say(log, f"build: {shown}")
                stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                out.write(f"=== nonstop {stamp} build in {workdir}: {shown}\n".encode())
                out.flush()
                try:
                    proc = subprocess.Popen(
                        argv,
                        cwd=workdir,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        close_fds=True,
                    )
                except OSError as e:
                    why = "no such executable" if isinstance(e, FileNotFoundError) else (e.strerror or str(e))
                    msg = f"build command {shown!r} could not start: {argv[0]}: {why}"
                    out.write(f"=== nonstop: {msg}\n".encode())
                    out.flush()
                    raise BuildFailed(msg, detail={"command": shown, "log": str(log_path)}) from None
                try:
                    rc = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait()
                    msg = f"build timed out after {build.timeout:g}s running {shown!r}"
                    out.write(f"=== nonstop: {msg}\n".encode())
                    out.flush()
                    self._fail(msg, shown, log_path)
                except BaseException:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait()
                    raise
                if rc != 0:
                    msg = f"build command {shown!r} failed with exit code {rc}"
                    out.write(f"=== nonstop: {msg}\n".encode())
                    out.flush()
                    self._fail(msg, shown, log_path)

    @staticmethod
    def _fail(msg: str, command: str, log_path: Path) -> None:
        tail = _tail(log_path)
        raise BuildFailed(
            f"{msg} (log: {log_path})\n{tail}",
            detail={"command": command, "log": str(log_path), "log_tail": tail},
        )

    @staticmethod
    def _find_build_artifact(pattern: str, workdir: Path, build_log: Path | None) -> Path:
        p = Path(os.path.expanduser(pattern))
        full = p if p.is_absolute() else workdir / p
        if glob.has_magic(str(full)):
            matches = sorted(glob.glob(str(full)))
            if len(matches) != 1:
                found = ", ".join(matches[:5]) or "nothing"
                raise BuildFailed(
                    f"build.artifact: {pattern} must match exactly one file in {workdir}; found {found}",
                    detail={"field": "build.artifact", "log": str(build_log) if build_log else None},
                )
            return Path(matches[0])
        if not full.exists():
            raise BuildFailed(
                f"build.artifact: {full} does not exist" + (" after the build" if build_log else ""),
                detail={"field": "build.artifact", "log": str(build_log) if build_log else None},
            )
        return full

    # -- prune -------------------------------------------------------------------
    def prune(self, keep: int, protect: set[str]) -> list[str]:
        """Delete releases beyond the newest ``keep`` (folder, then row), never
        one in ``protect`` (live, previous, anything still running). Returns
        the ids deleted, oldest last."""
        removed = []
        for rel in self.store.list_releases()[max(keep, 0):]:
            if rel.id in protect:
                continue
            self.delete(rel.id)
            removed.append(rel.id)
        return removed

    def delete(self, id: str) -> None:
        """Delete one release's folder and row (no protection: ``prune`` decides)."""
        _remove_tree(self.release_dir(id))
        self.store.delete_release(id)
