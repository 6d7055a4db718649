"""Architecture facts read from a model's config.json, and the LoRA target dimensions they imply.

The research document's first design hard-coded ``hidden_size = 4096`` and 32 layers; every shape in
this project comes from here instead, and the unit tier checks it against real ``nn.Linear`` shapes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import AdapterError, ModelResolutionError

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
LINEAR_MODULES = ATTENTION_MODULES + MLP_MODULES


@dataclass(frozen=True)
class ModelInfo:
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    max_position: int
    tie_word_embeddings: bool
    model_type: str = "llama"
    biased_modules: tuple[str, ...] = ()  # projections with a bias vector (Qwen2: q/k/v)

    @classmethod
    def from_dict(cls, config: dict[str, Any], source: str = "<config>") -> ModelInfo:
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            rope = config.get("rope_theta")
            if rope is None:
                rope = (config.get("rope_parameters") or config.get("rope_scaling") or {}).get("rope_theta", 10000.0)
            return cls(
                hidden_size=hidden,
                num_layers=int(config["num_hidden_layers"]),
                num_attention_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                intermediate_size=int(config["intermediate_size"]),
                vocab_size=int(config["vocab_size"]),
                rope_theta=float(rope),
                max_position=int(config.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                model_type=str(config.get("model_type", "llama")),
                biased_modules=_biased_modules(config),
            )
        except KeyError as exc:
            raise ModelResolutionError(f"{source}: config.json lacks required key {exc.args[0]!r}") from None

    @classmethod
    def from_config(cls, path: str | Path) -> ModelInfo:
        """Read ``config.json`` from a snapshot directory (or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError:
            raise ModelResolutionError(f"{file}: no such config.json") from None
        except json.JSONDecodeError as exc:
            raise ModelResolutionError(f"{file}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        return cls.from_dict(data, str(file))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def num_parameters(self) -> int:
        """Parameter count implied by the config (projection biases and RMSNorm weights included)."""
        h, i, layers = self.hidden_size, self.intermediate_size, self.num_layers
        attention = sum(a * b for a, b in (target_dims(m, self) for m in ATTENTION_MODULES))
        mlp = 3 * h * i
        biases = sum(target_dims(m, self)[1] for m in self.biased_modules)
        per_layer = attention + mlp + biases + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return layers * per_layer + embeddings + h

    def training_flops_per_token(self, seq_len: int) -> float:
        """Forward + backward FLOPs per token: 6 x matmul parameters (lm head included, embedding
        lookup excluded) plus attention scores and values, 12 x layers x heads x head_dim x seq (causal
        halves it: 6x)."""
        matmul_params = self.num_parameters - self.vocab_size * self.hidden_size * (
            0 if self.tie_word_embeddings else 1
        )
        attention = 6 * self.num_layers * self.num_attention_heads * self.head_dim * seq_len
        return 6.0 * matmul_params + attention


def _biased_modules(config: dict[str, Any]) -> tuple[str, ...]:
    """Which projections carry a bias: Qwen2 hard-codes q/k/v; Llama-style configs say so with
    ``attention_bias`` (all four attention projections) and ``mlp_bias``."""
    if config.get("model_type") == "qwen2":
        attention: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    else:
        attention = ATTENTION_MODULES if config.get("attention_bias") else ()
    return attention + (MLP_MODULES if config.get("mlp_bias") else ())


def target_dims(module: str, info: ModelInfo) -> tuple[int, int]:
    """(in_features, out_features) of a Llama projection, from head_dim and the KV heads (GQA)."""
    q_out = info.num_attention_heads * info.head_dim
    kv_out = info.num_kv_heads * info.head_dim
    dims = {
        "q_proj": (info.hidden_size, q_out),
        "k_proj": (info.hidden_size, kv_out),
        "v_proj": (info.hidden_size, kv_out),
        "o_proj": (q_out, info.hidden_size),
        "gate_proj": (info.hidden_size, info.intermediate_size),
        "up_proj": (info.hidden_size, info.intermediate_size),
        "down_proj": (info.intermediate_size, info.hidden_size),
    }
    if module not in dims:
        raise AdapterError(f"unknown target module {module!r}; known: {', '.join(dims)}")
    return dims[module]
