"""Find a model snapshot on disk, download it, or materialize a bundled offline copy.

Order (the research document's, plus the offline fallback):
1. an existing local directory;
2. ``$HF_HOME/hub/models--{org}--{name}/snapshots/<rev>`` (``refs/main`` honoured);
3. ``~/.cache/huggingface/hub/...``;
4. a download with huggingface_hub (config, tokenizer files and safetensors only, never pickles),
   skipped when ``HF_HUB_OFFLINE=1`` and abandoned at once when the hub cannot be reached;
5. a bundled offline copy (see ``harness.bundled``), written once into the hub cache layout so that
   every later load takes the ordinary cache path.

Materialization is guarded by a file lock and written to a temporary directory renamed into place,
so concurrent processes never write the same snapshot and a half-written one is never read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from harness.bundled import BUNDLES, STAND_INS, read_marker
from harness.errors import ModelResolutionError

logger = logging.getLogger("harness")

DOWNLOAD_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "*.safetensors",
    "model.safetensors.index.json",
]
LOCAL_ONLY_ORG = "harness/"
_OFFLINE_VALUES = {"1", "true", "yes", "on"}
_announced: set[str] = set()


@dataclass(frozen=True)
class ResolvedModel:
    """Where a requested model was found, and what it really is."""

    requested: str
    path: Path
    source: str  # local | hf_home | user_cache | download | bundled (cached) | bundled (materialized now)
    served_as: str
    random_init: bool = False
    searched: tuple[str, ...] = field(default=(), compare=False)

    @property
    def description(self) -> str:
        what = self.served_as + (" (random init)" if self.random_init else "")
        return f"{what} from {self.source}: {self.path}"


def user_cache_dir() -> Path:
    return Path(os.path.expanduser("~/.cache/huggingface/hub"))


def cache_dirs() -> list[Path]:
    """Hub caches in search order: $HF_HUB_CACHE, $HF_HOME/hub, then the per-user default."""
    dirs: list[Path] = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(user_cache_dir())
    unique: list[Path] = []
    for directory in dirs:
        if directory not in unique:
            unique.append(directory)
    return unique


def write_cache_dir() -> Path:
    """Where downloads and bundled copies are written: the first cache in search order."""
    return cache_dirs()[0]


def repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def is_complete_snapshot(path: Path) -> bool:
    """config.json and the weights: every shard the safetensors index names (an interrupted download
    of a sharded model holds the index and only some shards), else at least one safetensors file."""
    if not (path / "config.json").is_file():
        return False
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return any(path.glob("*.safetensors"))
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return bool(shards) and all((path / shard).is_file() for shard in shards)


def find_cached_snapshot(cache: Path, repo_id: str) -> Path | None:
    """The complete snapshot ``refs/main`` points to, else the newest complete one, as
    huggingface_hub's cache API sees the cache."""
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache
    from huggingface_hub.errors import CacheNotFound

    config = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
    if isinstance(config, str) and is_complete_snapshot(Path(config).parent):
        return Path(config).parent
    try:
        repos = scan_cache_dir(cache).repos
    except CacheNotFound:
        return None
    revisions = [r for repo in repos if repo.repo_id == repo_id and repo.repo_type == "model" for r in repo.revisions]
    complete = [r for r in revisions if is_complete_snapshot(r.snapshot_path)]
    return max(complete, key=lambda r: r.last_modified).snapshot_path if complete else None


