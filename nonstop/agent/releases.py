"""Releases on disk: build, copy the artifact into ``releases/<id>/``, prune.

A release's folder is written once (into a temporary folder, then renamed
into place) and made read-only, so a later build never overwrites the jar a
running instance uses, and a rollback never rebuilds. A failed build changes
nothing: no release row and no folder (its log stays in ``logs/`` to read).
"""

from __future__ import annotations

import glob
import json
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

from nonstop.agent.runtimes.base import ImageInfo
from nonstop.agent.store import Release, Store, validate_version
from nonstop.config import BuildConfig, split_command
from nonstop.errors import DeploymentFailed, UsageError

__all__ = ["Releases", "BuildFailed", "default_version"]

LOG_TAIL_LINES = 30
IMAGE_FILE = "image.json"


class BuildFailed(DeploymentFailed):
    """A ``build:`` command failed, timed out, or produced no artifact; nothing was stored."""


Log = Callable[[str], None]


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
        if version is None:
            version = default_version(workdir)
        validate_version(version)
        if artifact is not None:
            artifact = Path(os.path.expanduser(str(artifact)))
            if not artifact.is_absolute():
                artifact = base_dir / artifact
            if not artifact.exists():
                raise UsageError(f"--artifact: no such file or directory: {artifact}", detail={"field": "artifact"})

        rid = self.store.release_id(version)
        build_log: Path | None = None
        if build is not None and build.commands:
            build_log = self.logs_dir / f"build-{rid}.log"
            self._build(build, workdir, build_log, log)

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
            rel = self._place(tmp, version, rid, name, build_log, log)
        except BaseException:
            _remove_tree(tmp)
            raise
        _say(log, f"release {rel.id} stored" + (f" ({name})" if name else " (no artifact)"))
        return rel

    def _place(
        self, tmp: Path, version: str, rid: str, name: str | None, build_log: Path | None, log: Log | None
    ) -> Release:
        """Rename the finished folder into place and insert its row; if another
        process took the id meanwhile, take the next one."""
        for _ in range(20):
            final = self.dir / rid
            if final.exists():
                if self.store.get_release(rid) is not None:
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
                    version, artifact, str(build_log) if build_log else None, id=rid
                )
            except UsageError:
                os.rename(final, tmp)
                rid = self._next_id(version, rid)
        raise UsageError(f"could not find a free release id for version {version!r}")  # pragma: no cover

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

    def _build(self, build: BuildConfig, workdir: Path, log_path: Path, log: Log | None) -> None:
        if not workdir.is_dir():
            raise BuildFailed(
                f"build.workdir: {workdir} does not exist", detail={"field": "build.workdir", "log": None}
            )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + build.timeout
        with open(log_path, "wb") as out:
            for cmd in build.commands:
                argv = split_command(cmd, shell=build.shell)
                shown = cmd if isinstance(cmd, str) else " ".join(cmd)
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
