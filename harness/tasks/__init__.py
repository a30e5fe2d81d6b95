"""Synthetic tasks of the embedded default model (generators, scorers, tokenizer, evaluation)."""
from .synthetic import TASKS, Problem, Task, held_out, training_stream, vocabulary, write_splits

__all__ = ["TASKS", "Problem", "Task", "held_out", "training_stream", "vocabulary", "write_splits"]