def is_offline() -> bool:
    """HF_HUB_OFFLINE now, or as huggingface_hub read it when first imported (it caches the value)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES or constants.is_offline_mode()


def _source_name(cache: Path) -> str:
    if cache == user_cache_dir():
        return "user_cache"
    return "hf_home"


def download_snapshot(repo_id: str, cache: Path) -> Path:
    """Download config, tokenizer and safetensors weights (never pickles) into ``cache``."""
    from huggingface_hub import snapshot_download

    path = Path(
        snapshot_download(
            repo_id,
            cache_dir=cache,
            allow_patterns=DOWNLOAD_PATTERNS,
            endpoint=os.environ.get("HF_ENDPOINT"),
            etag_timeout=10,
        )
    )
    if not is_complete_snapshot(path):
        raise ModelResolutionError(
            f"{repo_id}: the hub repository has no config.json + *.safetensors weights "
            "(pickle weights are never downloaded)"
        )
    return path


def materialize_bundle(repo_id: str, cache: Path | None = None) -> tuple[Path, bool]:
    """Write the bundled copy of ``repo_id`` into the hub cache once; later calls find it there.
    Returns the snapshot and whether this call wrote it."""
    bundle = BUNDLES[repo_id]
    cache = cache or write_cache_dir()
    repo = repo_folder(cache, repo_id)
    target = repo / "snapshots" / bundle.revision
    (cache / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / ".locks" / f"harness-{repo.name}.lock")):
        if is_complete_snapshot(target):
            return target, False
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
        try:
            bundle.materialize(staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        (repo / "refs").mkdir(exist_ok=True)
        ref_tmp = repo / "refs" / ".main.tmp"
        ref_tmp.write_text(bundle.revision)
        os.replace(ref_tmp, repo / "refs" / "main")
    return target, True


def _announce_once(message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        logger.warning(message)


def _check_repo_id(model: str) -> None:
    """huggingface_hub's own rule for repo ids (letters, digits, ``-_.``, no ``--`` or ``..``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError as exc:
        reason = " ".join(str(exc).split())
        raise ModelResolutionError(f"{model}: not a valid hub model id ({reason})") from None


def resolve_model(model: str) -> ResolvedModel:
    """Return a local snapshot directory for a hub id or path (see the module docstring for order)."""
    searched: list[str] = []
    local = Path(os.path.expanduser(model))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelResolutionError(f"{local}: directory has no config.json")
        marker = read_marker(local)
        return ResolvedModel(model, local.resolve(), "local", model, bool(marker.get("random_init")))
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelResolutionError(f"{model}: no such model directory, and not a hub id of the form org/name")
    _check_repo_id(model)

    for cache in cache_dirs():
        searched.append(str(repo_folder(cache, model)))
        snapshot = find_cached_snapshot(cache, model)
        if snapshot is not None:
            marker = read_marker(snapshot)
            return ResolvedModel(
                model, snapshot, _source_name(cache), model, bool(marker.get("random_init")), tuple(searched)
            )

    if is_offline():
        searched.append("hub download skipped (HF_HUB_OFFLINE=1)")
    elif model.startswith(LOCAL_ONLY_ORG):
        searched.append(f"hub download skipped ({LOCAL_ONLY_ORG} ids exist only as bundled copies)")
    else:
        try:
            path = download_snapshot(model, write_cache_dir())
            return ResolvedModel(model, path, "download", model, False, tuple(searched))
        except ModelResolutionError:
            raise
        except Exception as exc:  # network and hub errors of many types: fall through to bundled
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            searched.append(f"hub download failed ({type(exc).__name__}: {reason[:120]})")

    bundled_id = model if model in BUNDLES else STAND_INS.get(model)
    if bundled_id is None:
        raise ModelResolutionError(f"{model}: not found; searched " + "; ".join(searched))
    path, written = materialize_bundle(bundled_id)
    marker = read_marker(path)
    random_init = bool(marker.get("random_init"))
    if bundled_id != model or random_init:
        detail = marker.get("note", "")
        _announce_once(
            f"{model}: using the bundled offline copy of {bundled_id}"
            + (" (random init)" if random_init else "")
            + (f", {detail}" if detail else "")
        )
    source = "bundled (materialized now)" if written else "bundled (cached)"
    return ResolvedModel(model, path, source, bundled_id, random_init, tuple(searched))
