"""Gather, on the client, the wheels that install the agent on a host.

- Our own wheel is always uploaded (seamless-service is not on the package index). It is
  built from the source tree of the running package (`pip wheel --no-deps` on a clean
  copy, so the tree gets no build/ folder), or, for a non-editable install, repacked from
  the installed files. Cached by version + content hash, so a dev change is rebuilt.
- Dependency wheels (the base requirements from our own metadata, never the [client]
  extra) are only needed when the host cannot reach a package index. They must fit the
  HOST's Python: built with the local pip when local and remote interpreters match,
  else downloaded as binary wheels for the remote's version/platform/glibc.

Everything lands in the private cache folder (cache.wheels_dir(), 0700).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from . import DeployError
from .cache import ensure_private_dir, wheels_dir
from .remote_python import RemotePython

DIST_NAME = "seamless-service"
PACKAGE = "seamless_service"
PIP_TIMEOUT = 900.0
KEEP_OWN_BUILDS = 4
Progress = Callable[[str, str], None]

# Files of a source tree that a wheel build reads; everything else (tests, .git, build/)
# stays out of the clean copy.
_SOURCE_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in")
_SOURCE_GLOBS = ("README*", "LICENSE*", "LICENCE*")
# pyproject's script-files (kept inside the package folder, so the clean copy has them)
SCRIPT_FILES = ("seamless-service",)


def _noop(step: str, message: str) -> None:
    pass


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _pip(args: list[str], what: str) -> None:
    # `python -m pip` of the running interpreter: the client's own environment.
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                              timeout=PIP_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"{what}: pip did not finish within {PIP_TIMEOUT:g} s") from exc
    except OSError as exc:
        raise DeployError(f"{what}: cannot run pip: {exc.strerror or exc}") from exc
    if proc.returncode != 0:
        raise DeployError(f"{what}: pip failed ({proc.returncode}): {_tail(proc.stderr or proc.stdout)}")


# --------------------------------------------------------------------------- requirements


def requirements(wheel: Path) -> list[str]:
    """The base requirements declared by `wheel` (the one we upload): no extras, so never
    the client-side dependencies."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            text = zf.read(meta).decode("utf-8")
    except (OSError, zipfile.BadZipFile, StopIteration, UnicodeDecodeError) as exc:
        raise DeployError(f"cannot read the metadata of {wheel.name}") from exc
    reqs = []
    for line in text.splitlines():
        if not line.strip():
            break  # end of the headers; the body is the long description
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            if "extra" not in req.partition(";")[2]:
                reqs.append(req)
    return reqs


def version() -> str:
    from .. import __version__

    return __version__


# --------------------------------------------------------------------------- our own wheel


