"""Dream's samplers (maskgit_plus, topk_margin, entropy) and Fast-dLLM's Dream variants (fastdllm_dream, block-wise;
fastdllm_dream_canvas, uncached and canvas-wide) against small re-implementations of the reference loops written
here from shared/reference/dream.md §3-4, on the golden LLaDA fixture (the rules do not depend on the model; the
harness's models apply Dream's logit shift inside their forward, so these loops read logits as they come):
tokens, NFE and per-step counts."""
import pytest
import torch

from harness.decoding import POLICIES, ConfigError, DecodeConfig, StepState, generate, method_of
from harness.models.metered import Metered

from .conftest import assert_batch_decodes_like_its_rows

G = 32
DREAM = ["maskgit_plus", "topk_margin", "entropy"]


def cfg(**kw):
    return DecodeConfig.create(**{"gen_length": G, "block_length": G, **kw})


@pytest.fixture
def prompt():
    return torch.randint(0, 250, (1, 10), generator=torch.Generator().manual_seed(1))


class MaskProne(Metered):
    """The model, predicting the mask token at canvas position `position` whenever it computes it."""

    def __init__(self, model, position):
        super().__init__(model)
        self.position = position

    def forward(self, input_ids, attention_mask=None, **kw):
        logits = super().forward(input_ids, attention_mask, **kw)
        column = self.position - kw.get("start", 0)
        if 0 <= column < logits.shape[1]:
            logits[:, column, self.inner.mask_token_id] += 100.0
        return logits


def confidences(probs, alg):
    confidence, x0 = probs.max(-1)
    if alg == "topk_margin":
        top = probs.sort(-1, descending=True).values
        confidence = top[:, 0] - top[:, 1]
    elif alg in ("entropy", "fastdllm_entropy"):
        confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
    return confidence, x0


def commit_top(x, where, confidence, x0, n):
    """The reference's transfer: the n most confident positions of `where` (a bool mask over x) take x0."""
    full = torch.full(x.shape, float("-inf"))
    full[where] = confidence
    if n > 0:
        index = full.topk(n).indices[0]
        proposal = torch.full_like(x, -1)
        proposal[where] = x0
        x[0, index] = proposal[0, index]


def dream_reference(model, prompt, steps, alg, eps=1e-3):
    """diffusion_generate (batch 1, no padding): returns (generated tokens, NFE, per-step counts)."""
    mask, P = model.mask_token_id, prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, G), mask)], 1)
    timesteps = torch.linspace(1, eps, steps + 1)
    counts = []
    for i in range(steps):
        mask_index = x == mask
        logits = model(x)
        confidence, x0 = confidences(logits[mask_index].softmax(-1), alg)
        num_mask = mask_index.sum() / 1
        n = int(num_mask * (1 - timesteps[i + 1] / timesteps[i])) if i < steps - 1 else int(num_mask)
        commit_top(x, mask_index, confidence, x0, n)
        counts.append(n)
    return x[:, P:], steps, counts


def fastdllm_reference(model, prompt, B, rule, threshold=0.9, steps=None, eps=1e-3):
    """generation_utils_block's per-block loop on full forwards (the caches only change what the model sees)."""
    mask, P = model.mask_token_id, prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, G), mask)], 1)
    per_block = (steps or G) // (G // B)
    timesteps = torch.linspace(1, eps, per_block + 1)
    nfe, counts = 0, []
    for start in range(P, P + G, B):
        block = slice(start, start + B)
        x[:, start] = model(x)[:, start].softmax(-1).max(-1).indices  # the refresh commits the first position
        nfe, i = nfe + 1, 1
        counts.append(1)
        while True:
            logits, nfe = model(x), nfe + 1
            mask_index = torch.zeros_like(x, dtype=torch.bool)
            mask_index[:, block] = x[:, block] == mask
            if rule == "threshold":
                confidence, x0 = confidences(logits[mask_index].softmax(-1), rule)
                full = torch.full(x.shape, float("-inf"))
                full[mask_index] = confidence
                selected, index = full.topk(int(mask_index.sum()))
                keep = [index[0, 0]] if index.numel() else []
                keep += [index[0, k] for k in range(1, index.shape[1]) if not selected[0, k] < threshold]
                proposal = torch.full_like(x, -1)
                proposal[mask_index] = x0
                for k in keep:
                    x[0, k] = proposal[0, k]
                counts.append(len(keep))
            else:
                if i == per_block:
                    counts.append(0)
                    break
                confidence, x0 = confidences(logits[mask_index].softmax(-1), "fastdllm_entropy")
                num_mask = mask_index.sum() / 1
                t, s = timesteps[i], timesteps[i + 1]
                n = int(num_mask * (1 - s / t)) if i < per_block - 1 else int(num_mask)
                commit_top(x, mask_index, confidence, x0, n)
                counts.append(n)
                i += 1
            if not (x[:, block] == mask).any():
                break
    return x[:, P:], nfe, counts


