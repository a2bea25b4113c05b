"""Perplexity profiles of RoPE scaling methods, the reference model, and the short fine-tune.

Optional extra ``ropekit[eval]`` (accelerate, matplotlib, gguf). Nothing heavy is imported
here: torch and transformers load inside the functions that need them.
"""
