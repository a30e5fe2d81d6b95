from dataclasses import dataclass, field

import torch

from ..policy import ConfigError, Decision, PolicyConfig, register_policy, top_k
from .baseline import Baseline


@dataclass
class KlassMemory:
    """Per row and generated position: the previous forward's distribution and the last H KL values."""

    kl_history: torch.Tensor  # [batch, G, H] float64, oldest first
    prompt_length: int
    p_prev: torch.Tensor | None = None  # [batch, G, vocab] float64, zeros before the first forward (sized by it)


@register_policy("klass")
class Klass(Baseline):
    """KLASS (KL-adaptive stability sampling, shkim0116/KLASS `stable_confident_decode`, unmask_strategy "all"):
    a masked position of the block is ready when its top probability exceeds `conf_threshold` and the KL
    divergence of its distribution from the previous forward's stayed below `kl_threshold` for the last H
    forwards; a step commits every ready position, or, when none is ready, LLaDA's quota of the most confident.

    Reproduced from the reference: softmax, confidence and argmax in float64 over the whole vocabulary; the KL
    state is never reset (it carries over block boundaries), starts from an all-zero previous distribution
    (the first KL is ~27.6 - entropy, never stable), and the ready test is only allowed from the in-block step
    H - 1 on. The KL history is kept for every position from the block to the canvas end, as the reference's
    full-sequence forwards do (so the dual cache, which computes only the block, is refused).
    Not reproduced: with steps < G the reference's fallback top-k may exceed the masks left and overwrite
    decoded (even prompt) tokens with their argmax; the engine commits masked positions only. The reference
    also hard-codes LLaDA's mask id; here it is the model's. Temperature 0 only: the reference softmaxes
    Gumbel-noised exp-logits, which is not a sample of the model."""

    caches = ("none", "prefix")
    needs_bidirectional = "its KL history follows every later position's distribution at every forward"
    no_cache_because = "KLASS's KL history needs every later position's distribution at every forward"

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        # ready iff p(top) > τ (CLI 0.9; GSM8K/MATH 0.6)
        conf_threshold: float = field(default=0.9, metadata={"symbol": "τ"})
        # ... and every KL in the history < κ (GSM8K 0.015)
        kl_threshold: float = field(default=0.01, metadata={"symbol": "κ", "secondary": True})
        # H: forwards the KL must stay below κ
        kl_history_length: int = field(default=2, metadata={"symbol": "H", "secondary": True})
        steps: int | None = None  # LLaDA's step budget for the fallback quota; None: G (the authors' steps = G)

        def validate(self):
            super().validate()
            self.require("conf_threshold", 0 <= self.conf_threshold <= 1, "in [0, 1]")
            self.require("kl_threshold", self.kl_threshold > 0, "> 0")
            self.require("kl_history_length", self.kl_history_length >= 1, ">= 1")
            self.require("steps", self.steps is None or self.steps > 0, "> 0")

    @classmethod
    def check(cls, decoding):
        super().check(decoding)
        if decoding.temperature > 0:
            raise ConfigError(f"strategy 'klass' decodes at temperature 0 only, got temperature={decoding.temperature} "
                              f"(its reference softmaxes Gumbel-noised exp-logits, not a sample)")

    def begin(self, canvas, prompt_length):
        batch, total = canvas.shape
        history = torch.zeros(batch, total - prompt_length, self.config.kl_history_length, dtype=torch.float64,
                              device=canvas.device)
        return KlassMemory(history, prompt_length)

    def window(self, memory, block_start, block_end, canvas_end):
        return block_start, canvas_end  # the history of later blocks' positions is updated at every forward

    def step(self, state):
        memory, rows = state.memory, state.rows
        p = state.logits.double().softmax(-1)
        if memory.p_prev is None:
            memory.p_prev = p.new_zeros(*memory.kl_history.shape[:2], p.shape[-1])
        confidence, token = p.max(-1)
        eps = 1e-12
        columns = slice(state.start - memory.prompt_length, state.start - memory.prompt_length + p.shape[1])
        kl = (p * ((p + eps).log() - (memory.p_prev[rows, columns] + eps).log())).sum(-1)
        history = torch.cat([memory.kl_history[rows, columns, 1:], kl[..., None]], -1)
        memory.kl_history[rows, columns] = history
        memory.p_prev[rows, columns] = p

        masked = state.masked & state.in_block
        stable = history.lt(self.config.kl_threshold).all(-1) & (state.step >= self.config.kl_history_length - 1)
        ready = masked & stable & (confidence > self.config.conf_threshold)
        fallback = top_k(confidence, masked, state.quota)
        return Decision(commit=torch.where(ready.any(-1, keepdim=True), ready, fallback), tokens=token)