def canvas_reference(model, prompt, threshold, steps):
    """generation_utils' alg="confidence_threshold" (uncached, canvas-wide): returns (tokens, NFE, counts)."""
    mask, P = model.mask_token_id, prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, G), mask)], 1)
    quota, carried, i, counts = G // steps, 0, 0, []
    while i < steps:
        mask_index = x == mask
        confidence, x0 = model(x)[mask_index].softmax(-1).max(-1)
        full = torch.full(x.shape, float("-inf"))
        full[mask_index] = confidence
        selected, index = full.topk(quota + carried)
        carried, keep = 0, [index[0, 0]]
        for k in range(1, index.shape[1]):
            if selected[0, k] < threshold:
                carried += 1
                if not i < steps - 1:  # checked per rejection: the first one extends, and i < steps - 1 again
                    quota, steps = 0, steps + 1
            else:
                keep.append(index[0, k])
        proposal = torch.full_like(x, -1)
        proposal[mask_index] = x0
        for k in keep:
            x[0, k] = proposal[0, k]
        counts.append(len(keep))
        i += 1
    return x[:, P:], i, counts


# --- Dream's samplers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [G, 8])
@pytest.mark.parametrize("alg", DREAM)
def test_dream_samplers_match_the_reference_loop(tiny, prompt, alg, steps):
    tokens, nfe, counts = dream_reference(tiny, prompt, steps, alg)
    model = Metered(tiny)
    out = generate(model, prompt, cfg(strategy=alg, steps=steps))
    assert torch.equal(out.tokens, tokens) and out.nfe.tolist() == [nfe] == [model.calls]
    assert out.tokens_per_step == [counts] and sum(counts) == G
    if steps == G:  # the uneven schedule: nothing at the first step, the rest at the last
        assert counts[0] == 0 and counts[-1] > 1


def test_a_predicted_mask_stays_masked_and_the_decode_still_takes_steps_forwards(tiny, prompt):
    model = MaskProne(tiny, prompt.shape[1] + 5)
    tokens, nfe, counts = dream_reference(model, prompt, 8, "maskgit_plus")
    model.calls = 0
    out = generate(model, prompt, cfg(strategy="maskgit_plus", steps=8))
    assert torch.equal(out.tokens, tokens) and out.tokens_per_step == [counts] and model.calls == nfe == 8
    assert out.tokens[0, 5] == tiny.mask_token_id and (out.tokens == tiny.mask_token_id).sum() == 1


def test_the_forwards_go_on_after_the_span_is_full(eos_prone, prompt):
    # n < M before the last step, so only an EoTP cut (masks past the end become EOS) fills the span early
    model = Metered(eos_prone)
    out = generate(model, prompt, cfg(strategy="maskgit_plus", steps=G, eotp=True))
    counts = out.tokens_per_step[0]
    filled = next(i for i in range(G) if counts[i + 1:] == [0] * (G - i - 1))
    assert filled < G - 5 and not (out.tokens == eos_prone.mask_token_id).any()
    assert out.nfe.tolist() == [G] and model.calls == G


def test_blocks_split_the_steps_evenly_and_run_the_schedule_on_each(tiny, prompt):
    out = generate(tiny, prompt, cfg(strategy="topk_margin", block_length=8, steps=16))
    # per block of 8 masks, linspace(1, 1e-3, 5): int(8 * 0.24975) = 1, int(7 * 0.3329) = 2, int(5 * 0.499) = 2, 3
    assert out.steps_per_block.tolist() == [[4] * 4] and out.tokens_per_step == [[1, 2, 2, 3] * 4]
    cached = generate(tiny, prompt, cfg(strategy="topk_margin", block_length=8, steps=16, cache="dual"))
    assert cached.tokens_per_step == out.tokens_per_step and not (cached.tokens == tiny.mask_token_id).any()
    with pytest.raises(ConfigError, match=r"^decoding.steps \(10\) must be a multiple of the number of blocks "
                                          r"\(4 = gen_length / block_length\)$"):
        cfg(strategy="maskgit_plus", block_length=8, steps=10)


