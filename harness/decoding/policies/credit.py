from dataclasses import dataclass, field

import torch

from ..policy import Decision, Policy, PolicyConfig, register_policy


@dataclass(frozen=True)
class DriverConfig(PolicyConfig):
    """dInfer's `BlockWiseDiffusionLLM` driver knobs (its defaults), shared by the dInfer decoders."""

    # each check of the block runs u = clamp(masks // expected_tpf, 1, maximum_unroll) forwards back to back
    expected_tpf: int = field(default=8, metadata={"symbol": "tpf", "secondary": True})
    maximum_unroll: int = field(default=4, metadata={"symbol": "U", "secondary": True})  # the cap on u (dInfer: 4)
    eos_stop: bool = True  # a finished block holding EOS ends the row (dInfer's early_stop=True)

    def validate(self):
        super().validate()
        self.require("expected_tpf", self.expected_tpf >= 1, ">= 1")
        self.require("maximum_unroll", self.maximum_unroll >= 1, ">= 1")


@dataclass
class Unrolled:
    """Per-decode driver state: per row, the forwards left in its current group of unrolled iterations."""

    pending: torch.Tensor  # [batch]
    length: int  # canvas length: an `end` that cuts nothing


class DInferDriver(Policy):
    """dInfer's block driver (no KV cache, `BlockRunner.decode`) around a decoder call `decide(state)`:
    while the block has masks, run u = max(min(masks // expected_tpf, maximum_unroll), 1) iterations (a
    forward and a decoder call each) without checking whether the block filled meanwhile; those wasted
    iterations are forwards (NFE) and still update a decoder's state. When the block is finished and holds
    an EOS, everything after the block becomes EOS (early_stop) and the row stops.

    Not reproduced: dInfer's eval aligns the first block to a multiple of block_length inside the prompt
    (`start_block_align`); here blocks start at the prompt's end like every strategy. In a batch dInfer
    sizes u from the whole batch's masks; here each row's own masks (a row decodes as it would alone).
    dInfer's early_stop=False (stop at EOS but leave later positions masked) is not offered: eos_stop=False
    decodes every block instead (the standalone `generate_hierarchy` loop)."""

    def begin(self, canvas, prompt_length):
        return Unrolled(pending=canvas.new_zeros(canvas.shape[0]), length=canvas.shape[1])

    def keep_decoding(self, memory, has_mask):
        return has_mask | (memory.pending > 0)

    def decide(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder call on the block: (commit, tokens)."""
        raise NotImplementedError

    def step(self, state):
        memory, knobs = state.memory, self.config
        block_masks = state.masked & state.in_block
        pending = memory.pending[state.rows]
        unroll = (block_masks.sum(-1) // knobs.expected_tpf).clamp(max=knobs.maximum_unroll).clamp(min=1)
        pending = torch.where(pending == 0, unroll, pending) - 1  # a new group starts where none is pending
        memory.pending[state.rows] = pending
        commit, tokens = self.decide(state)
        commit &= state.masked
        if not knobs.eos_stop:
            return Decision(commit=commit, tokens=tokens)
        written = torch.where(commit, tokens, state.tokens)
        finished = (pending == 0) & ~(block_masks & ~commit).any(-1)
        holds_eos = ((written == state.eos_id) & state.in_block).any(-1)
        block_end = state.start + state.block_end
        end = torch.where(finished & holds_eos, block_end, memory.length)
        return Decision(commit=commit, tokens=tokens, end=end)


@dataclass
class Credit(Unrolled):
    """Per row: the current block's credit matrix [B, vocab], its decoder calls so far, and which block."""

    matrix: torch.Tensor | None = None  # [batch, B, vocab] float32, allocated at the first step
    calls: torch.Tensor | None = None  # [batch]
    block: torch.Tensor | None = None  # [batch] canvas position of the block the matrix belongs to


@register_policy("credit")
class CreditDecoding(DInferDriver):
    """dInfer's CreditDecoding (`CreditThresholdParallelDecoder`, parallel_strategy.py @ fce4e32) on its driver.

    Each decoder call on the block (the driver's wasted unrolled calls too): decay the block's credit matrix
    by beta (not at the block's first call), add p_top1 ** gamma to the entry of each masked position's top-1
    token (raw float32 softmax), fuse logits + alpha * log(credit + 1), then the threshold rule on the fused
    logits: among masked positions whose fused argmax is not the mask token, commit every one with fused
    softmax confidence >= min(tau, best - 1e-5) (the bound clamped at -1000), token = the fused argmax.

    Reference quirks kept: the best candidate always passes, and so does every candidate within 1e-5 of it;
    a block whose masked positions all predict the mask token commits nothing (the reference would loop
    forever; here the engine's forward cap raises naming the strategy). Credit lives per block and per
    decode (dInfer keeps it on the decoder object and leaks it into the next request after an EOS stop;
    this is the one-decoder-per-request behaviour). Greedy only: sampling would need the noise on the
    fused logits, which the engine does not draw."""

    @dataclass(frozen=True)
    class Config(DriverConfig):
        threshold: float = field(default=0.9, metadata={"symbol": "τ"})  # commit fused confidence >= τ (0.9)
        # weight of log(credit + 1) (0.7)
        credit_alpha: float = field(default=0.7, metadata={"symbol": "α", "secondary": True})
        # credit added: p_top1 ** γ (0.2)
        boost_gamma: float = field(default=0.2, metadata={"symbol": "γ", "secondary": True})
        # credit kept per call (0.8)
        decay_beta: float = field(default=0.8, metadata={"symbol": "β", "secondary": True})

        def validate(self):
            super().validate()
            self.require("threshold", 0 < self.threshold <= 1, "in (0, 1]")
            self.require("credit_alpha", self.credit_alpha >= 0, ">= 0")
            self.require("boost_gamma", self.boost_gamma >= 0, ">= 0")
            self.require("decay_beta", 0 <= self.decay_beta <= 1, "in [0, 1]")

    greedy_only = True  # as dInfer's benchmarks; sampling would need the noise on the fused logits

    def begin(self, canvas, prompt_length):
        return Credit(**vars(super().begin(canvas, prompt_length)))

    def fused_logits(self, state) -> torch.Tensor:
        memory, knobs, rows = state.memory, self.config, state.rows
        logits = state.logits.float()
        n, width, vocab = logits.shape
        if memory.matrix is None:
            batch = memory.pending.shape[0]
            memory.matrix = logits.new_zeros(batch, self.block_length, vocab)
            memory.calls = memory.pending.new_zeros(batch)
            memory.block = memory.pending.new_full((batch,), -1)
        new_block = memory.block[rows] != state.start + state.block_start
        matrix = memory.matrix[rows, :width].masked_fill(new_block[:, None, None], 0.0)
        calls = memory.calls[rows].masked_fill(new_block, 0)
        matrix = torch.where((calls > 0)[:, None, None], matrix * knobs.decay_beta, matrix)
        # greedy: the step's prediction and confidence are the raw logits' float32 top-1 and its probability
        boost = state.confidence.pow(knobs.boost_gamma) * (state.masked & state.in_block)
        matrix.scatter_add_(-1, state.prediction[..., None], boost[..., None])
        memory.matrix[rows, :width], memory.calls[rows] = matrix, calls + 1
        memory.block[rows] = state.start + state.block_start
        return logits + knobs.credit_alpha * torch.log(matrix + 1)

    def decide(self, state):
        fused = self.fused_logits(state)
        probabilities, tokens = fused.softmax(-1), fused.argmax(-1)
        candidate = state.masked & state.in_block & (tokens != state.mask_id)
        confidence = probabilities.gather(-1, tokens[..., None]).squeeze(-1)
        confidence = confidence.masked_fill(~candidate, float("-inf"))
        bound = (confidence.max(-1).values - 1e-5).clamp(-1000, self.config.threshold)
        return confidence >= bound[:, None], tokens
