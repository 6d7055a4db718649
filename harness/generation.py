"""Greedy generation for prompts, batched with left padding so each row continues its own prompt.

Padding is done here, not by the tokenizer: many Llama tokenizers (Llama-2, Mistral, TinyLlama) have
no pad token, and asking them to pad raises. Padded positions are off in the attention mask, so the
id used to fill them never matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Generated:
    text: str  # the new text only, special tokens stripped
    ended: bool  # stopped with EOS within the token budget


def _fill_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def left_pad(prompts: list[list[int]], fill_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each row right-aligned."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), fill_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate_ids(
    model: Any, tokenizer: Any, prompts: list[list[int]], *, max_new_tokens: int = 32, batch_size: int = 8
) -> list[Generated]:
    """Continue each tokenized prompt greedily."""
    was_training = model.training
    model.eval()
    fill = _fill_id(tokenizer)
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    outputs: list[Generated] = []
    try:
        for start in range(0, len(prompts), batch_size):
            input_ids, attention_mask = left_pad(prompts[start : start + batch_size], fill)
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=fill,
                eos_token_id=eos,
            )
            for row in generated[:, input_ids.shape[1] :].tolist():
                ended = eos is not None and eos in row
                kept = row[: row.index(eos)] if ended else row
                outputs.append(Generated(tokenizer.decode(kept, skip_special_tokens=True), ended))
    finally:
        model.train(was_training)
    return outputs


def greedy_generate(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int = 32, batch_size: int = 8
) -> list[str]:
    """Continue each text prompt greedily (tokenized as the tokenizer does by default); returns only
    the new text, special tokens stripped."""
    ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    return [g.text for g in generate_ids(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size)]
