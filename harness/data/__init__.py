"""Instruction data: sources, prompt formatting and masking, batching, and the built-in task set."""
