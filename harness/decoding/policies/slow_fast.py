import statistics
from dataclasses import dataclass, field

import torch

from ..policy import ConfigError, Decision, Policy, PolicyConfig, register_policy, top_k


@dataclass
class SubCycle:
    """One row's place in its block: the settled prefix `last` and the sub-cycle's end `cur` (block-relative)."""

    block: int = -1  # canvas start of the block this state belongs to
    last: int = 0
    cur: int = 0
    slow_forwards: int = 0  # forwards of this sub-cycle's slow phase so far
    fast_forwards: int = 0  # forwards of its fast phase so far (the first one is fed the whole canvas)
    history: list[int] = field(default_factory=list)  # the last W cycle-length estimates
    determined: bool = False

    def next_cycle(self):
        self.last, self.slow_forwards, self.fast_forwards, self.history, self.determined = self.cur, 0, 0, [], False


@register_policy("slow_fast")
class SlowFast(Policy):
    """Slow-Fast sampling (LiangrunFlora/Slow-Fast-Sampling `generate_slow_fast_sampling`, LLaDA). A block is
    decoded in sub-cycles. Slow phase, exactly K forwards: each estimates how far the confident masked region
    reaches (the farthest masked position with confidence >= `cycle_len_confidence_threshold`, cumulative
    from the block start) until the last W estimates agree (population std < the std threshold), and commits
    in [last, block end) every masked position >= `high_confidence_threshold` if there are at least two, else
    the single most confident. Fast phase: the same commit rule on [last, cur) until it is full; its first
    forward is fed the whole canvas, later ones only the canvas up to the region's end. NFE = every forward.

    Reproduced from the reference: slow forwards run K times even when the block is already full; the
    undetermined fallback int(mean(history)) (truncated); estimates clamped to [1, B]; `>=` everywhere; a
    single high-confidence position goes through the top-1 branch. Batches: every row follows its own
    phases, as the batch-1 reference does (rows fed different lengths in one step are forwarded in one call
    per length); the reference's batched path runs rows in lockstep, and a row whose region is already full
    then has its region's first token overwritten, or fails on an empty region - not reproduced.
    `max_sub_cycles_per_block` is the reference's safety break; every sub-cycle commits a token, so it can
    only bind when block_length exceeds it, and such a setting is refused."""

    caches = ("none",)
    no_cache_because = "Slow-Fast's fast phase feeds a truncated canvas"
    needs_bidirectional = "its fast phase feeds a truncated canvas"

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        # slow forwards per sub-cycle
        k_exploration_steps: int = field(default=6, metadata={"symbol": "K", "secondary": True})
        # a masked position this confident extends the cycle estimate
        cycle_len_confidence_threshold: float = field(default=0.3, metadata={"secondary": True})
        # W: estimates that must agree to fix the cycle length
        cycle_length_stability_window: int = field(default=2, metadata={"secondary": True})
        # they agree when their population std is below it
        cycle_length_stability_std_dev_threshold: float = field(default=1.0, metadata={"secondary": True})
        high_confidence_threshold: float = field(default=0.9, metadata={"symbol": "τ"})  # commit all >= τ (if >= 2)
        # the reference's safety break (block_length must not exceed it)
        max_sub_cycles_per_block: int = field(default=256, metadata={"secondary": True})

        def validate(self):
            super().validate()
            self.require("k_exploration_steps", self.k_exploration_steps >= 1, ">= 1")
            self.require("cycle_len_confidence_threshold", 0 <= self.cycle_len_confidence_threshold <= 1, "in [0, 1]")
            self.require("cycle_length_stability_window", self.cycle_length_stability_window >= 1, ">= 1")
            self.require("cycle_length_stability_std_dev_threshold",
                         self.cycle_length_stability_std_dev_threshold >= 0, ">= 0")
            self.require("high_confidence_threshold", 0 <= self.high_confidence_threshold <= 1, "in [0, 1]")
            self.require("max_sub_cycles_per_block", self.max_sub_cycles_per_block >= 1, ">= 1")

    @classmethod
    def check(cls, decoding):
        if decoding.block_length > decoding.policy.max_sub_cycles_per_block:
            raise ConfigError(f"block_length ({decoding.block_length}) must be <= decoding.max_sub_cycles_per_block "
                              f"({decoding.policy.max_sub_cycles_per_block}): the reference would leave masks")

    def max_forwards_per_block(self, decoding):
        # at most B sub-cycles (each commits a token), each K slow forwards; at most B fast forwards in all
        return decoding.block_length * (self.config.k_exploration_steps + 1)

    def begin(self, canvas, prompt_length):
        return [SubCycle() for _ in range(canvas.shape[0])]

    def keep_decoding(self, memory, has_mask):
        mid_slow = [0 < row.slow_forwards < self.config.k_exploration_steps for row in memory]
        return has_mask | torch.tensor(mid_slow, device=has_mask.device)

    def fed_length(self, row: SubCycle, block_start: int, canvas_end: int) -> int:
        """How much of the canvas this row's next forward is fed: up to its region's end after the first fast
        forward of a sub-cycle, else all of it."""
        truncated = row.block == block_start and row.fast_forwards > 0
        return min(block_start + row.cur, canvas_end) if truncated else canvas_end

    def forward(self, model, input_ids, key_mask, memory, rows, block_start, block_end):
        hi = input_ids.shape[1]
        lengths = torch.tensor([self.fed_length(memory[r], block_start, hi) for r in rows.tolist()])
        if bool((lengths == lengths[0]).all()):
            length = int(lengths[0])
            return model(input_ids[:, :length], None if key_mask is None else key_mask[:, :length])
        # rows fed different lengths: one forward per length; the columns a row was not fed are padded with
        # logits that predict the mask token (never committed: each row commits inside what it was fed)
        logits = None
        for length in lengths.unique().tolist():
            group = (lengths == length).nonzero().squeeze(-1).to(input_ids.device)
            part = model(input_ids[group, :length], None if key_mask is None else key_mask[group, :length])
            if logits is None:
                logits = part.new_zeros(len(rows), int(lengths.max()), part.shape[-1])
                logits[..., model.mask_token_id] = 1.0
            logits[group, :length] = part
        return logits

    def step(self, state):
        commit = torch.zeros_like(state.masked)
        block_start = state.start + state.block_start
        for i, r in enumerate(state.rows.tolist()):
            row = state.memory[r]
            if row.block != block_start:  # a new block: its first sub-cycle
                state.memory[r] = row = SubCycle(block=block_start)
            masked = state.masked[i, state.block_start:state.block_end]
            confidence = state.confidence[i, state.block_start:state.block_end]
            if row.slow_forwards < self.config.k_exploration_steps:
                if not row.determined:
                    self.estimate(row, masked, confidence)
                chosen = self.fill(masked, confidence, row.last, self.block_length)
                row.slow_forwards += 1
                if row.slow_forwards == self.config.k_exploration_steps and not row.determined:
                    row.cur = self.clamp(int(statistics.mean(row.history)))
            else:
                chosen = self.fill(masked, confidence, row.last, row.cur)
                row.fast_forwards += 1
            commit[i, state.block_start:state.block_end] = chosen
            if row.slow_forwards == self.config.k_exploration_steps and not (masked & ~chosen)[row.last:row.cur].any():
                row.next_cycle()  # the sub-cycle's region is full (or empty): the next one starts at its end
        return Decision(commit=commit, tokens=state.prediction)

    def estimate(self, row: SubCycle, masked, confidence):
        """One slow forward's cycle-length estimate; fixes `cur` once the last W estimates agree (or at the last
        slow forward)."""
        c = self.config
        if row.last >= self.block_length:
            increment = 0
        else:
            reach = (masked & (confidence >= c.cycle_len_confidence_threshold))[row.last:].nonzero()
            increment = int(reach.max()) + 1 if reach.numel() else 1
        row.history = (row.history + [self.clamp(row.last + increment)])[-c.cycle_length_stability_window:]
        if len(row.history) < c.cycle_length_stability_window:
            return
        if statistics.pstdev(row.history) < c.cycle_length_stability_std_dev_threshold:
            row.cur, row.determined = row.history[-1], True
        else:
            row.cur = self.clamp(int(statistics.mean(row.history)))
            row.determined = row.slow_forwards == c.k_exploration_steps - 1

    def fill(self, masked, confidence, lo: int, hi: int):
        """The commit rule on block columns [lo, hi): every masked position >= τ if there are two or more,
        else the most confident masked one."""
        candidates = masked.clone()
        candidates[:lo] = False
        candidates[hi:] = False
        high = candidates & (confidence >= self.config.high_confidence_threshold)
        return high if int(high.sum()) > 1 else top_k(confidence, candidates, 1).view_as(candidates)

    def clamp(self, length: int) -> int:
        return max(1, min(length, self.block_length))
