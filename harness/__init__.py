"""dllm-harness: measure how fast diffusion LLMs decode without losing accuracy."""
__version__ = "0.1.0"
