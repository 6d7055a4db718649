"""``harness probe``: will this run fit on that GPU? The predicted peak, its breakdown, a verdict
against a GPU size and the levers that would make it fit, each with its own prediction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from importlib import metadata
from typing import Any

from harness.config import RunConfig
from harness.errors import ConfigError
from harness.memory import cuda_rules
from harness.memory.measure import Measurement
from harness.memory.model_configs import model_config
from harness.memory.predictor import Prediction, predict

Measurer = Callable[[dict[str, Any], RunConfig], Measurement]
DEVICE_KINDS = ["NVIDIA CUDA, SDPA flash/efficient/math as on H100 (torch 2.11 cu130), bitsandbytes 4-bit"]


def versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _with_training(config: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(config, training=dataclasses.replace(config.training, **changes))


def levers(config: RunConfig) -> list[tuple[str, RunConfig]]:
    """What would lower the peak, cheapest first (least change to what the run learns and costs)."""
    found = []
    training = config.training
    if training.batch_size > 1:
        smaller = _with_training(
            config,
            batch_size=training.batch_size // 2,
            gradient_accumulation_steps=training.gradient_accumulation_steps * 2,
        )
        found.append(
            (
                f"--set training.batch_size={training.batch_size // 2} "
                f"--set training.gradient_accumulation_steps={training.gradient_accumulation_steps * 2}",
                smaller,
            )
        )
    if not config.gradient_checkpointing("cuda"):
        found.append(
            ("--set training.gradient_checkpointing=true", _with_training(config, gradient_checkpointing=True))
        )
    if config.dataset.max_length >= 128:
        shorter = dataclasses.replace(
            config, dataset=dataclasses.replace(config.dataset, max_length=config.dataset.max_length // 2)
        )
        found.append((f"--set dataset.max_length={config.dataset.max_length // 2}", shorter))
    return found


def check_gpu_gib(gpu_gib: float | None) -> None:
    if gpu_gib is not None and not gpu_gib > 0:
        raise ConfigError(f"--gpu-gib: must be a number of GiB > 0, got {gpu_gib:g}")


def verdict(prediction: Prediction, config: RunConfig, gpu_gib: float, *, all_levers: bool = True) -> dict[str, Any]:
    """Fits (with the margin) or not (with the levers, each predicted; only up to the first that fits
    unless ``all_levers``)."""
    if prediction.peak_gib <= gpu_gib:
        return {"fits": True, "gpu_gib": gpu_gib, "margin_gib": round(gpu_gib - prediction.peak_gib, 3), "levers": []}
    options = []
    for setting, changed in levers(config):
        peak = predict(model_config(changed.base_model), changed).peak_gib
        options.append({"set": setting, "predicted_peak_gib": round(peak, 3), "fits": peak <= gpu_gib})
        if peak <= gpu_gib and not all_levers:
            break
    return {"fits": False, "gpu_gib": gpu_gib, "margin_gib": round(gpu_gib - prediction.peak_gib, 3), "levers": options}


def probe(config: RunConfig, gpu_gib: float | None = None, measure: Measurer | None = None) -> dict[str, Any]:
    """Everything ``harness probe --json`` prints; ``measure`` (on a machine with a GPU: the real steps,
    harness.memory.measure.measure_steps) adds the MEASURED peak beside the PREDICTED one."""
    check_gpu_gib(gpu_gib)
    prediction = predict(model_config(config.base_model), config)
    result: dict[str, Any] = {
        "config": config.source,
        "base_model": config.base_model,
        "adapter": config.adapter,
        "batch_size": config.training.batch_size,
        "max_length": config.dataset.max_length,
        "gradient_checkpointing": config.gradient_checkpointing("cuda"),
        "predicted_peak_gib": round(prediction.peak_gib, 3),
        "label": "PREDICTED (fake execution on CPU; no GPU ran)",
        "breakdown_gib": {k: round(v, 3) for k, v in dataclasses.asdict(prediction.breakdown).items()},
        "peak_op": prediction.peak_op,
        "peak_phase": prediction.peak_phase,
        "seconds": round(prediction.seconds, 1),
        "device_kinds": DEVICE_KINDS,
        "versions": versions(),
        "versions_outside_rules": cuda_rules.versions_outside_table(versions()["torch"], versions()["transformers"]),
    }
    if config.training.packing:
        result["note"] = "packed rows are predicted as full rows on a fused kernel (no dense B x L x L mask)"
    if gpu_gib is not None:
        result["verdict"] = verdict(prediction, config, gpu_gib)
    if measure is not None:
        result["measured"] = _measured(measure(model_config(config.base_model), config), prediction.peak_gib)
    return result


def _measured(measurement: Measurement, predicted_gib: float) -> dict[str, Any]:
    found: dict[str, Any] = {
        "label": f"MEASURED ({len(measurement.losses)} real steps, random init, {measurement.device})",
        "peak_gib": None if measurement.peak_gib is None else round(measurement.peak_gib, 3),
        "losses": measurement.losses,
    }
    if measurement.peak_gib:
        found["predicted_over_measured"] = round(predicted_gib / measurement.peak_gib, 3)
    return found


def format_probe(result: dict[str, Any]) -> str:
    gc = "on" if result["gradient_checkpointing"] else "off"
    lines = [
        f"{result['base_model']} {result['adapter']} {result['batch_size']}x{result['max_length']} "
        f"(gradient checkpointing {gc})",
        f"PREDICTED peak GPU memory: {result['predicted_peak_gib']:.2f} GiB "
        f"(fake execution on CPU, {result['seconds']:.0f} s; no GPU ran)",
    ]
    lines += [f"  {name.replace('_', ' ')}: {gib:.2f} GiB" for name, gib in result["breakdown_gib"].items()]
    lines.append(f"  peak at {result['peak_op']} ({result['peak_phase']})")
    for outside in result["versions_outside_rules"]:
        lines.append(f"  WARNING: {outside}: CUDA's kernel choices may differ")
    if "note" in result:
        lines.append(f"  note: {result['note']}")
    measured = result.get("measured")
    if measured is not None:
        peak = "no allocator statistics" if measured["peak_gib"] is None else f"{measured['peak_gib']:.2f} GiB"
        ratio = measured.get("predicted_over_measured")
        lines.append(f"{measured['label']} peak: {peak}" + (f"; PREDICTED / MEASURED = {ratio:.2f}" if ratio else ""))
    verdict_ = result.get("verdict")
    if verdict_:
        if verdict_["fits"]:
            lines.append(f"fits in {verdict_['gpu_gib']:g} GiB with {verdict_['margin_gib']:.2f} GiB to spare")
        else:
            lines.append(
                f"does NOT fit in {verdict_['gpu_gib']:g} GiB ({-verdict_['margin_gib']:.2f} GiB over); levers:"
            )
            for lever in verdict_["levers"]:
                mark = "fits" if lever["fits"] else "still too big"
                lines.append(f"  {lever['set']}: PREDICTED {lever['predicted_peak_gib']:.2f} GiB ({mark})")
    return "\n".join(lines)


def choose_checkpointing(config: RunConfig, free_gib: float) -> RunConfig:
    """Resolve ``training.gradient_checkpointing: null`` against the free device memory: off when the run
    is predicted to fit without it (no recompute, about a third faster), on otherwise. A configured value
    is kept; where free memory is unknown (CPU, tables) ``RunConfig.gradient_checkpointing`` keeps its rule."""
    if config.training.gradient_checkpointing is not None:
        return config
    without = _with_training(config, gradient_checkpointing=False)
    fits = predict(model_config(config.base_model), without).peak_gib <= free_gib
    return without if fits else _with_training(config, gradient_checkpointing=True)


def preflight(config: RunConfig, free_gib: float) -> dict[str, Any]:
    """Before loading weights on CUDA: the prediction, or a one-line refusal (exit 2) naming the
    cheapest lever when it exceeds the free device memory, so a run does not OOM twenty minutes in."""
    prediction = predict(model_config(config.base_model), config)
    result = {"predicted_peak_gib": round(prediction.peak_gib, 3), "free_gib": round(free_gib, 3)}
    if prediction.peak_gib <= free_gib:
        return result
    decision = verdict(prediction, config, free_gib, all_levers=False)
    fitting = [lever for lever in decision["levers"] if lever["fits"]]
    hint = (
        f"cheapest lever: {fitting[0]['set']} (PREDICTED {fitting[0]['predicted_peak_gib']:.2f} GiB)"
        if fitting
        else "no single lever fits; use a larger GPU or combine the levers `harness probe --gpu-gib` lists"
    )
    raise ConfigError(
        f"{config.source}: PREDICTED peak {prediction.peak_gib:.3g} GiB exceeds the {free_gib:.3g} GiB free on "
        f"the GPU; {hint}"
    )


def format_peaks(predicted_gib: float | None, measured_gib: float | None) -> str:
    """One line, every number labelled PREDICTED or MEASURED, with their ratio where both exist."""
    parts = []
    if predicted_gib is not None:
        parts.append(f"PREDICTED peak {predicted_gib:.2f} GiB")
    if measured_gib is not None:
        parts.append(f"MEASURED peak {measured_gib:.2f} GiB")
    if predicted_gib is not None and measured_gib:
        parts.append(f"PREDICTED / MEASURED = {predicted_gib / measured_gib:.2f}")
    return ", ".join(parts) or "no prediction and no measurement"