def test_alg_temp_and_temperature_draw_with_the_seed(tiny, prompt):
    greedy = generate(tiny, prompt, cfg(strategy="maskgit_plus", steps=8))
    runs = [generate(tiny, prompt, cfg(strategy="maskgit_plus", steps=8, alg_temp=0.01, seed=seed))
            for seed in (0, 0, 1, 2)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert any(not torch.equal(run.tokens, runs[0].tokens) for run in runs[2:] + [greedy])
    assert all(run.tokens_per_step == greedy.tokens_per_step for run in runs)  # the counts are the schedule's
    sampled = [generate(tiny, prompt, cfg(strategy="entropy", steps=8, temperature=0.8, seed=3)) for _ in range(2)]
    assert torch.equal(sampled[0].tokens, sampled[1].tokens) and not torch.equal(sampled[0].tokens, greedy.tokens)
    assert sampled[0].tokens_per_step == greedy.tokens_per_step


def test_confidences_come_from_the_temperature_scaled_softmax():
    """Entropy with 4 masks at the first of 2 steps commits int(4 * 0.4995) = 1 position: the sharp one at
    temperature 1, the two-way tie (entropy log 2 at any temperature) once temperature 4 flattens the other."""
    logits = torch.zeros(1, 4, 6)
    logits[0, 0, 0] = 4.0  # sharp at T = 1 (entropy 0.42), flat at T = 4 (1.69)
    logits[0, 1, 2:] = float("-inf")  # two equal tokens: entropy log 2 = 0.69
    chosen = []
    for temperature in (1.0, 4.0):
        policy = POLICIES["entropy"](DecodeConfig.create(strategy="entropy", gen_length=4, block_length=4,
                                                         steps=2, temperature=temperature))
        memory = policy.begin(torch.zeros(1, 4, dtype=torch.long), 0)
        masked = torch.ones(1, 4, dtype=torch.bool)
        state = StepState(logits=logits, prediction=logits.argmax(-1), confidence=torch.zeros(1, 4), masked=masked,
                          quota=torch.tensor([1]), step=0, rows=torch.tensor([0]), memory=memory, mask_id=5)
        chosen.append(policy.step(state).commit[0].tolist())
    assert chosen == [[True, False, False, False], [False, True, False, False]]


# --- Fast-dLLM's Dream block variant -----------------------------------------------------------------------------

FAST = [("threshold", {"threshold": 0.05}), ("entropy", {"steps": 16})]


@pytest.mark.parametrize("rule, knobs", FAST, ids=[r for r, _ in FAST])
def test_fastdllm_dream_matches_the_reference_block_loop(tiny, prompt, rule, knobs):
    tokens, nfe, counts = fastdllm_reference(tiny, prompt, 8, rule, **knobs)
    out = generate(tiny, prompt, cfg(strategy="fastdllm_dream", block_length=8, rule=rule, **knobs), trace=True)
    assert torch.equal(out.tokens, tokens) and out.nfe.tolist() == [nfe] and out.tokens_per_step == [counts]
    assert max(counts) > 1  # several positions in one step: the rule itself is exercised
    first = out.trace.committed[out.trace.step == 0]  # each block's first forward: only its first position
    assert first.shape[0] == 4 and first[:, 0].all() and not first[:, 1:].any()


def test_fastdllm_dream_commits_at_the_threshold_itself():
    """p = 0.5 exactly (two equal logits) is committed at τ = 0.5 (the reference's >=); `threshold` needs > τ."""
    logits = torch.full((1, 3, 6), float("-inf"))
    logits[0, :, :2] = 0.0  # p = 0.5
    logits[0, 2, 0] = 0.5  # the most confident mask: p = 0.62
    chosen = {}
    for strategy in ("fastdllm_dream", "threshold"):
        policy = POLICIES[strategy](DecodeConfig.create(strategy=strategy, gen_length=3, block_length=3,
                                                        threshold=0.5))
        memory = policy.begin(torch.zeros(1, 3, dtype=torch.long), 0)
        if memory is not None:
            memory.forwards += 1  # past the block's refresh
        probs = logits.softmax(-1)
        state = StepState(logits=logits, prediction=probs.argmax(-1), confidence=probs.max(-1).values,
                          masked=torch.tensor([[False, True, True]]), quota=torch.tensor([1]), step=1,
                          rows=torch.tensor([0]), memory=memory, mask_id=5)
        chosen[strategy] = policy.step(state).commit[0].tolist()
    assert chosen == {"fastdllm_dream": [False, True, True], "threshold": [False, False, True]}


def test_fastdllm_dream_entropy_spends_the_extra_forward_on_a_block_left_masked(tiny, prompt):
    model = MaskProne(tiny, prompt.shape[1] + 8 + 3)  # block 1's fourth position predicts the mask token
    tokens, nfe, counts = fastdllm_reference(model, prompt, 8, "entropy", steps=16)
    out = generate(model, prompt, cfg(strategy="fastdllm_dream", block_length=8, rule="entropy", steps=16))
    assert torch.equal(out.tokens, tokens) and out.nfe.tolist() == [nfe] and out.tokens_per_step == [counts]
    assert out.steps_per_block.tolist() == [[4, 5, 4, 4]] and out.tokens[0, 11] == tiny.mask_token_id
    with pytest.raises(RuntimeError, match="'fastdllm_dream' did not finish block 1 within 9 forwards"):
        generate(model, prompt, cfg(strategy="fastdllm_dream", block_length=8, threshold=0.02))


@pytest.mark.parametrize("threshold, steps", [(0.05, 8), (0.06, 4), (0.9, 16)])
def test_fastdllm_dream_canvas_matches_the_reference_loop_with_its_extensions(tiny, prompt, threshold, steps):
    tokens, nfe, counts = canvas_reference(tiny, prompt, threshold, steps)
    model = Metered(tiny)
    out = generate(model, prompt, cfg(strategy="fastdllm_dream_canvas", block_length=8, threshold=threshold,
                                      steps=steps))
    assert torch.equal(out.tokens, tokens) and out.tokens_per_step == [counts] and out.nfe.tolist() == [nfe]
    assert nfe > steps and model.calls == nfe  # rejections at the last step extended the loop


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("rule, knobs", FAST, ids=[r for r, _ in FAST])
def test_fastdllm_dream_decodes_with_the_kv_cache(tiny, prompt, rule, knobs, cache):
    model = Metered(tiny)
    out = generate(model, prompt, cfg(strategy="fastdllm_dream", block_length=8, cache=cache, rule=rule, **knobs),
                   trace=True)
    assert not (out.tokens == tiny.mask_token_id).any() and out.nfe.tolist() == [model.calls]
    assert (out.steps_per_block >= 2).all()
    first = out.trace.committed[out.trace.step == 0]
    assert first.shape[0] == 4 and first[:, 0].all() and not first[:, 1:].any()
    if rule == "entropy":
        assert out.steps_per_block.tolist() == [[4] * 4]


@pytest.mark.parametrize("strategy, knobs", [("maskgit_plus", {"steps": 8}),
                                             ("fastdllm_dream", {"rule": "entropy", "steps": 16}),
                                             ("fastdllm_dream_canvas", {"threshold": 0.05, "steps": 8})])
def test_a_batch_decodes_like_its_rows(tiny, strategy, knobs):
    assert_batch_decodes_like_its_rows(tiny, cfg(strategy=strategy, block_length=8 if "rule" in knobs else G,
                                                 **knobs))


# --- settings ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"strategy": "entropy", "eps": 1.0}, r"decoding.eps must be in \[0, 1\), got 1.0"),
    ({"strategy": "topk_margin", "alg_temp": -0.5}, "decoding.alg_temp must be >= 0, got -0.5"),
    ({"strategy": "maskgit_plus", "steps": 0}, "decoding.steps must be > 0, got 0"),
    ({"strategy": "fastdllm_dream", "rule": "confidence"}, "decoding.rule must be threshold or entropy"),
    ({"strategy": "fastdllm_dream", "threshold": 1.5}, r"decoding.threshold must be in \[0, 1\]"),
    ({"strategy": "fastdllm_dream", "rule": "entropy", "steps": 6, "block_length": 8},
     r"decoding.steps \(6\) must be a multiple of the number of blocks \(4\)"),
    ({"strategy": "fastdllm_dream", "rule": "entropy", "steps": 4, "block_length": 8},
     "give each block >= 2 steps"),
    ({"strategy": "fastdllm_dream_canvas", "steps": 5}, r"decoding.steps \(5\) must divide gen_length \(32\)"),
    ({"strategy": "fastdllm_dream_canvas", "cache": "prefix"}, "cannot run with cache='prefix': it reads the whole"),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        cfg(**settings)
    assert "\n" not in str(error.value)


def test_labels_name_the_knobs_away_from_their_defaults():
    assert method_of({"strategy": "entropy", "steps": 256, "eps": 1e-3, "alg_temp": 0.0})["label"] == "entropy steps=256"
    assert method_of({"strategy": "maskgit_plus", "steps": None, "eps": 1e-3, "alg_temp": 0.5})["label"] \
        == "maskgit_plus alg_temp=0.5"
    assert method_of({"strategy": "fastdllm_dream", "rule": "threshold", "threshold": 0.9, "steps": None,
                      "eps": 1e-3, "alg_temp": 0.0})["label"] == "fastdllm_dream τ=0.9"
