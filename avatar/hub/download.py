"""Fetch, verify, convert and cache the upstream files a model id needs.

Layout of the cache (``$AVATAR_CACHE``, default ``~/.cache/avatar4d``)::

    converted/<file key>/<revision[:12]>/
        <name>.safetensors, <name>.json      converted tensors + metadata (or a verified copy)
        manifest.json                         written last: source digest, size, format, time
    downloads/github/<commit[:12]>/<path>   raw files fetched from GitHub (Hub files stay in the HF cache)

A file whose ``manifest.json`` exists is done: later calls return it without touching the network.
Offline (``HF_HUB_OFFLINE=1`` or ``AVATAR_OFFLINE=1``) or on a network error, a missing file raises
:class:`AssetNotFoundError` at once (one attempt, no retries) naming the file, the repo and the command
that fetches it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import AssetNotFoundError, AssetVerificationError, InputNotFoundError
from .convert import COPY_FORMATS, convert_file, sha256_of
from .registry import FILES, UpstreamFile, get_model

__all__ = [
    "AssetNotFoundError",
    "AssetVerificationError",
    "cache_root",
    "converted_dir",
    "is_converted",
    "ensure_file",
    "download_model",
    "find_in_local_dir",
    "check_local_dir",
]

logger = logging.getLogger(__name__)

NETWORK_TIMEOUT_S = 30.0




def cache_root() -> Path:
    """The toolkit's cache folder: ``$AVATAR_CACHE`` or ``~/.cache/avatar4d``."""
    return Path(os.environ.get("AVATAR_CACHE") or Path.home() / ".cache" / "avatar4d").expanduser()


def is_offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "AVATAR_OFFLINE"))


def converted_dir(file: UpstreamFile, root: Path | None = None) -> Path:
    return (root or cache_root()) / "converted" / file.key / file.revision[:12]


def is_converted(file: UpstreamFile, root: Path | None = None) -> bool:
    return (converted_dir(file, root) / "manifest.json").is_file()


def _how_to_fetch(file: UpstreamFile, model_id: str | None) -> str:
    command = f"avatar download {model_id}" if model_id else f"avatar download --file {file.key}"
    if file.source == "gdrive":
        return (
            f"'{Path(file.path).name}' ({file.repo}) is published only in a Google Drive folder, {file.url}, which "
            f"cannot be fetched automatically. Download it there, then run `avatar download --file {file.key} "
            f"--from-dir DIR` with the folder that holds it."
        )
    return (
        f"'{file.path}' from {'Hub repo' if file.source == 'hub' else 'GitHub repo'} {file.repo} "
        f"(revision {file.revision[:12]}) is not in the cache {cache_root()}. Run `{command}` on a machine with "
        f"network access (then copy the cache folder here, or set AVATAR_CACHE), or pass files you already "
        f"have with `{command} --from-dir DIR`."
    )


# --------------------------------------------------------------------------------------------------------
# raw fetchers


def check_local_dir(local_dir: str | Path, option: str = "--from-dir") -> Path:
    """``local_dir`` as a :class:`Path`, or :class:`InputNotFoundError` saying that it does not exist or is not a
    folder (``option`` names it in the message: the CLI's ``--from-dir``)."""
    folder = Path(local_dir).expanduser()
    if not folder.exists():
        raise InputNotFoundError(f"{option} {local_dir}: the folder does not exist; give the folder that holds the "
                                 "official files (a copy of the Hub repo or an official Portrait-4D checkout)")
    if not folder.is_dir():
        raise InputNotFoundError(f"{option} {local_dir} is a file, not a folder; give the folder that holds the "
                                 "official files (a copy of the Hub repo or an official Portrait-4D checkout)")
    return folder


def find_in_local_dir(file: UpstreamFile, local_dir: Path) -> Path | None:
    """Find ``file`` in a folder laid out like the Hub repo or like an official Portrait-4D checkout."""
    base = Path(file.path).name
    candidates = [
        local_dir / file.path,
        local_dir / base,
        local_dir / "portrait4d" / file.path,
        local_dir / "portrait4d" / "pretrained_models" / base,
        local_dir / "pretrained_models" / base,
    ]
    if file.path.startswith("portrait4d/"):
        candidates.append(local_dir / file.path[len("portrait4d/"):])
    # an official checkout's tail (GOHA's src/logs/s3/checkpoint825000.ckpt given as logs/s3/... or s3/...)
    parts = Path(file.path).parts
    candidates += [local_dir.joinpath(*parts[i:]) for i in range(1, len(parts) - 1)]
    return next((c for c in candidates if c.is_file()), None)


_HUB_PROBES: dict[str, str | None] = {}


