"""Train a small LLaDA on the synthetic tasks with LLaDA's SFT objective.

    python -m harness.train --out runs/tiny --steps 20000 --seed 0

Prompt tokens are never masked; the answer and its EOS padding (to gen_length) are masked with ratio
t ~ U(eps, 1); the loss is cross-entropy on masked positions weighted by 1/t. AdamW with linear warm-up and
cosine decay. `--resume` continues from `<out>/train_state.pt`; the final model is written in the official
LLaDA format to `<out>/model/`.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .decoding import DecodeConfig
from .models import LLaDAConfig, random_llada, save_llada
from .tasks.evaluate import evaluate_task, left_pad
from .tasks.synthetic import DRILLS, TASKS, get_task, held_out, training_stream, vocabulary
from .tasks.tokenizer import build_tokenizer


def make_model(args, tokenizer):
    cfg = LLaDAConfig(d_model=args.d_model, n_heads=args.heads, n_kv_heads=args.heads, n_layers=args.layers,
                      mlp_hidden_size=args.mlp, vocab_size=len(tokenizer), max_sequence_length=args.max_length,
                      rope_theta=10000.0, rms_norm_eps=1e-5, mask_token_id=tokenizer.mask_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = random_llada(cfg, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.data.fill_(1.0)  # norms start as identity
        elif getattr(args, "init_std", None):
            p.data.normal_(0.0, args.init_std, generator=generator)
    model.tokenizer = tokenizer
    return model.train().requires_grad_(True)


def batches(tokenizer, streams, batch_size: int, gen_length: int, rng: random.Random, vary_padding=False,
            mixture=None):
    """Endless (input_ids, key mask) batches whose last gen_length positions are the answer region, drawing
    each problem's task from `mixture` (task names; a name listed twice is drawn twice as often; default:
    every task once). With `vary_padding` each row's answer region ends at a random length between its
    answer + EOS and gen_length: positions past the end are hidden from attention (key mask 0) and from the
    loss, exactly as the engine hides what an EoTP cut drops, so short canvases are in distribution."""
    names = sorted(mixture or streams)
    eos = tokenizer.eos_token_id
    while True:
        problems = [next(streams[rng.choice(names)]) for _ in range(batch_size)]
        ids, key_mask = left_pad(tokenizer, [p.prompt for p in problems])
        answers = tokenizer([p.answer for p in problems], add_special_tokens=False).input_ids
        if max(map(len, answers)) >= gen_length:
            raise ValueError(f"an answer of {max(map(len, answers))} tokens does not fit gen_length {gen_length}")
        gen = torch.tensor([a + [eos] * (gen_length - len(a)) for a in answers])
        ends = [rng.randint(len(a) + 1, gen_length) if vary_padding else gen_length for a in answers]
        region_keys = torch.arange(gen_length)[None, :] < torch.tensor(ends)[:, None]
        yield torch.cat([ids, gen], 1), torch.cat([key_mask, region_keys.long()], 1)


def answer_mask(ids, gen_length: int, generator, eps: float = 1e-3):
    """Mask the answer region (the last gen_length positions) of each row with ratio t ~ U(eps, 1), stratified
    over the batch to lower the loss's variance; prompts are never masked. Returns (masked, t)."""
    b = ids.shape[0]
    t = (torch.arange(b) + torch.rand(b, generator=generator)) / b
    t = eps + (1 - eps) * t[torch.randperm(b, generator=generator)]
    region = torch.zeros_like(ids, dtype=torch.bool)
    region[:, -gen_length:] = True
    return region & (torch.rand(ids.shape, generator=generator) < t[:, None]), t


