"""Where pretrained weights come from, and how they are found on disk or fetched.

Resolution order for an artifact: an explicit path; `$TOKBENCH_WEIGHTS/<artifact name>/<file>`; the
Hugging Face hub cache (and the torch hub cache for URL artifacts); a download (huggingface_hub, with
its cache and resume, honouring `HF_HUB_OFFLINE`). When nothing works, `WeightsUnavailable` says which
artifact, where it comes from, the command that fetches it, and where to put the file by hand.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path

from .core import TokbenchError


class WeightsUnavailable(TokbenchError):
    """The weights of an artifact are not on this machine and could not be downloaded."""


@dataclass(frozen=True)
class Artifact:
    """A downloadable weight file.

    Either `repo_id` + `filename` (+ pinned `revision`) on the Hugging Face Hub, or `url` (+ `sha256`:
    the full hex digest, or a prefix of at least 8 hex digits as in torch hub file names such as
    `alexnet-owt-7be5be79.pth`). `filename` may be a sharded checkpoint's index (`*.index.json`): then
    only the shards holding the keys under `prefix` are fetched. `size` is in bytes (informational);
    `used_by` says which tokenizer or metric needs it (shown by `tokbench list`); `fetch` also brings the
    `companions` (e.g. a transformers model's config.json) from the same repository. `fallbacks` are other
    files of the same repository used, in order, when `filename` is not there (open_clip releases ship
    `open_clip_model.safetensors` or only `open_clip_pytorch_model.bin`).
    """

    name: str
    repo_id: str | None = None
    filename: str | None = None
    revision: str = "main"
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    licence: str = ""
    gated: bool = False
    prefix: str | None = None
    used_by: str = ""
    companions: tuple[str, ...] = ()  # other files of the same repo that loading needs (config.json, ...)
    fallbacks: tuple[str, ...] = ()

    @property
    def basename(self) -> str:
        if self.filename:
            return Path(self.filename).name
        return Path(self.url or self.name).name

    @property
    def source(self) -> str:
        if self.repo_id:
            rev = "" if self.revision == "main" else f"@{self.revision}"
            return f"https://huggingface.co/{self.repo_id}{rev} (file {self.filename})"
        return self.url or "(no download source)"


def weights_dir() -> Path | None:
    value = os.environ.get("TOKBENCH_WEIGHTS")
    return Path(value).expanduser() if value else None


def hf_cache_dir() -> str | None:
    """The hub cache named by the environment now (huggingface_hub reads it only once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


# Why downloads are switched off (None: they are allowed), e.g. a suite with `download: false`.
_NO_DOWNLOADS: ContextVar[str | None] = ContextVar("tokbench_no_downloads", default=None)


@contextmanager
def no_downloads(reason: str) -> Iterator[None]:
    """Resolve weights from this machine only, within the block; a missing file says `reason`."""
    token = _NO_DOWNLOADS.set(reason)
    try:
        yield
    finally:
        _NO_DOWNLOADS.reset(token)


def unavailable_message(artifact: Artifact, reason: str) -> str:
    lines = [f"weights for {artifact.name!r} are not available: {reason}"]
    lines.append(f"  source: {artifact.source}")
    if artifact.size:
        lines.append(f"  size: {artifact.size / 2**20:.0f} MiB")
    if artifact.gated and artifact.repo_id:
        lines.append(
            f"  this repository is gated: accept its licence at https://huggingface.co/{artifact.repo_id}, "
            "then log in with `hf auth login` (or set HF_TOKEN)"
        )
    elif artifact.gated:
        lines.append(f"  access is by request ({artifact.licence or 'see the source'})")
    lines.append(f"  fetch it ahead of time: tokbench fetch {artifact.name} [--to DIR]")
    root = weights_dir()
    target = (root or Path("$TOKBENCH_WEIGHTS")) / artifact.name / artifact.basename
    lines.append(f"  or put the file by hand at {target}" + ("" if root else " and set TOKBENCH_WEIGHTS"))
    return "\n".join(lines)


def sha256_matches(path: Path, expected: str | None) -> bool:
    """Whether the file's sha256 equals `expected` (or starts with it, for a torch-hub style prefix)."""
    if not expected:
        return True
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest().startswith(expected.lower())


def _verify_sha256(path: Path, expected: str | None) -> None:
    if not sha256_matches(path, expected):
        raise WeightsUnavailable(
            f"{path} does not have the expected sha256 {expected}: the file is corrupt or another "
            "version; delete it and fetch again"
        )


def local_path(artifact: Artifact, filename: str | None = None) -> Path | None:
    """The artifact's file (or another file of the same repo) if it is already on this machine."""
    if filename is None and artifact.fallbacks:
        for candidate in (artifact.filename, *artifact.fallbacks):
            if (hit := local_path(artifact, candidate)) is not None:
                return hit
        return None
    filename = filename or artifact.filename
    base = Path(filename).name if filename else artifact.basename
    root = weights_dir()
    if root is not None:
        for candidate in (root / artifact.name / base, root / artifact.name / (filename or base)):
            if candidate.is_file():
                return candidate
    if artifact.repo_id and filename:
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(
                artifact.repo_id, filename, revision=artifact.revision, cache_dir=hf_cache_dir()
            )
        except Exception:  # noqa: BLE001 - a broken cache is just "not cached"
            hit = None
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    if artifact.url:
        import torch.hub

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / base
        if candidate.is_file():
            return candidate
    return None


def download_refusal() -> str | None:
    """Why nothing may be downloaded now (HF_HUB_OFFLINE, or a suite's `download: false`), or None."""
    if offline():
        return "not cached and HF_HUB_OFFLINE is set"
    if (why := _NO_DOWNLOADS.get()) is not None:
        return f"not on this machine, and {why}"
    return None


def resolve_snapshot(repo_id: str, revision: str, patterns: list[str],
                     unavailable: Callable[[str], Exception]) -> Path:
    """A whole-repository snapshot (the files matching `patterns`) from the hub cache, else downloaded
    when allowed; `unavailable(reason)` is the exception raised when neither works."""
    from huggingface_hub import snapshot_download

    def snapshot(local_only: bool) -> Path:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      local_files_only=local_only, cache_dir=hf_cache_dir()))

    try:
        return snapshot(True)
    except Exception:  # noqa: BLE001 - not cached (any hub error means the same here)
        if (why := download_refusal()) is not None:
            raise unavailable(why) from None
        try:
            return snapshot(False)
        except Exception as e:  # noqa: BLE001 - network, auth, 404: one clear message
            raise unavailable(f"download failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
                from None


def _download(artifact: Artifact, filename: str | None, to: Path | None) -> Path:
    if (why := download_refusal()) is not None:
        raise WeightsUnavailable(unavailable_message(artifact, why))
    try:
        if artifact.repo_id:
            from huggingface_hub import hf_hub_download

            kwargs = {"local_dir": to / artifact.name} if to is not None else {"cache_dir": hf_cache_dir()}
            candidates = (filename, *artifact.fallbacks) if filename == artifact.filename else (filename,)
            for candidate in candidates[:-1]:  # as open_clip's download_pretrained_from_hf: the next on any error
                try:
                    return Path(hf_hub_download(artifact.repo_id, candidate, revision=artifact.revision, **kwargs))
                except Exception:  # noqa: BLE001 - not in this repository (or unreachable: the last one says)
                    continue
            return Path(hf_hub_download(artifact.repo_id, candidates[-1], revision=artifact.revision, **kwargs))
        if artifact.url:
            import torch.hub

            dest_dir = (to / artifact.name) if to is not None else Path(torch.hub.get_dir()) / "checkpoints"
            dest_dir.mkdir(parents=True, exist_ok=True)
            dest = dest_dir / artifact.basename
            if dest.is_file() and sha256_matches(dest, artifact.sha256):
                return dest
            tmp = dest.with_suffix(dest.suffix + ".part")
            torch.hub.download_url_to_file(artifact.url, str(tmp), progress=True)
            try:
                _verify_sha256(tmp, artifact.sha256)
            except WeightsUnavailable:
                tmp.unlink(missing_ok=True)  # never leave a corrupt file where it could be picked up
                raise
            tmp.replace(dest)
            return dest
    except WeightsUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - network, auth and 404 errors all become one clear message
        name = type(e).__name__
        reason = f"download failed ({name}: {str(e).splitlines()[0] if str(e) else ''})"
        if "Gated" in name or "401" in str(e) or "403" in str(e):
            reason = f"access denied ({name}); the repository is gated or needs a token"
        raise WeightsUnavailable(unavailable_message(artifact, reason)) from None
    raise WeightsUnavailable(unavailable_message(artifact, "it has no download source"))


def resolve(
    artifact: Artifact,
    explicit: str | os.PathLike | None = None,
    *,
    filename: str | None = None,
    download: bool = True,
    to: Path | None = None,
) -> Path:
    """Path of the artifact's file (or of `filename` in the same repository), fetching it if allowed.

    `explicit` is a file, or a folder holding the file under its own name. `to` downloads into
    `<to>/<artifact name>/` (the layout `TOKBENCH_WEIGHTS` reads) instead of the caches.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_dir() and (path / Path(filename or artifact.basename).name).is_file():
            path = path / Path(filename or artifact.basename).name
        if not path.is_file():
            raise WeightsUnavailable(unavailable_message(artifact, f"the given path {str(path)!r} is not a file"))
        return path
    if to is None:
        hit = local_path(artifact, filename)
        if hit is not None:
            return hit
    if not download:
        raise WeightsUnavailable(unavailable_message(artifact, "not found locally"))
    return _download(artifact, filename or artifact.filename, to)


def is_available(artifact: Artifact) -> bool:
    """Whether the artifact's main file is already on this machine (no network)."""
    return local_path(artifact) is not None


def fetch(artifact: Artifact, to: str | os.PathLike | None = None) -> list[Path]:
    """Download an artifact (and, for a sharded index with a prefix, only the shards it needs).

    (`catalogue.get_artifact` finds one by name.) With `to`, files land as
    `<to>/<artifact name>/<filename>`, the layout `TOKBENCH_WEIGHTS` reads; without it, in the caches.
    """
    from .checkpoint import shards_for_prefix

    to = Path(to).expanduser() if to is not None else None
    main = resolve(artifact, to=to)
    paths = [main] + [resolve(artifact, filename=f, to=to) for f in artifact.companions]
    if main.name.endswith(".index.json"):
        for shard in shards_for_prefix(main, artifact.prefix):
            paths.append(resolve(artifact, filename=_sibling(artifact.filename, shard), to=to))
    return paths


def shard_resolver(artifact: Artifact) -> Callable[[str], Path]:
    """For a sharded release: shard file name -> its resolved path (fetched on demand, like the index)."""
    return lambda shard: resolve(artifact, filename=_sibling(artifact.filename, shard))


def _sibling(filename: str | None, name: str) -> str:
    parent = Path(filename).parent if filename else Path()
    return str(parent / name) if str(parent) != "." else name


# Artifacts that metrics (and anything else outside the tokenizer registry) need, by name, so that
# `tokbench fetch NAME` and `tokbench list` can find them. Tokenizer weights live in `Variant.weights`.
_ARTIFACTS: dict[str, Artifact] = {}


def _file_identity(a: Artifact) -> tuple:
    return (a.repo_id, a.filename, a.revision, a.url, a.sha256, a.prefix, a.companions, a.fallbacks)


def register_artifact(artifact: Artifact) -> Artifact:
    """Make an artifact known by its name and return the registered one.

    Registering the same file under the same name again (from another module) is harmless: the
    `used_by` notes are merged. The same name for a different file is an error.
    """
    known = _ARTIFACTS.get(artifact.name)
    if known is not None:
        if _file_identity(known) != _file_identity(artifact):
            raise TokbenchError(
                f"two different files are registered under the artifact name {artifact.name!r}: "
                f"{known.source} and {artifact.source}"
            )
        users = [u for u in (known.used_by, artifact.used_by) if u]
        merged = ", ".join(dict.fromkeys(", ".join(users).split(", "))) if users else ""
        artifact = replace(known, used_by=merged)
    _ARTIFACTS[artifact.name] = artifact
    return artifact


def registered_artifacts() -> dict[str, Artifact]:
    """The artifacts registered so far (metric modules register theirs on import); `catalogue.artifacts`
    is every known one."""
    return dict(_ARTIFACTS)
