"""Validation harness for end-to-end LoRA/QLoRA fine-tuning of small Llama-architecture models."""

__version__ = "0.1.0"
