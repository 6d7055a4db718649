"""Helpers shared by test modules."""

from __future__ import annotations


class Interrupted(Exception):
    """Raised from a trainer callback to simulate a run that dies after a given step."""


def interrupt_at(step: int):
    def callback(record):
        if record.step == step:
            raise Interrupted(step)

    return callback
