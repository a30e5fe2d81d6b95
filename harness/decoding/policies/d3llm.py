from dataclasses import dataclass, field

import torch

from ..policy import Decision, Policy, PolicyConfig, register_policy


@dataclass
class Blocks:
    """Per row: how many generation blocks exist so far and which are activated (d3LLM's `is_complete`)."""

    created: torch.Tensor  # [batch]
    activated: torch.Tensor  # [batch, G / B] bool
    length: int  # canvas length: an `end` that cuts nothing
    prompt_length: int


@register_policy("d3llm")
class D3LLM(Policy):
    """d3LLM's entropy multi-block decoding (`generate_multi_block`, no cache; hao-ai-lab/d3LLM @ e5bfcac).
    Blocks are the loop's blocks (d3LLM's block_size is block_length). Before each forward: activate a block
    once its predecessor's progress (1 - masks / B; the prompt counts as done) reaches
    decoded_token_threshold; create the next block once the last one's progress reaches block_add_threshold
    (or it has no mask); the active window ends with the last block that is activated or still masked. After
    the forward: among the window's masked positions commit the lowest-entropy one (float64 softmax,
    -sum p log(p + 1e-12)) and every one with entropy <= threshold; if the first activated block with masks
    got nothing, also its lowest-entropy position. Tokens are the argmax. early_stop: once an EOS is
    committed, everything after the first one becomes EOS (the row may still fill its masks before it);
    as in the reference, those EOS stay in the forward's input (with the EoTP switch on, its cut stops
    feeding them instead).

    Quirks kept: the early stop runs at the start of the next iteration, so when the step that commits the
    first EOS also fills the last mask nothing is cut (the tokens after that EOS stay); the always-commit is
    global over the window, so a merely created block can take it before the activated one (which then takes
    its own too); progress counts masks left, so a block past an EOS counts as done. NFE = forwards: the
    reference's returned nfe counts one more when its early-stop exit fires (that iteration runs no forward).
    The reference decodes one row; here rows decode independently, each as it would alone."""

    needs_bidirectional = "it decodes several blocks at once"
    caches = ("none",)
    no_cache_because = "d3LLM decodes several blocks at once, past the block a cache refreshes on (its " \
                       "reference runs without one)"

    @dataclass(frozen=True)
    class Config(PolicyConfig):
        threshold: float = field(default=0.5, metadata={"symbol": "τ_H"})  # commit entropy <= τ_H (nats; 0.5)
        # open the next block (0.1)
        block_add_threshold: float = field(default=0.1, metadata={"symbol": "add", "secondary": True})
        # activate it (0.95)
        decoded_token_threshold: float = field(default=0.95, metadata={"symbol": "act", "secondary": True})
        early_stop: bool = True  # everything after the first committed EOS becomes EOS (d3LLM's chat default)

        def validate(self):
            super().validate()
            self.require("threshold", self.threshold >= 0, ">= 0")
            for knob in ("block_add_threshold", "decoded_token_threshold"):
                self.require(knob, 0 <= getattr(self, knob) <= 1, "in [0, 1]")

    def __init__(self, decoding):
        super().__init__(decoding)
        self.eotp = decoding.eotp
        # d3LLM keeps feeding the EOS it wrote after the first EOS; EoTP's cut stops feeding (its meaning)
        self.feeds_eos_tail = self.config.early_stop and not decoding.eotp

    def fits(self, decoding):
        return super().fits(decoding) and decoding.eotp == self.eotp

    def begin(self, canvas, prompt_length):
        batch, blocks = canvas.shape[0], (canvas.shape[1] - prompt_length) // self.block_length
        activated = torch.zeros(batch, blocks, dtype=torch.bool, device=canvas.device)
        activated[:, 0] = 1.0 >= self.config.decoded_token_threshold  # block 1 follows the finished prompt
        return Blocks(created=canvas.new_ones(batch), activated=activated, length=canvas.shape[1],
                      prompt_length=prompt_length)

    def forward(self, model, input_ids, key_mask, memory, rows, block_start, block_end):
        if not self.feeds_eos_tail:
            return model(input_ids, key_mask)
        fed = input_ids.shape[1]  # the engine stops at the rows' furthest end: extend with their EOS tails
        ids = torch.nn.functional.pad(input_ids, (0, memory.length - fed), value=model.eos_token_id)
        if key_mask is not None:  # keep the prompt's padding; every generated position is a key
            key_mask = torch.nn.functional.pad(key_mask[:, :memory.prompt_length],
                                               (0, memory.length - memory.prompt_length), value=True)
        return model(ids, key_mask)[:, :fed]

    def window(self, memory, block_start, block_end, canvas_end):
        return block_start, canvas_end  # any later block may be open

    def max_forwards_per_block(self, decoding):
        return decoding.gen_length + 1  # every forward commits at least one position

    def open_blocks(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        """Activate and create blocks (in memory) as d3LLM does before a forward. Returns the [n, W] window
        columns whose masks are candidates and [n] the first activated block with masks (-1: none)."""
        memory, knobs, rows, B = state.memory, self.config, state.rows, self.block_length
        n, width = state.masked.shape
        total = memory.activated.shape[1]
        first = (state.start - state.prompt_length) // B  # the loop's block: every earlier one is done
        masks = state.masked.new_zeros(n, total * B)
        masks[:, first * B:first * B + width] = state.masked
        masks = masks.view(n, total, B).sum(-1)
        progress = 1 - masks / B
        before = torch.nn.functional.pad(progress[:, :-1], (1, 0), value=1.0)  # the prompt counts as done
        index = torch.arange(total, device=masks.device)
        created = memory.created[rows]
        activated = memory.activated[rows] | ((index < created[:, None]) & (before >= knobs.decoded_token_threshold))
        last = (created - 1)[:, None]
        last_progress, last_masks = progress.gather(-1, last).squeeze(-1), masks.gather(-1, last).squeeze(-1)
        add = (created < total) & ((last_progress >= knobs.block_add_threshold) | (last_masks == 0))
        ready = last_progress >= knobs.decoded_token_threshold
        activated |= (index == created[:, None]) & add[:, None] & ready[:, None]
        created = created + add
        memory.created[rows], memory.activated[rows] = created, activated
        active = (index < created[:, None]) & (activated | (masks > 0))
        window_end = (active * (index + 1)).amax(-1) * B + state.prompt_length  # canvas position
        columns = state.start + torch.arange(width, device=masks.device)
        starving = activated & (masks > 0)
        return columns < window_end[:, None], torch.where(starving.any(-1), starving.int().argmax(-1), -1)

    def step(self, state):
        knobs, B = self.config, self.block_length
        open_columns, first_open = self.open_blocks(state)
        candidate = state.masked & open_columns
        p = state.logits.double().softmax(-1)
        entropy = -(p * torch.log(p + 1e-12)).sum(-1)
        entropy = entropy.masked_fill(~candidate, float("inf"))
        lowest = torch.nn.functional.one_hot(entropy.argmin(-1), entropy.shape[-1]).bool()
        commit = candidate & (lowest | (entropy <= knobs.threshold))
        # the first activated block with masks takes its lowest-entropy position if it got nothing
        block_of = (state.start - state.prompt_length + torch.arange(entropy.shape[-1], device=entropy.device)) // B
        in_first = block_of == first_open[:, None]
        starved = ~(commit & in_first).any(-1) & (first_open >= 0)
        forced = torch.nn.functional.one_hot(entropy.masked_fill(~in_first, float("inf")).argmin(-1),
                                             entropy.shape[-1]).bool() & starved[:, None] & candidate
        commit |= forced
        tokens = torch.where(forced, state.logits.argmax(-1), state.prediction)  # the reference re-takes the argmax
        if not knobs.early_stop:
            return Decision(commit=commit, tokens=tokens)
        eos = torch.where(commit, tokens, state.tokens) == state.eos_id
        stop = eos.any(-1) & (state.masked & ~commit).any(-1)  # the reference stops at its next iteration's start
        end = torch.where(stop, state.start + eos.int().argmax(-1) + 1, state.memory.length)
        state.memory.created[state.rows[stop]] = state.memory.activated.shape[1]  # no block is opened after it
        return Decision(commit=commit, tokens=tokens, end=end)
