from dataclasses import dataclass, field

import torch

from ..policy import register_policy
from .credit import DInferDriver, DriverConfig


@register_policy("hierarchy")
class Hierarchy(DInferDriver):
    """dInfer's `HierarchyDecoder` (parallel_strategy.py @ fce4e32) on dInfer's block driver (unrolled
    iterations, EOS stop; see DInferDriver). Confidence = exp(log_softmax(logits)[argmax]) in float32.
    The block's masked positions split into maximal runs of consecutive masks; commit, in each run, every
    position whose confidence equals the run's maximum if it is > low_threshold, plus every masked position
    with confidence > threshold, plus always the block's single most confident masked position (the first
    on ties), even below low_threshold. The mask token stays a possible prediction.

    This reproduces the decoder class (§4d of our notes). dInfer's standalone `generate_hierarchy(...,
    decoding="hierarchy_fast_v2")` differs only in its loop (no unrolling, no EOS handling: take
    maximum_unroll=1, eos_stop=False) and at exact ties (it commits a run's first maximum only, and only the
    best one when that is below low_threshold). dInfer's reference asserts batch size 1; here rows decode
    independently, each as it would alone."""

    @dataclass(frozen=True)
    class Config(DriverConfig):
        threshold: float = field(default=0.9, metadata={"symbol": "τ"})  # commit any confidence > τ (0.9)
        # a run's best needs > τ_low (0.3)
        low_threshold: float = field(default=0.3, metadata={"symbol": "τ_low", "secondary": True})

        def validate(self):
            super().validate()
            self.require("threshold", 0 <= self.threshold <= 1, "in [0, 1]")
            self.require("low_threshold", 0 <= self.low_threshold <= 1, "in [0, 1]")

    def decide(self, state):
        masked = state.masked & state.in_block
        probability = state.logits.float().log_softmax(-1).gather(-1, state.prediction[..., None]).squeeze(-1).exp()
        floor = torch.finfo(probability.dtype).min  # the reference's score of decoded positions
        confidence = probability.masked_fill(~masked, floor)
        before = torch.nn.functional.pad(masked[:, :-1], (1, 0))
        run = torch.where(masked, (masked & ~before).cumsum(-1) - 1, 0)  # run index; decoded positions: run 0
        run_max = torch.full_like(confidence, floor).scatter_reduce(-1, run, confidence, "amax")
        commit = (confidence == run_max.gather(-1, run)) & (confidence > self.config.low_threshold)
        commit |= confidence > self.config.threshold
        best = torch.nn.functional.one_hot(confidence.argmax(-1), confidence.shape[-1]).bool()
        return (commit | best) & masked, state.prediction
