from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ..engine import quota_schedule
from ..policy import ConfigError, Decision, Policy, PolicyConfig, greedy_confidence, register_policy, top_k


@register_policy("remdm")
class ReMDM(Policy):
    """ReMDM for LLaDA (ParallelBench's `llada_remdm_sample`, a port of guanghanwang/ReMDM-LLaDA).

    Per block: S = steps / blocks ordinary steps committing LLaDA's quota (most confident first, float64
    confidence, mask token out of argmax and softmax), with `remdm_steps` re-mask steps inserted before
    ordinary step t* = max(min(int(7B/8), B - 1), 1) (at the end when t* >= S). A re-mask step takes back the
    `remdm_number` block tokens with the lowest commit-time confidence (not re-evaluated), then forwards and
    commits the `remdm_number` most confident masked positions of the block (any of them). NFE = steps +
    blocks · remdm_steps.

    The reference re-masks at the start of the re-mask step, before its forward; here the step before it does
    (the same forward inputs). Quirks kept: the quota splits the block over the TOTAL steps (consumed in
    order), so with several blocks only steps = G fills a block (other values are refused, where the
    reference fails its final assertion); re-masks stay in the current block. Not reproduced: when fewer
    than remdm_number tokens are committed, the reference's top-k takes +inf entries (any position, the prompt
    included); we re-mask fewer. The knobs have no defaults in the code: remdm_number 1 is ReMDM-LLaDA's
    script, remdm_steps None its loop length (as many re-mask steps as ordinary ones)."""

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        steps: int | None = None  # total ordinary steps (the uniform schedule's); None: G
        remdm_steps: int | None = None  # re-mask steps inserted per block; None: steps per block
        remdm_number: int = 1  # tokens re-masked (and re-committed) per re-mask step (ReMDM-LLaDA's scripts)

        def validate(self):
            super().validate()
            self.require("steps", self.steps is None or self.steps > 0, "> 0")
            self.require("remdm_steps", self.remdm_steps is None or self.remdm_steps >= 0, ">= 0")
            self.require("remdm_number", self.remdm_number >= 1, ">= 1")

    greedy_only = True
    needs_bidirectional = "its schedule splits every block over the steps of G / B blocks, and a block-diffusion " \
                          "canvas whose first block holds the prompt tail has one more"

    @classmethod
    def check(cls, decoding):
        G, B, blocks = decoding.gen_length, decoding.block_length, decoding.num_blocks
        steps = decoding.policy.steps or G
        if G % steps or steps % blocks:
            raise ConfigError(f"decoding.steps ({steps}) must divide gen_length ({G}) and be a multiple of the "
                              f"number of blocks ({blocks})")
        if int(quota_schedule(torch.tensor([B]), steps)[0, :steps // blocks].sum()) != B:
            raise ConfigError(f"decoding.steps ({steps}) leaves masks in every block: ReMDM splits a block over "
                              f"all steps, so with {blocks} blocks it needs steps = gen_length ({G})")

    def schedule(self, gen_length: int) -> list[bool]:
        """The block's forwards in order: False an ordinary step, True a re-mask step."""
        B = self.block_length
        ordinary = (self.config.steps or gen_length) // (gen_length // B)
        insert_at = max(min(int(B * 7 / 8), B - 1), 1)
        remasks = ordinary if self.config.remdm_steps is None else self.config.remdm_steps
        kinds = [False] * ordinary
        kinds[insert_at:insert_at] = [True] * remasks  # past the end: appended, as list insertion does
        return kinds

    def steps_per_block(self, decoding):
        return len(self.schedule(decoding.gen_length))

    def max_forwards_per_block(self, decoding):
        return self.steps_per_block(decoding)

    def begin(self, canvas, prompt_length):
        batch, device = canvas.shape[0], canvas.device
        gen_length = canvas.shape[1] - prompt_length
        kinds = self.schedule(gen_length)
        return SimpleNamespace(kinds=kinds, steps=self.config.steps or gen_length,
                               ordinary_index=[kinds[:i].count(False) for i in range(len(kinds))],
                               quota=torch.zeros(batch, kinds.count(False), dtype=torch.long, device=device),
                               commit_conf=torch.zeros(batch, self.block_length, dtype=torch.float64, device=device))

    def step(self, state):
        memory, rows, i = state.memory, state.rows, state.step
        width = state.masked.shape[1]
        if i == 0:
            plan = quota_schedule(state.masked.sum(-1), memory.steps)  # over ALL steps (the reference's quirk)
            memory.quota[rows] = plan[:, :memory.quota.shape[1]]
            memory.commit_conf[rows] = float("inf")  # reset per block; +inf: not committed in this block
        prediction, confidence = greedy_confidence(state.logits, torch.float64, exclude=state.mask_id)
        kinds = memory.kinds
        count = self.config.remdm_number if kinds[i] else memory.quota[rows, memory.ordinary_index[i]]
        commit = top_k(confidence, state.masked, count)
        commit_conf = torch.where(commit, confidence, memory.commit_conf[rows, :width])
        remask = None
        if i + 1 < len(kinds) and kinds[i + 1]:  # the next step re-masks before its forward
            remask = top_k(-commit_conf, commit_conf.isfinite() & state.inside, self.config.remdm_number)
            commit_conf = commit_conf.masked_fill(remask, float("inf"))
        memory.commit_conf[rows, :width] = commit_conf
        return Decision(commit, prediction, remask)
