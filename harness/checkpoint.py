"""PEFT-compatible checkpoints that are written atomically and verified on load.

A checkpoint directory holds what ``peft.PeftModel.from_pretrained(base, dir)`` loads unchanged
(``adapter_model.safetensors`` + ``adapter_config.json``; a full fine-tune saves ``model.safetensors``
+ ``config.json``), the training state for resume (``training_state.pt``: optimizer, scheduler and RNG
state, read back with ``weights_only=True`` so it can never run code; ``trainer_state.json``: step and
data position), and ``manifest.json`` with every file's size and sha256.

It is written into a temporary sibling, fsynced, then renamed into place: a process killed during a
save leaves the previous checkpoint intact, and an incomplete directory is never taken for a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import CheckpointError

MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
TRAINING_STATE = "training_state.pt"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CHECKPOINT_PREFIX = "checkpoint-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_manifest(directory: Path) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=2) + "\n")


def verify_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; raises naming the missing or corrupt file."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory}: no {MANIFEST} (incomplete or not written by harness)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{manifest_path}: unreadable manifest") from None
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{path}: corrupt: {size} bytes, manifest says {expected['bytes']}")
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path}: corrupt: sha256 differs from {MANIFEST}")
    return manifest


def _stage(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))


def _publish(staging: Path, target: Path) -> None:
    """Rename a complete staging directory over ``target`` (old one removed only after)."""
    write_manifest(staging)
    _fsync_tree(staging)
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)
    descriptor = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_weights(model: Any, directory: Path) -> None:
    """PEFT adapter files for a PeftModel, else the full model (safetensors either way). Embedding
    layers are never adapted here, so PEFT is told not to look them up on the hub."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
    else:
        model.save_pretrained(str(directory), safe_serialization=True)


@dataclass
class TrainingState:
    """Everything besides the weights that a resumed run needs to continue identically."""

    step: int
    epoch: int
    batch_in_epoch: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    extra: dict[str, Any]