def project_root() -> Path | None:
    """The source tree the running package comes from (editable/dev install), if any."""
    import seamless_service

    root = Path(seamless_service.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        text = pyproject.read_text()
    except OSError:
        return None
    return root if f'name = "{DIST_NAME}"' in text else None


def _source_files(root: Path) -> list[Path]:
    files = [root / name for name in _SOURCE_FILES if (root / name).is_file()]
    for pattern in _SOURCE_GLOBS:
        files += sorted(p for p in root.glob(pattern) if p.is_file())
    for path in sorted((root / PACKAGE).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files.append(path)
    return files


def _content_hash(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _cached_wheel(folder: Path) -> Path | None:
    found = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    return found[0] if len(found) == 1 else None


def _publish(staging: Path, dest: Path) -> Path:
    """Move a finished staging folder into place atomically; a racing builder's result wins."""
    try:
        os.replace(staging, dest)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    wheel = _cached_wheel(dest)
    if wheel is None:
        raise DeployError(f"wheel cache folder {dest} is inconsistent; remove it and deploy again")
    return wheel


def build_wheel(root: Path, out_dir: Path) -> Path:
    """`pip wheel --no-deps` of a clean copy of the source tree `root`; returns the wheel."""
    files = _source_files(root)
    with tempfile.TemporaryDirectory(prefix="seamless-service-build-") as tmp:
        copy = Path(tmp) / "src"
        for path in files:
            target = copy / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        out = Path(tmp) / "out"
        try:
            _pip(["wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out), str(copy)],
                 f"building the {DIST_NAME} wheel")
        except DeployError as isolated_error:
            # No package index on the client? Build with the setuptools already installed.
            try:
                _pip(["wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-q",
                      "-w", str(out), str(copy)], f"building the {DIST_NAME} wheel")
            except DeployError:
                # the first failure says why (no index, a build error); the fallback's adds nothing
                raise isolated_error from None
        wheels = list(out.glob("*.whl"))
        if len(wheels) != 1:
            raise DeployError(f"building the {DIST_NAME} wheel produced {len(wheels)} wheels, expected 1")
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(str(wheels[0]), out_dir / wheels[0].name))


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


def _script_file(rel: str) -> str | None:
    """The name of one of our script files (pyproject's script-files) if the installed
    file `rel` (a RECORD path) is one: pip installs them in the environment's bin folder,
    and unlike console scripts they are not regenerated from the metadata."""
    parts = rel.split("/")
    if len(parts) >= 2 and parts[-2] == "bin" and parts[-1] in SCRIPT_FILES:
        return parts[-1]
    return None


def _unbound_script(path: Path) -> bytes:
    """An installed script with its first line back to `#!python`, which the installer
    of the wheel rewrites to its own interpreter (pip does it for files in .data/scripts)."""
    data = path.read_bytes()
    _first, newline, rest = data.partition(b"\n")
    return b"#!python" + newline + rest


def repack_distribution(dist: importlib.metadata.Distribution, out_dir: Path) -> Path:
    """Rebuild a pure wheel from an installed (non-editable) distribution's files.

    Used when there is no source tree. Installer-specific files (INSTALLER, REQUESTED,
    direct_url.json, RECORD) and byte code are left out; RECORD is regenerated.
    """
    files = dist.files or []
    name = dist.metadata["Name"].replace("-", "_")
    ver = dist.version
    info_dir = f"{name}-{ver}.dist-info"
    skip = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}
    entries: list[tuple[str, bytes]] = []
    for f in files:
        rel = str(f).replace(os.sep, "/")
        script = _script_file(rel)
        if script is not None:
            # (a `pip install --target` records it where it never was: left out, as the
            # console scripts are; the agent runs as `python -m`, never through it)
            if Path(f.locate()).is_file():
                entries.append((f"{name}-{ver}.data/scripts/{script}", _unbound_script(Path(f.locate()))))
            continue
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith((".pyc", ".pyo")):
            continue  # console scripts outside site-packages are regenerated by pip
        if rel.split("/")[0].endswith(".dist-info"):
            if rel.split("/")[-1] in skip:
                continue
            rel = info_dir + "/" + rel.split("/", 1)[1]
        path = Path(f.locate())
        if not path.is_file():
            continue
        entries.append((rel, path.read_bytes()))
    if not any(rel.startswith(PACKAGE + "/") for rel, _ in entries):
        raise DeployError(f"the installed {DIST_NAME} lists no package files (editable install without its "
                          "source tree?); reinstall it from a wheel or a source checkout")
    if not any(rel == f"{info_dir}/WHEEL" for rel, _ in entries):
        entries.append((f"{info_dir}/WHEEL",
                        b"Wheel-Version: 1.0\nGenerator: seamless-service\nRoot-Is-Purelib: true\nTag: py3-none-any\n"))
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for rel, data in entries:
        writer.writerow([rel, _record_hash(data), len(data)])
    writer.writerow([f"{info_dir}/RECORD", "", ""])
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{name}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in entries:
            zf.writestr(rel, data)
        zf.writestr(f"{info_dir}/RECORD", record.getvalue())
    return wheel


def own_wheel(progress: Progress | None = None) -> Path:
    """Our wheel for the version that is running here, built once and cached."""
    progress = progress or _noop
    root = project_root()
    base = ensure_private_dir(wheels_dir() / "self")
    if root is not None:
        key = _content_hash(root, _source_files(root))
        dest = base / f"{version()}-src-{key}"
        build = lambda out: build_wheel(root, out)  # noqa: E731
        what = f"building the {DIST_NAME} {version()} wheel from {root}"
    else:
        dist = importlib.metadata.distribution(DIST_NAME)
        record = dist.read_text("RECORD") or ""
        key = hashlib.sha256(record.encode()).hexdigest()[:16]
        dest = base / f"{version()}-installed-{key}"
        build = lambda out: repack_distribution(dist, out)  # noqa: E731
        what = f"packing the installed {DIST_NAME} {version()} into a wheel"
    cached = _cached_wheel(dest)
    if cached is not None:
        return cached
    progress("build", what)
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".staging-"))
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    wheel = _publish(staging, dest)
    _prune(base, keep=KEEP_OWN_BUILDS)
    return wheel


