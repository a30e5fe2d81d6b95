"""The block-wise decoding loop (LLaDA's semi-autoregressive sampler) shared by every policy.

    canvas = prompt + [MASK] * G;  memory = policy.begin(canvas)
    for each block of B positions, left to right:
        while the canvas has masks up to the block's end:
            logits = model(canvas)                     # one NFE (a cached forward with cache=prefix|dual)
            prediction, confidence = argmax, p(argmax) # over the step's window: the block, or wider
            decision = policy.step(...)                # commit masked positions (and maybe re-mask some)
            canvas[commit] = prediction[commit];  canvas[remask] = MASK
            if eotp: cut the canvas after the predicted end of text

EoTP and the KV cache are switches of this one loop; a policy only decides positions (its hooks in
harness/decoding/policy.py widen the window, keep memory, or change what the model is fed).

Block diffusion (a model with `block_diffusion = True`, LLaDA2) is a mode of the same loop: blocks are counted
from each row's first real token (block(t) = t // B), so the first decoded block may hold the prompt tail and the
canvas runs to the end of the last block; every forward gets the block-causal mask (a query sees the keys of its
own and earlier blocks) and is fed only up to the current block's end. Its prefix cache is therefore exact: a
block's first forward also rewrites the previous block with its final tokens, later ones feed the block only.

Static shapes: a cached decode has one `KVCache(batch, canvas length)`, allocated at its first forward and
written in place; rows that finish a block stay in the forwards' batch until the block ends (their outputs
dropped), so a block's cached steps keep their shapes. Per step the host waits for the device once (which rows
still decode); `harness.syncs.count_host_syncs` counts these waits.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models.layers import KVCache
from .config import DecodeConfig
from .policy import ConfigError, Policy, StepState, check_model_fits


@dataclass
class Trace:
    """Per-step record of every row's current block, padded to block_length (for learned policies).

    One entry per (row, step): the block's confidences and predictions at all positions (decoded ones
    included, in position order), its tokens and which were masked before the step, which it committed, and
    which lie inside the canvas (`valid`; False past an EoTP cut). `start`: the generated position of the block's
    first column (block * B; in block diffusion negative for a block that holds the prompt tail)."""

    row: Tensor
    block: Tensor
    start: Tensor
    step: Tensor
    confidence: Tensor
    prediction: Tensor
    tokens: Tensor
    masked: Tensor
    committed: Tensor
    valid: Tensor

    def __len__(self) -> int:
        return self.row.numel()

    def redecodes(self, tokens: Tensor) -> list[list[int]]:
        """Per row, for each position it committed (in position order): the forwards it stayed masked after
        the model first predicted its final token (Learn2PD's redundant re-decodes; 0 when committed at the
        first correct prediction)."""
        tokens = tokens.cpu()
        rows, length = tokens.shape
        position = self.start[:, None] + torch.arange(self.prediction.shape[1])
        live = self.masked & self.valid & (position < length)  # masked positions are never in the prompt
        flat = self.row[:, None] * length + position.clamp(0, length - 1)  # index into [rows * length]
        step = self.step[:, None].expand_as(position)
        correct = live & (self.prediction == tokens.flatten()[flat])
        commit = live & self.committed
        never = torch.iinfo(torch.long).max
        first = torch.full((rows * length,), never).scatter_reduce(0, flat[correct], step[correct], "amin")
        done = torch.full((rows * length,), -1).scatter(0, flat[commit], step[commit])
        counts = torch.where(first <= done, done - first, 0).view(rows, length)
        committed = (done >= 0).view(rows, length)
        return [counts[r][committed[r]].tolist() for r in range(rows)]


@dataclass
class DecodeOutput:
    tokens: Tensor  # [batch, gen_length] generated region; EOS past an EoTP cut
    nfe: Tensor  # [batch] forward passes each row took part in (cache refreshes included)
    # [batch, num_blocks] forwards spent in each block (0: skipped by EoTP). Block diffusion: num_blocks + 1
    # columns, one per decoded block, the first holding the prompt tail; -1 in the last where a prompt fills whole
    # blocks (its rows decode num_blocks blocks)
    steps_per_block: Tensor
    tokens_per_step: list[list[int]]  # per row: tokens committed at each of its steps
    wall_time: Tensor  # [batch] seconds from the start until the row had no mask left
    eotp_skipped: Tensor  # [batch] generated positions past the EoTP cut: EOS, no longer fed to the model
    remasked: Tensor | None = None  # [batch] committed tokens a re-masking rule took back
    trace: Trace | None = None
    config: DecodeConfig | None = field(default=None, repr=False)


class StepClock:
    """When each step's work was done, without making the host wait for the device at every step: on CUDA an
    event recorded after each step (read once, at the end), on the CPU the host clock (its work is done when
    the call returns), elsewhere the host clock after a device synchronisation."""

    def __init__(self, device: torch.device):
        self.device, self.start, self.marks = device, time.perf_counter(), []
        self.events = device.type == "cuda"
        if self.events:
            self.origin = torch.cuda.Event(enable_timing=True)
            self.origin.record()

    def mark(self) -> None:
        if self.events:
            self.marks.append(torch.cuda.Event(enable_timing=True))
            self.marks[-1].record()
            return
        if self.device.type != "cpu":
            torch.get_device_module(self.device).synchronize()
        self.marks.append(time.perf_counter() - self.start)

    def finish_times(self, step: Tensor) -> Tensor:
        """[batch] seconds from the start to the end of each row's `step` (-1: never finished: until now)."""
        if self.events:
            torch.cuda.synchronize(self.device)
            marks = [self.origin.elapsed_time(event) / 1000 for event in self.marks]
        else:
            marks = self.marks
        now = time.perf_counter() - self.start
        return torch.tensor(marks + [now], dtype=torch.float64)[step.cpu()].float()


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or +inf logits: its predictions mean nothing, so the decode stops."""


class Canvas:
    """Prompt + generation region of every row, with each row's current end (EoTP shortens it). `block_length`:
    block diffusion with blocks of that size (prompt padding a multiple of it), None for a bidirectional model."""

    def __init__(self, input_ids: Tensor, attention_mask: Tensor | None, gen_length: int, mask_id: int,
                 eos_id: int, block_length: int | None = None):
        batch, self.prompt_length = input_ids.shape
        device = input_ids.device
        self.x = torch.cat([input_ids, input_ids.new_full((batch, gen_length), mask_id)], dim=1)
        self.mask_id, self.eos_id = mask_id, eos_id
        self.positions = torch.arange(self.x.shape[1], device=device)
        self.end = torch.full((batch,), self.x.shape[1], device=device)
        self.may_be_cut = False  # host-side: until a cut, every row ends at the canvas's end (no device read)
        prompt_keys = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None \
            else attention_mask.bool()
        self.keys = torch.cat([prompt_keys, prompt_keys.new_ones((batch, gen_length))], dim=1)
        self.padded = not bool(prompt_keys.all())
        self.block_length = block_length
        # block diffusion counts positions from each row's first real token
        self.position_ids = (self.positions - first_real_token(prompt_keys)[:, None]).clamp(min=0)

    def attention(self, rows: Tensor, lo: int, hi: int, keys: int) -> dict:
        """The model's mask (and positions) for a forward of positions [lo, hi) attending to keys [0, keys)."""
        if self.block_length is None:
            return {"attention_mask": self.key_mask(rows, keys)}
        query, key = self.positions[lo:hi, None] // self.block_length, self.positions[:keys] // self.block_length
        visible = (key <= query) & self.keys[rows, None, :keys]
        visible |= self.positions[:keys] == self.positions[lo:hi, None]  # a padding query sees itself: finite
        return {"attention_mask": visible, "position_ids": self.position_ids[rows, lo:hi]}

    def key_mask(self, rows: Tensor, length: int) -> Tensor | None:
        """Keys to attend to over positions [0, length); None when every key is valid (fast path)."""
        if not self.padded and (not self.may_be_cut or bool((self.end[rows] >= length).all())):
            return None
        return self.keys[rows, :length]

    def end_max(self, rows: Tensor) -> int:
        """The furthest end among `rows` (a device read only once a row may have been cut)."""
        return int(self.end[rows].max()) if self.may_be_cut else self.x.shape[1]

    def cut(self, rows: Tensor, new_end: Tensor) -> None:
        """Shorten rows to end at `new_end` (exclusive); what lies beyond becomes EOS and is never fed again."""
        self.may_be_cut = True
        self.end[rows] = torch.minimum(self.end[rows], new_end)
        beyond = self.positions >= self.end[:, None]
        self.x.masked_fill_(beyond, self.eos_id)
        self.keys &= ~beyond