def save_checkpoint(model: Any, directory: str | Path, state: TrainingState | None = None) -> Path:
    """Atomically write weights (+ training state) to ``directory``; returns it."""
    directory = Path(directory)
    try:
        staging = _stage(directory.parent, directory.name)
    except OSError as exc:
        raise CheckpointError(
            f"{directory}: could not save ({exc.strerror or exc}); earlier checkpoints are kept"
        ) from None
    try:
        save_weights(model, staging)
        if state is not None:
            torch.save(
                {"optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng}, staging / TRAINING_STATE
            )
            (staging / TRAINER_STATE).write_text(
                json.dumps(
                    {"step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, **state.extra},
                    indent=2,
                )
                + "\n"
            )
        _publish(staging, directory)
    except OSError as exc:
        raise CheckpointError(
            f"{directory}: could not save ({exc.strerror or exc}); earlier checkpoints are kept"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def export_adapter(model: Any, output_dir: str | Path) -> Path:
    """Write the final weights (+ manifest) straight into ``output_dir``, where users and the research
    document's Phase 4 look for them. Files are staged, then renamed in one at a time with the manifest
    last, so a crash leaves either the old manifest (which then flags the mix) or a complete set."""
    output_dir = Path(output_dir)
    staging = _stage(output_dir, "final")
    try:
        save_weights(model, staging)
        write_manifest(staging)
        _fsync_tree(staging)
        for path in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST):
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def load_training_state(directory: str | Path) -> TrainingState:
    directory = Path(directory)
    verify_checkpoint(directory)
    try:
        trainer = json.loads((directory / TRAINER_STATE).read_text())
        blobs = torch.load(directory / TRAINING_STATE, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{exc.filename}: missing; this checkpoint has no training state to resume") from None
    except Exception as exc:
        raise CheckpointError(
            f"{directory / TRAINING_STATE}: unreadable training state ({type(exc).__name__})"
        ) from None
    extra = {k: v for k, v in trainer.items() if k not in ("step", "epoch", "batch_in_epoch")}
    return TrainingState(
        trainer["step"],
        trainer["epoch"],
        trainer["batch_in_epoch"],
        blobs["optimizer"],
        blobs["scheduler"],
        blobs["rng"],
        extra,
    )


def checkpoint_step(directory: Path) -> int:
    return int(directory.name[len(CHECKPOINT_PREFIX) :])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete step checkpoints (manifest present) in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        p
        for p in output_dir.iterdir()
        if p.is_dir()
        and p.name.startswith(CHECKPOINT_PREFIX)
        and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
        and (p / MANIFEST).is_file()
    ]
    return sorted(found, key=checkpoint_step)


def check_adapter_base(directory: Path, expected_base: str | None) -> None:
    """An adapter trained on another base model is refused, naming both."""
    config_path = directory / ADAPTER_CONFIG
    try:
        adapter_config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"{config_path}: missing or not JSON") from None
    recorded = adapter_config.get("base_model_name_or_path")
    if expected_base and recorded and recorded != expected_base:
        raise CheckpointError(f"{config_path}: adapter was trained on {recorded!r}, not {expected_base!r}")


def load_adapter(base_model: Any, directory: str | Path, *, expected_base: str | None = None) -> Any:
    """Verify a checkpoint and load its adapter onto ``base_model`` with plain PEFT."""
    from peft import PeftModel

    directory = Path(directory)
    verify_checkpoint(directory)
    check_adapter_base(directory, expected_base)
    try:
        return PeftModel.from_pretrained(base_model, str(directory))
    except RuntimeError as exc:
        raise CheckpointError(f"{directory / ADAPTER_WEIGHTS}: does not fit this model ({load_failure(exc)})") from None
    except Exception as exc:
        raise CheckpointError(
            f"{directory}: PEFT could not load the adapter ({type(exc).__name__}: {load_failure(exc)})"
        ) from None


def load_failure(exc: BaseException) -> str:
    """One line of a loader's many-line error, for a one-line message: the first size mismatch (torch
    lists every mismatched tensor), else the first line, cut at 200 characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    return next((line for line in lines if "size mismatch" in line), lines[0] if lines else "")[:200]


def load_weights_into(model: Any, checkpoint_dir: str | Path, *, expected_base: str | None = None) -> None:
    """Load a checkpoint's trained weights into an already-built model (adapter or full)."""
    from safetensors.torch import load_file

    checkpoint_dir = Path(checkpoint_dir)
    verify_checkpoint(checkpoint_dir)
    adapter = checkpoint_dir / ADAPTER_WEIGHTS
    if adapter.is_file():
        check_adapter_base(checkpoint_dir, expected_base)
        from peft import set_peft_model_state_dict

        try:
            result = set_peft_model_state_dict(model, load_file(str(adapter)))
        except RuntimeError as exc:
            raise CheckpointError(f"{adapter}: does not fit this model ({load_failure(exc)})") from None
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise CheckpointError(
                f"{adapter}: {len(unexpected)} tensors do not belong to this model, e.g. {unexpected[0]}"
            )
        # The base weights are not in an adapter file; every LoRA weight must be.
        missing = [key for key in getattr(result, "missing_keys", []) if "lora_" in key]
        if missing:
            raise CheckpointError(
                f"{adapter}: {len(missing)} LoRA tensors of this model are missing, e.g. {missing[0]}"
            )
        return
    full = checkpoint_dir / "model.safetensors"
    if not full.is_file():
        raise CheckpointError(f"{checkpoint_dir}: no adapter_model.safetensors or model.safetensors")
    state = load_file(str(full))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{full}: does not fit this model ({load_failure(exc)})") from None
    # Strict, except for weights tied to a loaded one (save_pretrained writes a tied LM head once).
    own = model.state_dict()
    loaded = {own[key].data_ptr() for key in state if key in own}
    missing = [key for key in result.missing_keys if own[key].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        what = f"missing {missing[0]}" if missing else f"unexpected {result.unexpected_keys[0]}"
        raise CheckpointError(f"{full}: does not match this model ({what})")
