"""Tokenizer families: one module each, discovered by `tokbench.registry` through its `FAMILY`."""