def _hub_unreachable_reason(repo: str) -> str | None:
    """One quick request to the Hub (no retries) before a download. ``None`` when the Hub answers (any HTTP
    status counts as an answer); otherwise why it could not be reached. Remembered for the process."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT.rstrip("/")
    if endpoint in _HUB_PROBES:
        return _HUB_PROBES[endpoint]
    request = urllib.request.Request(f"{endpoint}/api/models/{repo}", method="HEAD")
    reason: str | None = None
    try:
        urllib.request.urlopen(request, timeout=NETWORK_TIMEOUT_S / 3).close()
    except urllib.error.HTTPError:
        reason = None  # the server answered
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = f"cannot reach {endpoint}: {getattr(exc, 'reason', exc)}"
    _HUB_PROBES[endpoint] = reason
    return reason


def _fetch_from_hub(file: UpstreamFile, model_id: str | None) -> tuple[Path, str | None]:
    """Download through huggingface_hub (progress bars, resumable, HF cache). Returns the path and the
    Hub's LFS SHA-256 when it can be read."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    if not is_offline():
        reason = _hub_unreachable_reason(file.repo)
        if reason is not None:
            raise AssetNotFoundError(_how_to_fetch(file, model_id) + f" ({reason})")
    try:
        path = Path(hf_hub_download(file.repo, file.path, revision=file.revision, etag_timeout=NETWORK_TIMEOUT_S))
    except (LocalEntryNotFoundError, OSError) as exc:
        raise AssetNotFoundError(_how_to_fetch(file, model_id) + f" ({type(exc).__name__})") from exc
    except (EntryNotFoundError, RepositoryNotFoundError) as exc:
        raise AssetNotFoundError(f"{file.repo} has no file '{file.path}' at {file.revision[:12]}: {exc}") from exc
    remote_sha: str | None = None
    try:
        info = next(iter(HfApi().get_paths_info(file.repo, [file.path], revision=file.revision)), None)
        lfs = getattr(info, "lfs", None)
        remote_sha = getattr(lfs, "sha256", None) if lfs is not None else None
    except Exception as exc:  # metadata is a second check only; the local digest is still verified
        logger.warning("could not read the Hub's digest of %s (%s); checking the registry digest only", file.path, exc)
    return path, remote_sha


def _fetch_from_github(file: UpstreamFile, model_id: str | None) -> Path:
    target = cache_root() / "downloads" / "github" / file.revision[:12] / file.path
    if target.is_file():
        return target
    if is_offline():
        raise AssetNotFoundError(_how_to_fetch(file, model_id) + " (offline mode is on)")
    if file.member is not None:  # a file inside a zip archive: fetch the archive once, extract the member
        archive = cache_root() / "downloads" / "github" / file.revision[:12] / Path(file.url.split("?")[0]).name
        if not archive.is_file():
            _download(file, archive, model_id)
        extract_member(archive, file.member, target)
        return target
    _download(file, target, model_id)
    return target


def extract_member(archive: Path, member: str, target: Path) -> Path:
    """Extract the member of the zip ``archive`` whose base name is ``member`` (at any depth) to ``target``."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if Path(n).name == member and not n.endswith("/")]
            if not names:
                raise AssetNotFoundError(f"{archive} holds no file named {member!r}; delete it and download again")
            tmp = target.with_name(target.name + ".partial")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(sorted(names, key=len)[0]) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
    except zipfile.BadZipFile as exc:
        raise AssetVerificationError(f"{archive} is not a readable zip archive ({exc}); delete it and download "
                                     "again") from exc
    return target


def _download(file: UpstreamFile, target: Path, model_id: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".partial")
    try:
        from tqdm.auto import tqdm

        with urllib.request.urlopen(file.url, timeout=NETWORK_TIMEOUT_S) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(file.path).name) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise AssetNotFoundError(_how_to_fetch(file, model_id) + f" ({exc})") from exc


# --------------------------------------------------------------------------------------------------------
# verification + conversion


def verify(file: UpstreamFile, path: Path, remote_sha256: str | None = None) -> str:
    """Check size and digest. Returns the file's SHA-256. Raises :class:`AssetVerificationError`."""
    size = path.stat().st_size
    if file.size is not None:
        if file.size_exact and size != file.size:
            raise AssetVerificationError(f"{path}: {size} bytes, expected {file.size} for {file.key}")
        if not file.size_exact and abs(size - file.size) > 0.03 * file.size + 100_000:
            raise AssetVerificationError(f"{path}: {size} bytes, expected about {file.size} for {file.key}")
    digest = sha256_of(path)
    for expected, where in ((file.sha256, "the registry"), (remote_sha256, "the Hub")):
        if expected and not digest.startswith(expected.lower()):
            raise AssetVerificationError(
                f"{path}: SHA-256 {digest} does not match {where} ({expected}) for {file.key}; delete it and "
                "download again"
            )
    return digest


