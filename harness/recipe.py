"""Compose a run from its config: resolve -> load -> adapter -> data, ready for the Trainer.

This is the one place that wires the modules together (torchtune calls it a recipe); the CLI's
``train`` and the validation checks both start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.adapters import AdapterSummary, build_adapter
from harness.attention import check_attention
from harness.config import RunConfig
from harness.data.formatting import PreparedData, pad_token_id, prepare_data, set_pad_token
from harness.loading import (
    LoadingReport,
    check_training_precision,
    load_model_with_report,
    load_tokenizer,
    pick_device,
    pick_dtype,
)
from harness.model_info import ModelInfo
from harness.resolve import ResolvedModel, resolve_model
from harness.training import Trainer


@dataclass
class Run:
    config: RunConfig
    resolved: ResolvedModel
    info: ModelInfo
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    prepared: PreparedData | None = None
    model: Any = None
    adapter: AdapterSummary | None = None

    def load_base(self, *, quantized: bool = True) -> Any:
        """A fresh copy of the base model as this run loads it (quantized for QLoRA unless
        ``quantized=False``, which gives the dequantized weights a QLoRA adapter merges into)."""
        model, _report = self.load_base_with_report(quantized=quantized)
        return model

    def load_base_with_report(self, *, quantized: bool = True) -> tuple[Any, LoadingReport]:
        """``load_base``, plus the loader's report of missing, unexpected and mismatched keys."""
        quantization = self.config.quantization if self.config.adapter == "qlora" and quantized else None
        return load_model_with_report(
            self.resolved.path,
            device=self.device,
            dtype=self.dtype,
            quantization=quantization,
            allow_pickle=self.config.allow_pickle,
            attn_implementation=self.config.model.attn_implementation,
        )

    def build(self) -> Any:
        """Load the base model and wrap it with the configured adapter (seeded, so LoRA init repeats)."""
        torch.manual_seed(self.config.seed)
        self.model, self.adapter = build_adapter(self.load_base(), self.config, self.info, self.resolved.served_as)
        return self.model

    @property
    def data(self) -> PreparedData:
        """The prepared data, loaded on first use."""
        if self.prepared is None:
            self.prepared = prepare_data(self.config.dataset, self.tokenizer, self.config.seed)
        return self.prepared

    def trainer(self, output_dir: str | None = None, **kwargs: Any) -> Trainer:
        return Trainer(
            self.model,
            self.config,
            self.data.train,
            self.data.validation,
            pad_id=pad_token_id(self.tokenizer),
            device=self.device,
            output_dir=output_dir or self.config.output_dir,
            base_model_id=self.resolved.served_as,
            **kwargs,
        )


def prepare_run(config: RunConfig, *, with_data: bool = True) -> Run:
    """Resolve the model, read its config and tokenizer, and (unless ``with_data`` is False) prepare the
    data; no weights are loaded yet."""
    resolved = resolve_model(config.base_model)
    info = ModelInfo.from_config(resolved.path)
    tokenizer = load_tokenizer(resolved.path)
    if config.dataset.pad_token is not None:
        set_pad_token(tokenizer, config.dataset.pad_token)
    device = pick_device(config.training.device)
    dtype = pick_dtype(config.training.dtype, device)
    check_training_precision(dtype, config.adapter)
    check_attention(config.model.attn_implementation, device.type)
    run = Run(config, resolved, info, tokenizer, device, dtype)
    if with_data:
        run.data  # noqa: B018 - prepare the data now, before any weights load
    return run
