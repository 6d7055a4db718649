"""The offline stand-ins' tokenizer: the same token ids in every process, on every machine."""

from __future__ import annotations

import json
import subprocess
import sys

from harness.bundled import byte_level_tokenizer

_VOCAB_OF_A_FRESH_PROCESS = (
    "import json; from harness.bundled import byte_level_tokenizer; "
    "print(json.dumps(byte_level_tokenizer().get_vocab(), sort_keys=True))"
)


def test_byte_ids_follow_the_sorted_byte_alphabet():
    # '!' (33) is the lowest symbol of the byte-level alphabet, so 'A' (65) is the 33rd byte id after
    # the 3 specials; ' ' is byte-level 'Ġ' (U+0120), after all 188 printable symbols ('Ā' U+0100 is
    # byte 0, so 'Ġ' is the 33rd non-printable).
    assert byte_level_tokenizer()("A").input_ids == [1, 3 + 32]
    assert byte_level_tokenizer()(" ").input_ids == [1, 3 + 188 + 32]


def test_two_processes_build_the_same_vocab():
    vocabs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _VOCAB_OF_A_FRESH_PROCESS], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(2)
    ]
    assert vocabs[0] == vocabs[1] == byte_level_tokenizer().get_vocab()
