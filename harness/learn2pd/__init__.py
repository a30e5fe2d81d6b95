"""Learn2PD (arXiv 2509.25188): the learned filter, its oracle traces and its training."""
from .filter import Filter, load_filter, resolve_filter, save_filter
from .traces import TraceSet, collect, oracle_labels
from .training import train_filter

__all__ = ["Filter", "TraceSet", "collect", "load_filter", "oracle_labels", "resolve_filter", "save_filter",
           "train_filter"]