def check_inputs(model, input_ids: Tensor, config: DecodeConfig, attention_mask, reference,
                 policy: Policy | None) -> Policy:
    """Every error a decode can hit, raised in one line before the first forward. Returns the policy (built
    here when none is given)."""
    if input_ids.dim() != 2:
        raise ConfigError(f"input_ids must be [batch, prompt_length], got shape {tuple(input_ids.shape)}")
    if input_ids.dtype != torch.long:
        raise ConfigError(f"input_ids must be int64 token ids, got {input_ids.dtype}")
    if input_ids.shape[0] == 0:
        raise ConfigError("input_ids is an empty batch (no prompts to decode)")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ConfigError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                          f"input_ids {tuple(input_ids.shape)}")
    total = input_ids.shape[1] + config.gen_length
    lengths = f"prompt ({input_ids.shape[1]}) + gen_length ({config.gen_length})"
    check_model_fits(model, config)
    if getattr(model, "block_diffusion", False):
        longest = input_ids.shape[1] - (0 if attention_mask is None else int(first_real_token(attention_mask).min()))
        total = -(-(longest + config.gen_length) // config.block_length) * config.block_length
        lengths = f"prompt ({longest}) + gen_length ({config.gen_length}) up to whole blocks of {config.block_length}"
    if total > model.max_length:
        raise ConfigError(f"{lengths} = {total} exceeds the model's max length {model.max_length}")
    in_prompt = input_ids == model.mask_token_id
    if attention_mask is not None:
        in_prompt &= attention_mask.bool()
    if in_prompt.any():  # the engine decodes every mask it finds; EoTP could even cut inside the prompt
        row, position = in_prompt.nonzero()[0].tolist()
        raise ConfigError(f"prompt {row} holds the mask token ({model.mask_token_id}) at position {position}")
    if config.cache != "none" and not getattr(model, "supports_cache", False):
        raise ConfigError(f"{type(model).__name__} has no KV cache; use cache='none'")
    if policy is None:
        policy = config.build_policy()
    elif not policy.fits(config):
        raise ConfigError(f"policy {policy.name!r} {policy.config} (block_length {policy.block_length}) was built "
                          f"for other settings than {config.strategy!r} {config.policy} "
                          f"(block_length {config.block_length})")
    if policy.needs_reference:
        if reference is None:
            raise ConfigError(f"strategy {config.strategy!r} needs reference= (a baseline decode's tokens)")
        if reference.shape != (input_ids.shape[0], config.gen_length):
            raise ConfigError(f"reference has shape {tuple(reference.shape)}, expected "
                              f"{(input_ids.shape[0], config.gen_length)}")
    return policy


def first_real_token(attention_mask: Tensor) -> Tensor:
    """[batch] position of each row's first real token (the left padding's length)."""
    return attention_mask.bool().int().argmax(-1)


def quota_schedule(masks: Tensor, steps: int) -> Tensor:
    """LLaDA's uniform schedule: [rows, steps] tokens per step, the remainder spread over the first steps."""
    base, extra = masks // steps, masks % steps
    return base[:, None] + (torch.arange(steps, device=masks.device) < extra[:, None]).long()


def predict(block_logits: Tensor, config: DecodeConfig, generator) -> tuple[Tensor, Tensor]:
    """Per position: the prediction (argmax, or a Gumbel-max sample at temperature > 0) and the softmax
    probability of that prediction under the un-noised logits."""
    probs = block_logits.float().softmax(-1)
    if config.temperature > 0:
        uniform = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=torch.float64)
        prediction = (block_logits.double() - config.temperature * (-uniform.log()).log()).argmax(-1)
        return prediction, probs.gather(-1, prediction[..., None]).squeeze(-1)
    confidence, prediction = probs.max(-1)
    return prediction, confidence


