from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..policy import Decision, Policy, PolicyConfig, register_policy, top_k

MAX_FORWARDS = 1024  # the reference's loop bound per block


@register_policy("saber")
class Saber(Policy):
    """Saber (zhaoyMa/Saber `generate_with_saber`): an adaptive threshold with drift backtracking.

    A step reads every generated position up to the block's end (float32 confidence of the argmax, mask token
    included). Commit the masked ones whose confidence exceeds the mean commit-time confidence of the
    positions committed so far (1 before any; stale values of re-masked positions stay in the mean), or the
    `n` most confident when fewer than `n` do; `fix` = max(n, committed). Unless nothing is left masked up to
    the block's end, re-mask the k = min(max(n // 2, ceil(fix / 8)), fix - 1) decoded positions whose
    confidence dropped most since the previous forward ("drift"; positions first seen in this forward drift
    +inf and go last).

    Quirks kept: the candidates for re-masking include earlier blocks and this step's own commits (a
    commit-and-revoke pair never reaches a forward input); drift at the run's first forward is measured
    against 0. Not reproduced: where the reference's top-n or top-k runs out of eligible positions (n >= 3
    near a block's end) it takes -inf entries (prompt or future positions); we take fewer. Guard: the
    reference silently moves on after 1024 forwards in a block with masks left; that is an error here.
    Greedy only (temperature 0), as the notes and the paper's runs decode."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        n: int = 2  # minimum tokens committed per step (the function default)

        def validate(self):
            super().validate()
            self.require("n", self.n >= 1, ">= 1")

    caches = ("none",)
    no_cache_because = "it re-masks tokens of earlier blocks and reads every generated position's fresh confidence"
    needs_bidirectional = no_cache_because
    greedy_only = True

    def max_forwards_per_block(self, decoding):
        return MAX_FORWARDS

    def begin(self, canvas, prompt_length):
        shape = (canvas.shape[0], canvas.shape[1] - prompt_length)  # per generated position
        return SimpleNamespace(prompt_length=prompt_length,
                               committed_conf=torch.full(shape, float("-inf"), device=canvas.device),
                               previous=torch.zeros(shape, device=canvas.device))

    def window(self, memory, block_start, block_end, canvas_end):
        return memory.prompt_length, block_end

    def step(self, state):
        memory, rows, n = state.memory, state.rows, self.config.n
        width = state.masked.shape[1]
        prediction, confidence = state.prediction, state.confidence  # greedy: float32 top-1 and its probability
        drift = (confidence - memory.previous[rows, :width]).clamp(max=torch.finfo(torch.float32).max)
        memory.previous[rows] = float("-inf")  # beyond the block's end: unseen, so it drifts +inf when first seen
        memory.previous[rows, :width] = confidence

        committed_conf = memory.committed_conf[rows, :width]
        known = committed_conf.isfinite()
        mean = committed_conf.where(known, 0).sum(-1) / known.sum(-1)
        threshold = torch.where(known.any(-1), mean, 1.0)
        confident = state.masked & (confidence > threshold[:, None])
        count = confident.sum(-1)
        commit = torch.where((count < n)[:, None], top_k(confidence, state.masked, n), confident)
        memory.committed_conf[rows, :width] = torch.where(commit, confidence, committed_conf)

        fix = count.clamp(min=n)
        k = torch.minimum(torch.clamp((fix + 7) // 8, min=n // 2), fix - 1)
        left = state.masked & ~commit
        remask = top_k(-drift, ~left & state.inside, k) & left.any(-1, keepdim=True)
        return Decision(commit, prediction, remask)