def sft_loss(model, ids, key_mask, gen_length: int, generator):
    """LLaDA SFT loss on one batch: cross-entropy on masked answer positions, weighted by 1/t."""
    masked, t = answer_mask(ids, gen_length, generator)  # drawn on the CPU: the same masks on every device
    masked &= key_mask.bool()  # positions past a row's end are not part of its canvas
    ids, key_mask, masked, t = (x.to(model.device) for x in (ids, key_mask, masked, t))
    logits = model(ids.masked_fill(masked, model.mask_token_id), key_mask)
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    return (ce / t[:, None].expand_as(ids)[masked]).sum() / (ids.shape[0] * gen_length)


def validate(model, problems: dict, config: DecodeConfig) -> dict:
    model.eval()
    scores = {name: evaluate_task(model, name, probs, config).accuracy for name, probs in problems.items()}
    model.train()
    return scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--min-lr-ratio", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--d-model", type=int, default=160)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp", type=int, default=448)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--init-std", type=float, help="initialise every weight matrix N(0, std^2) "
                        "(default: embeddings N(0, 1), linear layers N(0, 1/fan_in))")
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--block-length", type=int, default=8)
    parser.add_argument("--val-every", type=int, default=1000)
    parser.add_argument("--val-problems", type=int, default=100)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (for long runs)")
    parser.add_argument("--vary-padding", action="store_true",
                        help="end each row's answer region at a random length (EoTP-robust models)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=[*TASKS, *DRILLS],
                        help="training mixture; a task named twice is drawn twice as often; the drills "
                        f"{list(DRILLS)} train lookups that `facts` needs")
    parser.add_argument("--stop-after", type=int, help="end the run after this step (writing the model); the "
                        "learning-rate schedule still spans --steps")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/train_state.pt")
    parser.add_argument("--init", help="start from these weights (a LLaDA folder or 'tiny'), fresh optimizer")
    args = parser.parse_args(argv)
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"--stop-after must be a step >= 1, not {args.stop_after}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tokenizer = build_tokenizer(vocabulary())
    model = make_model(args, tokenizer).to(args.device)
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() == 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    if args.init:
        from .models import load_model
        model.load_state_dict(load_model(args.init).state_dict())
    state_file = args.out / "train_state.pt"
    step, elapsed, history = 0, 0.0, []
    if args.resume and state_file.exists():
        state = torch.load(state_file, weights_only=False, map_location=args.device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
    args.out.mkdir(parents=True, exist_ok=True)

    splits = {name: held_out(get_task(name)) for name in dict.fromkeys(args.tasks)}
    exclude = {name: {p.prompt for ps in s.values() for p in ps} for name, s in splits.items()}
    streams = {name: training_stream(get_task(name), exclude[name], seed=args.seed * 1_000_003 + step)
               for name in splits}
    val = {name: [vars(p) for p in s["validation"][:args.val_problems]] for name, s in splits.items()}
    val_config = DecodeConfig(gen_length=args.gen_length, block_length=args.block_length)
    data = batches(tokenizer, streams, args.batch_size, args.gen_length, random.Random(args.seed + step),
                   args.vary_padding, args.tasks)
    generator = torch.Generator().manual_seed(args.seed + step)

    def save():
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed, "history": history, "args": vars(args)}, state_file.with_suffix(".tmp"))
        state_file.with_suffix(".tmp").replace(state_file)

    end = min(args.steps, args.stop_after or args.steps)
    bar = tqdm(total=end, initial=step, desc="train", dynamic_ncols=True)
    running = None
    while step < end:
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        ids, key_mask = next(data)
        loss = sft_loss(model, ids, key_mask, args.gen_length, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        elapsed += time.perf_counter() - start
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr_at(step):.1e}")
        if step % args.val_every == 0 or step == end:
            scores = validate(model, val, val_config)
            history.append({"step": step, "minutes": elapsed / 60, "loss": running, **scores})
            bar.write(json.dumps(history[-1]))
        if step % args.save_every == 0 or step == end:
            save()
    bar.close()
    model.eval().requires_grad_(False)
    save_llada(model, args.out / "model")
    (args.out / "training.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "train_minutes": elapsed / 60, "history": history},
                                                       indent=2))


if __name__ == "__main__":
    main()