def eotp_end(canvas: Canvas, rows: Tensor, logits: Tensor, lo: int, committed_eos: Tensor, s: int) -> Tensor:
    """Learn2PD's End-of-Text Prediction: the new canvas end of each row.

    If this step committed an EOS, the canvas ends right after the first one; otherwise, if a still-masked
    position (among those this forward produced logits for) predicts EOS, it ends after the most confident."""
    x = canvas.x[rows, lo:lo + logits.shape[1]]
    candidates = (x == canvas.mask_id) & (logits.argmax(-1) == canvas.eos_id)
    logits = logits.float()  # log p(EOS), read only where EOS is the prediction (computed everywhere: no sync)
    eos_conf = (logits[..., canvas.eos_id] - logits.logsumexp(-1)).masked_fill(~candidates, float("-inf"))
    predicted_end = lo + eos_conf.argmax(-1) + 1
    first_committed = s + committed_eos.int().argmax(-1) + 1
    no_cut = canvas.end[rows]
    return torch.where(committed_eos.any(-1), first_committed,
                       torch.where(candidates.any(-1), predicted_end, no_cut))


@torch.no_grad()
def generate(model, input_ids: Tensor, config: DecodeConfig, *, attention_mask: Tensor | None = None,
             reference: Tensor | None = None, trace: bool = False, policy: Policy | None = None) -> DecodeOutput:
    """Decode `gen_length` tokens after each (left-padded) prompt with `config.strategy`. `policy`: one built
    for `config` (once per run, e.g. a learned filter loaded once); built here when not given."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
    policy = check_inputs(model, input_ids, config, attention_mask, reference, policy)
    blockwise = getattr(model, "block_diffusion", False)
    if blockwise and attention_mask is not None:
        padding = first_real_token(attention_mask)
        groups = ((input_ids.shape[1] - padding) % config.block_length).unique()
        if len(groups) > 1:  # rows whose blocks start at different canvas positions cannot share a forward
            return _by_residue(model, input_ids, config, attention_mask, reference, trace, policy, padding)
        # drop the padding every row has: what is left is a multiple of B, so blocks are t // B for every row
        input_ids, attention_mask = input_ids[:, int(padding.min()):], attention_mask[:, int(padding.min()):]
    device = model.device
    clock = StepClock(device)
    input_ids = input_ids.to(device)
    batch, P, G, B = input_ids.shape[0], input_ids.shape[1], config.gen_length, config.block_length
    if blockwise:  # blocks from position 0: the first decoded one may hold the prompt tail; fill the last one
        block_starts = range(P // B * B, P + G, B)
        num_blocks, canvas_length = config.num_blocks + 1, block_starts[-1] + B
    else:
        block_starts = range(P, P + G, B)
        num_blocks, canvas_length = config.num_blocks, P + G
    canvas = Canvas(input_ids, None if attention_mask is None else attention_mask.to(device),
                    canvas_length - P, model.mask_token_id, model.eos_token_id, B if blockwise else None)
    if reference is not None:
        reference = reference.to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    S = policy.steps_per_block(config)
    steps_per_block = torch.zeros(batch, num_blocks, dtype=torch.long, device=device)
    committed_log: list[Tensor] = []  # [batch] per global step; -1 for rows not fed at that step
    finish_step = torch.full((batch,), -1, dtype=torch.long, device=device)  # global step a row's last mask went
    records: list[dict] = []
    all_rows = torch.arange(batch, device=device)

    memory = policy.begin(canvas.x, P)
    # the reference's tokens over the whole canvas (-1 elsewhere), so a window of any extent can read it
    reference = None if reference is None else torch.nn.functional.pad(reference, (P, canvas_length - P - G), value=-1)
    remasked = torch.zeros(batch, dtype=torch.long, device=device)
    max_forwards, forward_limit = policy.max_forwards_per_block(config), policy.block_forward_limit(config)
    abandoned = torch.zeros_like(canvas.x, dtype=torch.bool)  # masks a block left at its forward limit
    # one KV cache per decode, preallocated for the whole canvas (a refresh from position 0 refills it)
    cache = None if config.cache == "none" else KVCache(batch, canvas_length)
    fed, resume = all_rows, 0

    for block, s in enumerate(block_starts):
        e = s + B
        horizon = e if blockwise else canvas_length
        plan = quota_schedule((canvas.x[:, s:e] == canvas.mask_id).sum(-1), S)
        step = 0
        # NaN or +inf logits make confidences NaN, and so their sum: kept on the device, read once per block
        confidence_sum = torch.zeros((), device=device)
        while True:
            # a re-masking rule may reopen earlier blocks: the block is done when nothing up to its end is masked
            # (block diffusion reopens nothing: the block's own masks)
            open_masks = (canvas.x == canvas.mask_id) & ~abandoned
            rows = all_rows[policy.keep_decoding(memory, open_masks[:, s if blockwise else P:e].any(-1))]
            if rows.numel() == 0:
                break
            if step == forward_limit:
                abandoned[:, s:e] = open_masks[:, s:e]
                break
            if step >= max_forwards:
                _check_finite(confidence_sum, block)  # NaN confidences stall a threshold policy
                raise RuntimeError(f"strategy {config.strategy!r} did not finish block {block} within "
                                   f"{max_forwards} forwards")

            # One forward (NFE): the whole canvas, or with a cache only the block (dual) / block + suffix
            # (prefix), served the other positions' K/V from the refresh at the block's first step. Block
            # diffusion feeds nothing past the block's end.
            # Rows that finish the block keep being fed (`fed`: the rows the block started with; with a cache, the
            # rows of its last fill, i.e. in block diffusion of its first) and their outputs are dropped: every
            # forward of a block has the same batch and the cache is never copied, for the compute of finished
            # rows. A rule's own forward (uncached, bidirectional) gets the rows still decoding.
            if step == 0 and (cache is None or resume == 0):
                fed = rows
            if cache is None and not blockwise:
                lo, hi = 0, min(canvas.end_max(rows), horizon)
                logits = policy.forward(model, canvas.x[rows, :hi], canvas.key_mask(rows, hi), memory, rows, s, e)
                hi = logits.shape[1]  # a rule may feed a truncated canvas
                fed = rows
            else:
                if cache is None:  # block diffusion
                    lo, hi = 0, min(canvas.end_max(rows), horizon)
                    keys = hi
                elif step == 0:  # refresh: the whole canvas (a fill), or (block diffusion) the previous block and this
                    lo, hi = resume, min(canvas.end_max(rows), horizon)
                    keys = hi if lo == 0 else max(len(cache), hi)
                else:
                    lo, hi = s, (min(e, len(cache)) if config.cache == "dual" else len(cache))
                    keys = max(len(cache), hi)
                logits = model(canvas.x[fed, lo:hi], **canvas.attention(fed, lo, hi, keys), start=lo, cache=cache)
            if fed.numel() != rows.numel():  # rows is a subset of fed
                logits = logits[torch.searchsorted(fed, rows)]
            steps_per_block[rows, block] += 1
            w_lo, w_hi = policy.window(memory, s, e, hi)
            w_hi = min(w_hi, hi)
            if w_lo < lo:
                raise RuntimeError(f"strategy {config.strategy!r} reads position {w_lo}, which the "
                                   f"cache={config.cache!r} forward did not compute")
            window_logits = logits[:, w_lo - lo:w_hi - lo]
            current = canvas.x[rows, w_lo:w_hi]
            masked = current == canvas.mask_id
            inside = canvas.positions[w_lo:w_hi] < canvas.end[rows, None]  # False past this row's cut
            prediction, confidence = predict(window_logits, config, generator)
            confidence_sum.add_(confidence.sum())  # probabilities: finite unless the logits were not
            confidence = confidence.masked_fill(~inside, 0.0)  # a cut block reads as zero-padded
            state = StepState(
                logits=window_logits, prediction=prediction, confidence=confidence, masked=masked,
                quota=plan[rows, step] if step < S else torch.ones_like(rows), step=step, tokens=current,
                eos_id=canvas.eos_id, reference=None if reference is None else reference[rows, w_lo:w_hi],
                generator=generator, rows=rows, memory=memory, start=w_lo, block_start=s - w_lo,
                block_end=min(e, w_hi) - w_lo, prompt_length=P, mask_id=canvas.mask_id, inside=inside)
            decision = policy.step(state)
            commit = decision.commit & masked
            written = torch.where(commit, decision.tokens, current)
            if decision.remask is not None:
                remask = decision.remask & inside & state.generated & (written != canvas.mask_id)
                written = written.masked_fill(remask, canvas.mask_id)
                remasked[rows] += remask.sum(-1)
            canvas.x[rows, w_lo:w_hi] = written
            if decision.end is not None:
                canvas.cut(rows, decision.end)

            if config.eotp:
                committed_eos = commit & (canvas.x[rows, w_lo:w_hi] == canvas.eos_id)
                canvas.cut(rows, eotp_end(canvas, rows, logits, lo, committed_eos, w_lo))

            counts = torch.full((batch,), -1, dtype=torch.long, device=device)
            counts[rows] = commit.sum(-1)
            committed_log.append(counts)
            if trace:
                records.append(_trace_record(rows, block, s - P, step, B, state, commit, inside))
            done = ~(canvas.x[:, P:] == canvas.mask_id).any(-1) & (finish_step < 0)
            finish_step.masked_fill_(done, len(committed_log) - 1)
            clock.mark()
            step += 1
        _check_finite(confidence_sum, block)
        # block diffusion: the cache is exact before this block, whose final K/V the next refresh writes
        resume = s if blockwise and step > 0 else 0

    steps_per_block[:, len(block_starts):] = -1  # block diffusion: the block a whole-block prompt never has
    tokens = canvas.x[:, P:P + G]
    per_step = torch.stack(committed_log, 1).tolist() if committed_log else [[] for _ in range(batch)]
    return DecodeOutput(
        tokens=tokens,
        nfe=steps_per_block.clamp(min=0).sum(1),
        steps_per_block=steps_per_block,
        tokens_per_step=[[c for c in row if c >= 0] for row in per_step],
        wall_time=clock.finish_times(finish_step),
        eotp_skipped=(P + G - canvas.end).clamp(min=0),
        remasked=remasked,
        trace=_stack_trace(records) if trace else None,
        config=config,
    )


def _by_residue(model, input_ids: Tensor, config: DecodeConfig, attention_mask: Tensor, reference: Tensor | None,
                trace: bool, policy: Policy, padding: Tensor) -> DecodeOutput:
    """Block diffusion over rows whose real prompt lengths differ mod B: their blocks start at different canvas
    positions, so each residue is decoded as its own sub-batch (one after the other) and the outputs are merged
    in row order; a row's wall time counts from the first sub-batch's start."""
    start_time = time.perf_counter()
    residue = (input_ids.shape[1] - padding) % config.block_length
    parts = []
    for value in residue.unique().tolist():
        rows = (residue == value).nonzero().squeeze(-1).cpu()
        offset = time.perf_counter() - start_time
        out = generate(model, input_ids[rows], config, attention_mask=attention_mask[rows], trace=trace,
                       reference=None if reference is None else reference[rows], policy=policy)
        out.wall_time += offset
        if out.trace is not None:
            out.trace.row = rows[out.trace.row]
        parts.append((rows.tolist(), out))
    order = torch.tensor([row for rows, _ in parts for row in rows]).argsort()

    def merged(name):  # the parts' rows, concatenated, back in the batch's order
        values = [getattr(out, name) for _, out in parts]
        if isinstance(values[0], list):
            flat = [row for value in values for row in value]
            return [flat[i] for i in order.tolist()]
        return torch.cat(values)[order.to(values[0].device)]
    return DecodeOutput(**{name: merged(name) for name in ("tokens", "nfe", "steps_per_block", "tokens_per_step",
                                                           "wall_time", "eotp_skipped", "remasked")},
                        trace=_stack_trace([vars(out.trace) for _, out in parts]) if trace else None, config=config)


def _check_finite(confidence_sum: Tensor, block: int) -> None:
    if not confidence_sum.isfinite():
        raise NonFiniteLogits(f"the model produced NaN or inf logits in block {block}; its weights or dtype "
                              f"are broken (float16 overflow?)")


def _trace_record(rows, block, start, step, B, state: StepState, commit, inside) -> dict:
    def pad(t):  # the current block's columns, zero-padded to B
        t = t[:, state.block_start:state.block_end]
        return torch.nn.functional.pad(t.to(torch.uint8) if t.dtype == torch.bool else t,
                                       (0, B - t.shape[1])).to(t.dtype)
    n = rows.numel()
    return dict(row=rows, block=torch.full((n,), block), start=torch.full((n,), start), step=torch.full((n,), step),
                confidence=pad(state.confidence.float()), prediction=pad(state.prediction), tokens=pad(state.tokens),
                masked=pad(state.masked), committed=pad(commit), valid=pad(inside))


def _stack_trace(records: list[dict]) -> Trace:
    return Trace(**{k: torch.cat([r[k].cpu() for r in records]) for k in Trace.__dataclass_fields__})
