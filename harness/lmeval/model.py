"""`dllm`: a diffusion LM as an lm-evaluation-harness model, with per-request speed statistics.

lm-eval's `generate_until` contract returns strings only, so the statistics of each request (NFE, tokens
per forward, counted tokens, wall time, padding skipped by EoTP) are kept in `DLLM.stats`, keyed by
(task, doc_id). lm-eval hands the LM nothing of the results it builds, so this module wraps the `evaluate`
that `simple_evaluate` calls: for a DLLM, the statistics of that evaluation are merged into its results and
samples (`attach_speed`), whoever calls it (lm-eval's CLI, `simple_evaluate`, `harness.lmeval.evaluate`).

    lm = DLLM("tiny", strategy="threshold", threshold=0.9, block_length=8)
    results = lm_eval.simple_evaluate(model=lm, tasks=[...], log_samples=True)  # results["speed"], samples' nfe
or by name, once `harness.lmeval` is imported: simple_evaluate(model="dllm", model_args="model=tiny,eotp=True").
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import statistics
import typing
from collections import defaultdict

import lm_eval.evaluator
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from ..decoding import LOOP_SWITCHES, POLICIES, ConfigError, DecodeConfig, generate
from ..decoding.policy import hint_options
from ..decoding.engine import NonFiniteLogits
from ..models import compile_model, compile_stats, load_model
from ..models.loading import model_folder
from ..models.metered import synchronize
from ..timing import paired_ratios, process_seconds

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task sets no max_gen_toks
log = logging.getLogger(__name__)


def cut_at_stop(text: str, until: list[str]) -> str:
    """The text before the first occurrence of any stop string (lm-eval leaves this to the model)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def count_non_eos(ids: list[int], eos_id: int) -> int:
    return sum(t != eos_id for t in ids)


def counted_tokens(tokenizer, text: str, eos_id: int) -> int:
    """Generated tokens counted the Fast-dLLM / Learn2PD way: the stop-truncated answer re-tokenized,
    EOS excluded."""
    return count_non_eos(tokenizer(text, add_special_tokens=False).input_ids, eos_id)


def typed(value, hint):
    """`value` as the type `hint` declares (int, float, bool, str, X | None). lm-eval types model_args by their
    look ("none" -> None, "1" -> 1, "0.9" -> 0.9) or not at all; a value that fits no option is returned as is,
    for the config's own check to name."""
    text = str(value).lower() if value is None or isinstance(value, bool) else str(value)
    for option in sorted(hint_options(hint), key=lambda o: o is not type(None)):  # "none" means None where None is allowed
        if option is type(None) and text.lower() == "none":
            return None
        if option is bool and text.lower() in ("true", "false", "1", "0"):
            return text.lower() in ("true", "1")
        if option in (int, float):
            try:
                return option(text)
            except ValueError:
                continue
        if option is str:
            return text
    return value


def typed_fields(fields: dict) -> dict:
    """Decoding fields as the loop switches and the chosen strategy's knobs declare them; unknown keys are
    left for `DecodeConfig.create` to name."""
    strategy = typed(fields.get("strategy", DecodeConfig.strategy), str)
    hints = {k: hint for k, hint in typing.get_type_hints(DecodeConfig).items() if k in LOOP_SWITCHES}
    if strategy in POLICIES:
        hints |= typing.get_type_hints(POLICIES[strategy].Config)
    return {k: typed(v, hints[k]) if k in hints else v for k, v in fields.items()}


def decode_config(fields: dict) -> tuple[DecodeConfig, int | None]:
    """Validate flat decoding fields (loop switches and the strategy's knobs) now, before any weights load.
    Returns the config and the fixed generation length (None: set per request from its max_gen_toks; the
    config then holds a placeholder G = B)."""
    fields = typed_fields(fields)
    fixed = fields.get("gen_length")
    placeholder = fields.get("block_length", DecodeConfig.block_length)
    return DecodeConfig.create(**{**fields, "gen_length": fixed or placeholder}), fixed