def ensure_file(
    file: UpstreamFile | str,
    *,
    model_id: str | None = None,
    local_dir: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Return the converted folder of one upstream file, fetching, verifying and converting it if needed.

    Args:
        file: an :class:`UpstreamFile` or its registry key.
        model_id: used in error messages (which command to run).
        local_dir: take the raw file from this folder (Hub or official-checkout layout) instead of the network.
        force: convert again even if the cache has it.
    """
    file = FILES[file] if isinstance(file, str) else file
    out = converted_dir(file)
    if not force and (out / "manifest.json").is_file():
        return out
    remote_sha = None
    if local_dir is not None:
        raw = find_in_local_dir(file, check_local_dir(local_dir))
        if raw is None:
            raise AssetNotFoundError(f"'{file.path}' was not found under {local_dir}. " + _how_to_fetch(file, model_id))
    elif file.source == "hub":
        raw, remote_sha = _fetch_from_hub(file, model_id)
    elif file.source == "gdrive":
        raise AssetNotFoundError(_how_to_fetch(file, model_id))
    else:
        raw = _fetch_from_github(file, model_id)
    digest = verify(file, raw, remote_sha)
    staging = out.parent / (out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    extra = {"registry_key": file.key, "repo": file.repo, "revision": file.revision, "path": file.path,
             "licence": file.licence}
    fmt = file.fmt if file.fmt not in COPY_FORMATS else "raw"
    convert_file(raw, staging, fmt=fmt, name=Path(file.path).name.split(".")[0], network=file.network,
                 extra_metadata=extra)
    manifest = {**extra, "sha256": digest, "size": raw.stat().st_size, "format": file.fmt,
                "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out


@dataclass
class DownloadReport:
    model_id: str
    folders: dict[str, Path]
    fetched: list[str]
    cached: list[str]


def download_model(
    model_id: str,
    *,
    local_dir: str | Path | None = None,
    force: bool = False,
    only: Iterable[str] | None = None,
    on_file: Callable[[UpstreamFile, str], None] | None = None,
) -> DownloadReport:
    """Fetch, verify and convert every file ``model_id`` needs. Files already converted are skipped.

    Missing files are reported together: one :class:`AssetNotFoundError` lists all of them, and when only some
    were asked for (``only``), every other file of the model missing from the cache too, so that the count is
    what ``avatar download MODEL_ID`` has to fetch. A ``local_dir`` that does not exist is an
    :class:`~avatar.errors.InputNotFoundError` before anything else.
    """
    spec = get_model(model_id)
    if local_dir is not None:
        local_dir = check_local_dir(local_dir)
    folders: dict[str, Path] = {}
    fetched: list[str] = []
    cached: list[str] = []
    missing: list[str] = []
    network_down = local_dir is None and is_offline()
    reason = "offline mode is on (HF_HUB_OFFLINE / AVATAR_OFFLINE)" if network_down else ""
    wanted = set(only) if only else None
    for file in spec.files:
        if wanted is not None and file.key not in wanted:
            continue
        if not force and is_converted(file):
            folders[file.key] = converted_dir(file)
            cached.append(file.key)
            if on_file:
                on_file(file, "cached")
            continue
        if network_down:  # one failed attempt is enough: no retry storm over the remaining files
            missing.append(f"  - {file.path} ({file.repo})")
            continue
        try:
            folders[file.key] = ensure_file(file, model_id=model_id, local_dir=local_dir, force=force)
        except AssetNotFoundError as exc:
            missing.append(f"  - {file.path} ({file.repo})")
            network_down = local_dir is None
            reason = reason or (str(exc).rsplit(" (", 1)[-1].rstrip(")") if str(exc).endswith(")") else "")
            logger.debug("missing %s: %s", file.path, exc)
            continue
        fetched.append(file.key)
        if on_file:
            on_file(file, "fetched")
    if missing:
        if wanted is not None:  # e.g. only the checkpoint was asked for: name the model's other missing files too
            missing += [f"  - {file.path} ({file.repo})" for file in spec.files
                        if file.key not in wanted and not is_converted(file)]
        missing = list(dict.fromkeys(missing))
        raise AssetNotFoundError(
            f"{model_id}: {len(missing)} of its {len(spec.files)} files are missing from the cache {cache_root()} "
            f"and could not be fetched now{f' ({reason})' if reason else ''}:\n" + "\n".join(missing)
            + f"\nRun `avatar download {model_id}` with network access to the Hugging Face Hub, or "
            f"`avatar download {model_id} --from-dir DIR` with a folder that holds the official files."
        )
    return DownloadReport(model_id, folders, fetched, cached)

