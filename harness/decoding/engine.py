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
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models.layers import KVCache
from .config import DecodeConfig
from .policy import ConfigError, Policy, StepState


@dataclass
class Trace:
    """Per-step record of every row's current block, padded to block_length (for learned policies).

    One entry per (row, step): the block's confidences and predictions at all positions (decoded ones
    included, in position order), its tokens and which were masked before the step, which it committed, and
    which lie inside the canvas (`valid`; False past an EoTP cut)."""

    row: Tensor
    block: Tensor
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
        position = self.block[:, None] * self.prediction.shape[1] + torch.arange(self.prediction.shape[1])
        live = self.masked & self.valid & (position < length)
        flat = self.row[:, None] * length + position.clamp(max=length - 1)  # index into [rows * length]
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
    steps_per_block: Tensor  # [batch, num_blocks] forwards spent in each block (0: skipped by EoTP)
    tokens_per_step: list[list[int]]  # per row: tokens committed at each of its steps
    wall_time: Tensor  # [batch] seconds from the start until the row had no mask left
    eotp_skipped: Tensor  # [batch] generated positions past the EoTP cut: EOS, no longer fed to the model
    remasked: Tensor | None = None  # [batch] committed tokens a re-masking rule took back
    trace: Trace | None = None
    config: DecodeConfig | None = field(default=None, repr=False)


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or +inf logits: its predictions mean nothing, so the decode stops."""


class Canvas:
    """Prompt + generation region of every row, with each row's current end (EoTP shortens it)."""

    def __init__(self, input_ids: Tensor, attention_mask: Tensor | None, gen_length: int, mask_id: int,
                 eos_id: int):
        batch, self.prompt_length = input_ids.shape
        device = input_ids.device
        self.x = torch.cat([input_ids, input_ids.new_full((batch, gen_length), mask_id)], dim=1)
        self.mask_id, self.eos_id = mask_id, eos_id
        self.positions = torch.arange(self.x.shape[1], device=device)
        self.end = torch.full((batch,), self.x.shape[1], device=device)
        prompt_keys = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None \
            else attention_mask.bool()
        self.keys = torch.cat([prompt_keys, prompt_keys.new_ones((batch, gen_length))], dim=1)
        self.padded = not bool(prompt_keys.all())

    def key_mask(self, rows: Tensor, length: int) -> Tensor | None:
        """Keys to attend to over positions [0, length); None when every key is valid (fast path)."""
        if not self.padded and bool((self.end[rows] >= length).all()):
            return None
        return self.keys[rows, :length]

    def cut(self, rows: Tensor, new_end: Tensor) -> None:
        """Shorten rows to end at `new_end` (exclusive); what lies beyond becomes EOS and is never fed again."""
        self.end[rows] = torch.minimum(self.end[rows], new_end)
        beyond = self.positions >= self.end[:, None]
        self.x[beyond] = self.eos_id
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
    total = input_ids.shape[1] + config.gen_length
    if total > model.max_length:
        raise ConfigError(f"prompt ({input_ids.shape[1]}) + gen_length ({config.gen_length}) = {total} "
                          f"exceeds the model's max length {model.max_length}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ConfigError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                          f"input_ids {tuple(input_ids.shape)}")
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
    eos_conf = torch.full(candidates.shape, float("-inf"), device=logits.device)
    if candidates.any():  # log p(EOS), only where EOS is the prediction
        picked = logits[candidates].float()
        eos_conf[candidates] = picked[:, canvas.eos_id] - picked.logsumexp(-1)
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
    start_time = time.perf_counter()
    device = model.device
    input_ids = input_ids.to(device)
    canvas = Canvas(input_ids, None if attention_mask is None else attention_mask.to(device),
                    config.gen_length, model.mask_token_id, model.eos_token_id)
    if reference is not None:
        reference = reference.to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    batch, P, B, S = input_ids.shape[0], canvas.prompt_length, config.block_length, policy.steps_per_block(config)
    steps_per_block = torch.zeros(batch, config.num_blocks, dtype=torch.long, device=device)
    committed_log: list[Tensor] = []  # [batch] per global step; -1 for rows not fed at that step
    finish_time = torch.full((batch,), float("nan"))
    records: list[dict] = []
    all_rows = torch.arange(batch, device=device)

    memory = policy.begin(canvas.x, P)
    # the reference's tokens over the whole canvas (-1 over the prompt), so a window of any extent can read it
    reference = None if reference is None else torch.cat([torch.full_like(input_ids, -1), reference], 1)
    remasked = torch.zeros(batch, dtype=torch.long, device=device)
    max_forwards = policy.max_forwards_per_block(config)

    for block in range(config.num_blocks):
        s, e = P + block * B, P + (block + 1) * B
        plan = quota_schedule((canvas.x[:, s:e] == canvas.mask_id).sum(-1), S)
        cache, cache_rows = None, None
        step = 0
        # NaN or +inf logits make confidences NaN, and so their sum: kept on the device, read once per block
        confidence_sum = torch.zeros((), device=device)
        while True:
            # a re-masking rule may reopen earlier blocks: the block is done when nothing up to its end is masked
            rows = all_rows[policy.keep_decoding(memory, (canvas.x[:, P:e] == canvas.mask_id).any(-1))]
            if rows.numel() == 0:
                break
            if step >= max_forwards:
                _check_finite(confidence_sum, block)  # NaN confidences stall a threshold policy
                raise RuntimeError(f"strategy {config.strategy!r} did not finish block {block} within "
                                   f"{max_forwards} forwards")

            # One forward (NFE): the whole canvas, or with a cache only the block (dual) / block + suffix
            # (prefix), served the other positions' K/V from the refresh at the block's first step.
            if config.cache == "none":
                lo, hi = 0, int(canvas.end[rows].max())
                logits = policy.forward(model, canvas.x[rows, :hi], canvas.key_mask(rows, hi), memory, rows, s, e)
                hi = logits.shape[1]  # a rule may feed a truncated canvas
            elif step == 0:
                lo, hi = 0, int(canvas.end[rows].max())
                cache, cache_rows = KVCache(), rows
                logits = model(canvas.x[rows, :hi], canvas.key_mask(rows, hi), cache=cache)
            else:
                if rows.numel() != cache_rows.numel():  # rows that finished the block leave the batch
                    cache = cache.select_rows(torch.searchsorted(cache_rows, rows))
                    cache_rows = rows
                lo, hi = s, (min(e, len(cache)) if config.cache == "dual" else len(cache))
                logits = model(canvas.x[rows, lo:hi], canvas.key_mask(rows, len(cache)), start=lo, cache=cache)
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
                records.append(_trace_record(rows, block, step, B, state, commit, inside))
            done = ~(canvas.x[:, P:] == canvas.mask_id).any(-1).cpu() & finish_time.isnan()
            finish_time[done] = time.perf_counter() - start_time
            step += 1
        _check_finite(confidence_sum, block)

    tokens = canvas.x[:, P:]
    per_step = torch.stack(committed_log, 1).tolist() if committed_log else [[] for _ in range(batch)]
    return DecodeOutput(
        tokens=tokens,
        nfe=steps_per_block.sum(1),
        steps_per_block=steps_per_block,
        tokens_per_step=[[c for c in row if c >= 0] for row in per_step],
        wall_time=torch.nan_to_num(finish_time, nan=time.perf_counter() - start_time),
        eotp_skipped=(P + config.gen_length - canvas.end).clamp(min=0),
        remasked=remasked,
        trace=_stack_trace(records) if trace else None,
        config=config,
    )


def _check_finite(confidence_sum: Tensor, block: int) -> None:
    if not confidence_sum.isfinite():
        raise NonFiniteLogits(f"the model produced NaN or inf logits in block {block}; its weights or dtype "
                              f"are broken (float16 overflow?)")


def _trace_record(rows, block, step, B, state: StepState, commit, inside) -> dict:
    def pad(t):  # the current block's columns, zero-padded to B
        t = t[:, state.block_start:state.block_end]
        return torch.nn.functional.pad(t.to(torch.uint8) if t.dtype == torch.bool else t,
                                       (0, B - t.shape[1])).to(t.dtype)
    n = rows.numel()
    return dict(row=rows, block=torch.full((n,), block), step=torch.full((n,), step),
                confidence=pad(state.confidence.float()), prediction=pad(state.prediction), tokens=pad(state.tokens),
                masked=pad(state.masked), committed=pad(commit), valid=pad(inside))


def _stack_trace(records: list[dict]) -> Trace:
    return Trace(**{k: torch.cat([r[k].cpu() for r in records]) for k in Trace.__dataclass_fields__})
