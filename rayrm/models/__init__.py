"""Hugging Face models for RL: loading (dtype, dropout off), tokenizers' special tokens and
stop ids, mixed precision, the LM head in chunks, the decoding loop, tiny local builders.

Submodules are imported where they are used: ``hf_files`` (JSON reads, no torch) is what
config checks need before Ray starts.
"""