def resolve_device(device: str | None) -> torch.device:
    """The device to load on: CUDA when visible, else the CPU. lm-eval's CLI asks for cuda:0 unless told
    otherwise; without CUDA that falls back to the CPU with a warning, as lm-eval's `hf` model does."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        log.warning(f"device={device}: CUDA is not available, running on the CPU")
        return torch.device("cpu")
    return chosen


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def request_config(config: DecodeConfig, fixed_gen_length: int | None, gen_kwargs: dict,
                   max_length: int | None) -> DecodeConfig:
    """The decoding config of requests with lm-eval's `gen_kwargs`: G fixed, or their max_gen_toks rounded up to
    a multiple of B (checked again: `steps` must suit it). Known before any weights load, as is `max_length`
    (None: unknown), which G must leave room in for a prompt."""
    source = "decoding.gen_length"  # decode_config holds a fixed G already
    if not fixed_gen_length:
        wanted = int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        block, source = config.block_length, f"the task's max_gen_toks {wanted}"
        try:
            config = dataclasses.replace(config, gen_length=block * math.ceil(wanted / block))
        except ConfigError as err:
            raise ConfigError(f"{err} (gen_length from {source})") from None
    if max_length is not None and config.gen_length >= max_length:
        raise ConfigError(f"gen_length {config.gen_length} ({source}) leaves no room for a prompt in the "
                          f"model's max length {max_length}")
    return config


@register_model("dllm")
class DLLM(LM):
    """Any model `load_model` reads (a LLaDA, Dream or LLaDA2 folder, "tiny", an AutoModelForMaskedLM folder) or an already
    loaded one, decoded by the harness engine. Decoding settings are `DecodeConfig` fields, given as a
    `decoding` object or as flat keyword arguments (lm-eval's `model_args`). An explicit `gen_length` is the
    generation length of every request; without one, each request's `max_gen_toks` (lm-eval's default 256)
    rounded up to a multiple of `block_length`."""

    def __init__(self, model="tiny", decoding: DecodeConfig | dict | None = None, *, batch_size=1,
                 chat_template: bool | None = None, raw_prompt_tasks=("humaneval",), warmup: int = 1,
                 mc_num: int = 128, mc_batch_size: int = 32, dtype: str | None = None, device: str | None = None,
                 shift_logits: bool = False, trust_remote_code: bool = False, mask_token_id: int | None = None,
                 eos_token_id: int | None = None, trace: bool = False, compile: str | None = None,
                 max_batch_size=None, **decoding_fields):
        super().__init__()
        if isinstance(decoding, DecodeConfig):
            decoding = decoding.to_dict()
        self.decoding, self.fixed_gen_length = decode_config({**(decoding or {}), **decoding_fields})
        # built once for the whole run, outside any timed region (a learned policy loads its filter here)
        self.policy = self.decoding.build_policy()
        self.reference_policy = None  # the oracle's reference: a plain baseline decode, its policy built once
        if self.policy.needs_reference:
            reference = self.decoding.with_strategy("baseline")
            self.reference_policy = reference.build_policy()
        if str(batch_size).startswith("auto"):
            raise ConfigError("batch_size=auto is not supported by dllm; give an integer")
        self.batch_size = int(batch_size)
        if self.batch_size < 1 or warmup < 0 or mc_num < 1 or mc_batch_size < 1:
            raise ConfigError("batch_size, mc_num and mc_batch_size must be >= 1 and warmup >= 0")
        if isinstance(model, str):
            model_folder(model)  # a missing folder is the first thing to report
            device = resolve_device(device)
            dtype = dtype or ("bfloat16" if device.type == "cuda" else "float32")
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ConfigError(f"dtype={dtype}: not a torch dtype (float32, bfloat16, float16)")
            model = load_model(model, dtype=getattr(torch, dtype), device=device, shift_logits=shift_logits,
                               trust_remote_code=trust_remote_code, mask_token_id=mask_token_id,
                               eos_token_id=eos_token_id, compile=compile or "none")
        elif compile not in (None, "none"):  # an already loaded model: compiled here, before anything is timed
            model = compile_model(model, compile)
        self.model, self.tokenizer = model, model.tokenizer
        self.chat_template = (getattr(self.tokenizer, "chat_template", None) is not None
                              if chat_template is None else bool(chat_template))
        self.raw_prompt_tasks = set([raw_prompt_tasks] if isinstance(raw_prompt_tasks, str) else raw_prompt_tasks)
        self.warmup, self.mc_num, self.mc_batch_size = warmup, mc_num, mc_batch_size
        self.trace = trace  # per-sample re-decodes after first-correct (keeps every step's block in memory)
        self.stats: dict[tuple[str, int], list[dict]] = defaultdict(list)
        self.batch_seconds: dict[str, float] = defaultdict(float)  # per task, for tokens per second
        self.timed = {"wall_seconds": 0.0, "cpu_seconds": 0.0}  # every timed decode, for the trust rule
        self.first_batch = None  # (prompts, config, stop strings) of the first batch, for the paired speedup
        self._warmed_up = False
        self.timed_compile = {"compiled_graphs": 0, "compile_seconds": 0.0}  # graphs compiled by timed decodes

    # ---------------------------------------------------------------- lm-eval interface
    @property
    def device(self):
        return self.model.device

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "dllm").replace("/", "__")

    def prompt(self, context: str, task: str | None) -> str:
        if not self.chat_template or task in self.raw_prompt_tasks:
            return context
        return self.tokenizer.apply_chat_template([{"role": "user", "content": context}], tokenize=False,
                                                  add_generation_prompt=True)

    def config_for(self, gen_kwargs: dict) -> DecodeConfig:
        return request_config(self.decoding, self.fixed_gen_length, gen_kwargs, self.model.max_length)

    def encode(self, prompts: list[list[int]], gen_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids; prompts longer than the model allows keep their last tokens (as lm-eval's
        HF models do)."""
        room = self.model.max_length - gen_length
        rows = [ids[-room:] for ids in prompts]
        width, pad = max(map(len, rows)), self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return ids, mask

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Decode every request; batches share generation settings and are formed by prompt length."""
        groups = defaultdict(list)
        for i, request in enumerate(requests):
            groups[repr(sorted(request.args[1].items()))].append(i)
        outputs: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="dllm generate", disable=disable_tqdm)
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            config = self.config_for(gen_kwargs)
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            texts = [self.prompt(requests[i].args[0], requests[i].task_name) for i in indices]
            prompts = dict(zip(indices, self.tokenizer(texts).input_ids))  # tokenized once, then batched
            order = sorted(indices, key=lambda i: -len(prompts[i]))
            if not self._warmed_up:
                self._warm_up([prompts[i] for i in order[:self.batch_size]], config)
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                self.first_batch = self.first_batch or ([prompts[i] for i in chunk], config, until)
                for i, (text, stats) in zip(chunk, self._decode([prompts[i] for i in chunk], config, until)):
                    outputs[i] = text
                    request = requests[i]
                    self.stats[request.task_name, request.doc_id].append(stats)
                    self.batch_seconds[request.task_name] += stats["batch_seconds"] / len(chunk)
                bar.update(len(chunk))
        bar.close()
        return outputs

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """LLaDA's Monte-Carlo estimate of log p(continuation | context). The greedy flag is not computed
        (LLaDA recommends skipping its check) and is always False."""
        if getattr(self.model, "block_diffusion", False):  # its estimate would need the block-causal mask
            raise NotImplementedError(f"{type(self.model).__name__} decodes by block diffusion; dllm estimates "
                                      f"log-likelihoods for bidirectional models only: use generate_until tasks")
        results = []
        for request in tqdm(requests, desc="dllm loglikelihood", disable=disable_tqdm):
            context, continuation = request.args
            context_ids, target_ids = self._encode_pair(context, continuation)
            results.append((self._mc_loglikelihood(context_ids, target_ids), False))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("dllm does not estimate rolling (perplexity) log-likelihoods; use "
                                  "generate_until, loglikelihood or multiple_choice tasks")

    # ---------------------------------------------------------------- decoding and statistics
    def _warm_up(self, batch: list[list[int]], config: DecodeConfig) -> None:
        """`warmup` untimed decodes of the longest prompt; with a compiled model also of a full first batch,
        since batch 1 and batch > 1 are separate graphs. Graphs compiled later are counted in the protocol."""
        compiled = compile_stats(self.model)["compile"] != "none"
        for _ in range(self.warmup):
            for prompts in [batch[:1]] + ([batch] if compiled and len(batch) > 1 else []):
                list(self._decode(prompts, config, []))
        self._warmed_up = True

    @torch.no_grad()
    def _decode(self, prompts: list[list[int]], config: DecodeConfig, until: list[str], policy=None):
        """Decode one batch with `policy` (default: the run's) and yield each row's text and statistics."""
        policy = policy or self.policy
        ids, mask = self.encode(prompts, config.gen_length)
        reference = None
        if policy.needs_reference:  # the oracle replays a baseline decode (not timed)
            reference = generate(self.model, ids, config.with_strategy("baseline"), attention_mask=mask,
                                 policy=self.reference_policy).tokens
        compiled_before = compile_stats(self.model)
        synchronize(self.device)
        start, cpu_start = process_seconds()
        out = generate(self.model, ids, config, attention_mask=mask, reference=reference, trace=self.trace,
                       policy=policy)
        synchronize(self.device)
        end, cpu_end = process_seconds()
        seconds = end - start
        if self._warmed_up:  # compilation inside a timed decode: reported, never hidden
            for key in self.timed_compile:
                self.timed_compile[key] += compile_stats(self.model)[key] - compiled_before[key]
        self.timed["wall_seconds"] += seconds
        self.timed["cpu_seconds"] += cpu_end - cpu_start
        eos = self.model.eos_token_id
        redecodes = out.trace.redecodes(out.tokens) if self.trace else None
        for row, tokens in enumerate(out.tokens.tolist()):
            end = tokens.index(eos) if eos in tokens else len(tokens)
            text = cut_at_stop(self.tokenizer.decode(tokens[:end], skip_special_tokens=False), until)
            answer = self.tokenizer(text, add_special_tokens=False).input_ids  # re-tokenized once: count + text
            counted, nfe = count_non_eos(answer, eos), int(out.nfe[row])
            latency = float(out.wall_time[row])
            yield self.tokenizer.decode(answer, skip_special_tokens=True), {
                "nfe": nfe, "tokens": counted, "raw_tokens": count_non_eos(tokens, eos),
                "tpf": counted / max(nfe, 1), "seconds": latency, "batch_seconds": seconds,
                "tokens_per_second": counted / latency if latency > 0 else None,
                "eotp_skipped": int(out.eotp_skipped[row]), "remasked": int(out.remasked[row]),
                "gen_length": config.gen_length,
                "steps_per_block": [n for n in out.steps_per_block[row].tolist() if n >= 0],
            } | ({"redecodes": redecodes[row]} if redecodes else {})

    def paired_ratios(self, reference: DecodeConfig, rounds: int) -> list[float]:
        """The paired speedup's rounds: the first batch decoded by the plain `reference` and by this model's
        settings in alternating order, right after the evaluation (whose warm-up warmed the model up)."""
        if self.first_batch is None:
            raise ValueError("no generation request was decoded: there is no batch to time a speedup on")
        prompts, config, until = self.first_batch
        reference = dataclasses.replace(reference, gen_length=config.gen_length)
        reference_policy = reference.build_policy()  # outside the timed decodes

        def throughput(settings: DecodeConfig, policy):
            def decode() -> tuple[int, float]:
                stats = [s for _, s in self._decode(prompts, settings, until, policy)]
                return sum(s["tokens"] for s in stats), stats[0]["batch_seconds"]
            return decode
        return paired_ratios(throughput(reference, reference_policy), throughput(config, self.policy), rounds)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of context and continuation; the context's trailing spaces move to the continuation."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer(context + continuation, add_special_tokens=False).input_ids
        context_ids = self.tokenizer(context, add_special_tokens=False).input_ids
        return context_ids, whole[len(context_ids):]

    @torch.no_grad()
    def _mc_loglikelihood(self, context_ids: list[int], target_ids: list[int]) -> float:
        """-E[loss]: rows mask m_j of the L target positions (stratified around a random k), the prompt
        never; masked cross-entropy is weighted by L / m_j (the masked fraction's inverse)."""
        L, b = len(target_ids), self.mc_batch_size
        seq = torch.tensor(context_ids + target_ids, device=self.device).repeat(b, 1)
        generator = torch.Generator().manual_seed(self.decoding.seed)
        losses = []
        for _ in range(max(1, self.mc_num // b)):
            k = int(torch.randint(1, L + 1, (1,), generator=generator))
            counts = torch.tensor([((round(k + j * L / b) - 1) % L) + 1 for j in range(b)])
            order = torch.rand(b, L, generator=generator).argsort(-1)
            masked = torch.zeros(b, seq.shape[1], dtype=torch.bool)
            masked[:, len(context_ids):] = order < counts[:, None]
            masked = masked.to(self.device)
            noised = seq.masked_fill(masked, self.model.mask_token_id)
            logits = self.model(noised).float()
            ce = torch.nn.functional.cross_entropy(logits[masked], seq[masked], reduction="none")
            weight = (L / counts.to(self.device).float()).repeat_interleave(counts.to(self.device))
            losses.append((ce * weight).sum().item() / b)
        estimate = -statistics.fmean(losses)
        if math.isnan(estimate):  # NaN or +inf logits; -inf (an impossible target) is a real answer
            raise NonFiniteLogits("the model produced NaN or inf logits in a log-likelihood estimate")
        return estimate

    # ---------------------------------------------------------------- results
    def protocol(self) -> dict:
        """How speed was measured, recorded with the results."""
        device = self.device
        return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                else "cpu", "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "batch_size": self.batch_size, "warmup": self.warmup, "repeats": 1, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "decoding": self.decoding.to_dict() |
                {"gen_length": self.fixed_gen_length or "max_gen_toks"},
                # which forward was timed; graphs compiled inside timed decodes (0 once the warm-up covered them)
                "compile": compile_stats(self.model) | {f"timed_{k}": v for k, v in self.timed_compile.items()}}

    def speed(self, task: str) -> dict:
        """Aggregate speed of one task's generate_until requests."""
        stats = [s for (t, _), ss in self.stats.items() if t == task for s in ss]
        if not stats:
            return {}
        tokens, nfe, seconds = (sum(s[k] for s in stats) for k in ("tokens", "nfe", "seconds"))
        latencies = [s["seconds"] for s in stats]
        return {"nfe": nfe / len(stats), "tpf": tokens / max(nfe, 1), "tokens": tokens / len(stats),
                "raw_tokens": sum(s["raw_tokens"] for s in stats) / len(stats),
                "tokens_per_second": tokens / max(self.batch_seconds[task], 1e-12),
                "latency_mean": seconds / len(stats), "latency_p50": percentile(latencies, 50),
                "latency_p90": percentile(latencies, 90),
                "eotp_skipped": sum(s["eotp_skipped"] for s in stats) / len(stats),
                "remasked": sum(s["remasked"] for s in stats) / len(stats), "samples": len(stats),
                "gen_length": statistics.mode(s["gen_length"] for s in stats),
                "decode_seconds": self.batch_seconds[task]}

    def clear_stats(self) -> None:
        """Forget the requests of earlier evaluations (each result carries its own)."""
        self.stats.clear()
        self.batch_seconds.clear()

    def attach_speed(self, results: dict) -> dict:
        """Merge the per-request statistics into lm-eval's sample records and aggregate metrics (done for every
        lm-eval evaluation of a DLLM, see `_evaluate_with_speed`)."""
        for task, samples in (results.get("samples") or {}).items():
            for sample in samples:
                stats = self.stats.get((task, sample["doc_id"]))
                if stats:
                    sample.update({k: v for k, v in stats[0].items() if k != "batch_seconds"})
                    if len(stats) > 1:
                        sample["repeats_speed"] = stats
        results["speed"] = {task: self.speed(task) for task in results.get("results", {})}
        for task, speed in results["speed"].items():
            results["results"][task].update({f"{k},none": v for k, v in speed.items() if k not in ("samples", "decode_seconds")})
        results["speed_protocol"] = self.protocol()
        return results


_lm_eval_evaluate = lm_eval.evaluator.evaluate


@functools.wraps(_lm_eval_evaluate)
def _evaluate_with_speed(*args, **kwargs):
    """lm-eval's `evaluate` (what `simple_evaluate` calls, by keyword) with a DLLM's speed statistics in the
    results and samples it returns; any other LM's results are left as they are."""
    lm = kwargs["lm"] if "lm" in kwargs else args[0]
    model = getattr(lm, "lm", lm)  # lm-eval's CachingLM (--use_cache) wraps the model
    if isinstance(model, DLLM):
        model.clear_stats()
    results = _lm_eval_evaluate(*args, **kwargs)
    if isinstance(model, DLLM) and results is not None:  # None: not the rank that gathers the results
        model.attach_speed(results)
    return results


lm_eval.evaluator.evaluate = _evaluate_with_speed