def _prune(base: Path, keep: int) -> None:
    """Drop all but the `keep` newest builds: a dev tree makes a new one per source change."""
    builds = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- dependency wheels


def _local_libc() -> tuple[str, ...]:
    try:
        return tuple(os.confstr("CS_GNU_LIBC_VERSION").split())
    except (AttributeError, ValueError, OSError):
        return ()


def _libc_version(libc: tuple[str, ...]) -> tuple[int, int] | None:
    try:
        major, minor = libc[1].split(".")[:2]
        return int(major), int(minor)
    except (IndexError, ValueError):
        return None


def same_platform(target: RemotePython) -> bool:
    """True if wheels that fit this interpreter also fit the host's.

    Same implementation, minor version and platform, and the local glibc no newer than the
    host's (pip picks manylinux wheels for the LOCAL glibc; older is always fine remotely).
    """
    if (sys.implementation.name != target.implementation
            or tuple(sys.version_info[:2]) != tuple(target.version[:2])
            or sysconfig.get_platform() != target.platform):
        return False
    local, remote = _libc_version(_local_libc()), _libc_version(target.libc)
    if local is None and remote is None:
        return True
    return local is not None and remote is not None and local <= remote


def platform_tags(target: RemotePython) -> list[str]:
    """pip `--platform` values for the host, most specific first."""
    plat = target.platform.replace("-", "_").replace(".", "_")
    if target.platform.startswith("linux-"):
        arch = target.platform.split("-", 1)[1]
        glibc = _libc_version(target.libc)
        if glibc is None or glibc[0] != 2:
            raise DeployError(f"cannot pick wheels for the host's C library {'-'.join(target.libc) or 'unknown'} "
                              f"({target.platform}); let the host reach a package index instead")
        tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc[1], 16, -1)]
        tags += [f"manylinux2014_{arch}"] if glibc[1] >= 17 else []
        tags += [f"manylinux2010_{arch}"] if glibc[1] >= 12 else []
        tags += [f"manylinux1_{arch}"] if glibc[1] >= 5 else []
        return tags
    if target.platform.startswith("macosx-"):
        _, release, arch = target.platform.split("-")
        major = int(release.split(".")[0])
        tags = [f"macosx_{v}_0_{arch}" for v in range(major, 10, -1)] + [f"macosx_10_9_{arch}"]
        return tags + [t.replace(arch, "universal2") for t in tags]
    return [plat]


def dependency_wheels(target: RemotePython, own: Path, progress: Progress | None = None) -> list[Path]:
    """Wheels of all dependencies of `own` (transitively) that install on `target`; cached."""
    progress = progress or _noop
    reqs = requirements(own)
    key = hashlib.sha256(json.dumps([reqs, target.tag_key]).encode()).hexdigest()[:16]
    base = ensure_private_dir(wheels_dir() / "deps")
    dest = base / f"{target.tag_key}-{key}"
    if (dest / ".complete").is_file():
        return sorted(dest.glob("*.whl"))
    staging = Path(tempfile.mkdtemp(dir=base, prefix=".staging-"))
    try:
        what = f"gathering dependency wheels for Python {target.version_str} on {target.platform}"
        progress("wheels", what)
        if same_platform(target):
            # `pip wheel` also builds wheels for anything the index has only as sdist.
            _pip(["wheel", "--disable-pip-version-check", "-q", "-w", str(staging), *reqs], what)
        else:
            major, minor = target.version[:2]
            abi = f"cp{major}{minor}" if target.implementation == "cpython" else "none"
            args = ["download", "--disable-pip-version-check", "-q", "--only-binary=:all:", "-d", str(staging),
                    "--python-version", f"{major}.{minor}",
                    "--implementation", "cp" if target.implementation == "cpython" else "py",
                    "--abi", abi, "--abi", "abi3", "--abi", "none"]
            for tag in platform_tags(target):
                args += ["--platform", tag]
            _pip(args + reqs, what)
        (staging / ".complete").write_text(json.dumps(reqs))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.replace(staging, dest)
    except OSError:  # another deploy filled it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(dest.glob("*.whl"))
