"""Block diffusion (LLaDA2's decoding) as a mode of the one engine: exactness against LLaDA2's `generate` loop,
the exact block cache, padded batches, the strategies that run and those refused. The model is the golden
fixture's LLaDA marked `block_diffusion`: under a block-causal mask every property tested here holds for any
model."""
import re

import pytest
import torch

from harness.decoding import POLICIES, ConfigError, DecodeConfig, generate
from harness.decoding.policy import block_diffusion_refusal, check_block_diffusion
from harness.models import LLaDA, load_model
from harness.models.metered import Metered

from .conftest import FIXTURE, assert_batch_decodes_like_its_rows
from .test_config_errors import run_failing_cell

G = 32


def cfg(B=8, **kw):
    return DecodeConfig.create(**{"gen_length": G, "block_length": B, **kw})


@pytest.fixture(scope="module")
def blocky():
    model = load_model(FIXTURE)
    model.block_diffusion = True
    return model


@pytest.fixture(scope="module")
def eos_blocky():
    """Block-causal, with the EOS logit scaled up so that it ends many answers early."""
    model = load_model(FIXTURE)
    model.block_diffusion = True
    with torch.no_grad():
        head = model.model.transformer.ff_out.weight
        head[model.eos_token_id] = 6 * head[model.eos_token_id]
    return model


def prompt(length, seed=0):
    return torch.randint(0, 250, (1, length), generator=torch.Generator().manual_seed(seed))


def reference_generate(model, prompt, gen_length, block_length, steps=32, threshold=0.95, minimal_topk=1,
                       eos_early_stop=False):
    """LLaDA2's `generate` written from reference/llada2.md §3 (batch 1, greedy, no cache): every step forwards
    the window x[:, :W] under the block-causal mask with positions 0..W-1. Returns (tokens, NFE)."""
    mask_id, eos_id, B = model.mask_token_id, model.eos_token_id, block_length
    P = prompt.shape[1]
    steps = min(steps, gen_length // minimal_topk)
    quotas = [B // steps + (1 if i < B % steps else 0) for i in range(steps)]
    blocks = -(-(P + gen_length) // B)
    x = torch.full((1, blocks * B), mask_id)
    x[0, :P] = prompt[0]
    block_of = torch.arange(blocks * B) // B
    causal = block_of[None, :] <= block_of[:, None]
    nfe = 0
    for b in range(P // B, blocks):
        lo, W = b * B, (b + 1) * B
        for i in range(steps):
            masked = x[0, lo:W] == mask_id
            if not masked.any():
                break
            logits = model(x[:, :W], causal[None, :W, :W])
            nfe += 1
            confidence, candidate = logits[0, lo:W].float().softmax(-1).max(-1)
            confidence = torch.where(masked, confidence, -torch.inf)
            above = confidence > threshold
            if int(above.sum()) >= quotas[i]:
                chosen = above
            else:
                chosen = torch.zeros_like(masked)
                chosen[confidence.topk(min(quotas[i], int(masked.sum()))).indices] = True
            x[0, lo:W][chosen] = candidate[chosen]
            if eos_early_stop and (candidate[chosen] == eos_id).any():
                first = int((x[0, :W] == eos_id).nonzero()[0])
                if not (x[0, P:first] == mask_id).any():
                    return x[0, P:first + 1], nfe
        if (x[0, P:W] == eos_id).any():
            break
    out = x[0, P:P + gen_length]
    eos = (out == eos_id).nonzero()
    return (out[:int(eos[0]) + 1] if len(eos) else out), nfe


def assert_same_answer(tokens, expected, eos_id):
    """The engine's fixed-length output: the reference's answer, then EOS where the reference stopped."""
    n = len(expected)
    assert tokens[:n].tolist() == expected.tolist()
    assert (tokens[n:] == eos_id).all()


@pytest.mark.parametrize("B", [8, 16])
@pytest.mark.parametrize("length", [11, 16])  # the prompt tail shares the first block / whole prompt blocks
# the fixture's confidences lie around 0.05-0.08: thresholds there take both branches of the rule
@pytest.mark.parametrize("knobs", [{}, {"threshold": 0.06, "steps": 3}, {"threshold": 0.07, "steps": 20}])
def test_llada2_threshold_reproduces_the_reference_loop(blocky, B, length, knobs):
    ids = prompt(length)
    expected, nfe = reference_generate(blocky, ids, G, B, **knobs)
    out = generate(blocky, ids, cfg(B, strategy="llada2_threshold", **knobs))
    assert_same_answer(out.tokens[0], expected, blocky.eos_token_id)
    assert int(out.nfe[0]) == nfe
    blocks = out.steps_per_block[0]
    assert blocks.shape == (G // B + 1,) and int(blocks.clamp(min=0).sum()) == nfe
    assert bool(blocks[-1] == -1) == (length % B == 0)  # an extra block only when the prompt tail shares one
    assert (blocks[:-1] > 0).all()


@pytest.mark.parametrize("knobs", [{}, {"eos_early_stop": True}, {"eos_early_stop": True, "threshold": 0.3},
                                   {"steps": 4, "threshold": 0.5}])
@pytest.mark.parametrize("length", [11, 16])
def test_llada2_eos_stops_match_the_reference(eos_blocky, knobs, length):
    ids = prompt(length, seed=3)
    expected, nfe = reference_generate(eos_blocky, ids, G, 8, **knobs)
    out = generate(eos_blocky, ids, cfg(strategy="llada2_threshold", **knobs))
    assert (expected == eos_blocky.eos_token_id).any(), "the EOS-prone model should stop early"
    assert_same_answer(out.tokens[0], expected, eos_blocky.eos_token_id)
    assert int(out.nfe[0]) == nfe


def test_the_threshold_commits_more_than_the_quota(blocky):
    """The knob settings above exercise both branches of the rule."""
    one = generate(blocky, prompt(11), cfg(strategy="llada2_threshold", threshold=1.0))
    low = generate(blocky, prompt(11), cfg(strategy="llada2_threshold", threshold=0.06, steps=3))
    assert int(one.nfe[0]) == 48 - 11 and max(one.tokens_per_step[0]) == 1  # the canvas ends with the 6th block
    assert max(low.tokens_per_step[0]) > 3


def test_quota_comes_from_the_block_length(blocky):
    """steps=3, B=8: quotas 3, 3, 2 from B, also in the first block, which holds 5 masks after an 11-token prompt."""
    out = generate(blocky, prompt(11), cfg(strategy="llada2_threshold", threshold=1.0, steps=3))
    assert out.tokens_per_step[0] == [3, 2] + [3, 3, 2] * 4
    assert out.steps_per_block[0].tolist() == [2, 3, 3, 3, 3]


class Recorder(Metered):
    """Keeps the current block's logits (the last B positions fed) of every forward."""

    def __init__(self, model, B):
        super().__init__(model)
        self.B, self.blocks = B, []

    def forward(self, *args, **kwargs):
        logits = super().forward(*args, **kwargs)
        self.blocks.append(logits[:, -self.B:])
        return logits


@pytest.mark.parametrize("settings", [dict(strategy="llada2_threshold", threshold=0.06, steps=4),
                                      dict(strategy="threshold", threshold=0.06), dict(strategy="baseline")])
@pytest.mark.parametrize("B", [8, 16])
def test_prefix_cache_is_exact(blocky, settings, B):
    """Left-padded rows of one residue (so they share the forwards), rows leaving blocks at different steps:
    the cached decode equals the uncached one token for token, and every forward's block logits agree."""
    lengths = (11, 11 + B, 11 + 2 * B)
    ids = torch.full((3, max(lengths)), blocky.eos_token_id)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, -n:], mask[row, -n:] = prompt(n, seed=row)[0], 1
    runs = {}
    for cache in ("none", "prefix"):
        recorder = Recorder(blocky, B)
        runs[cache] = generate(recorder, ids, cfg(B, cache=cache, **settings), attention_mask=mask), recorder.blocks
    (plain, plain_logits), (cached, cached_logits) = runs["none"], runs["prefix"]
    assert torch.equal(cached.tokens, plain.tokens) and torch.equal(cached.nfe, plain.nfe)
    assert len(cached_logits) == len(plain_logits) == plain.steps_per_block.amax(0).sum()
    for a, b in zip(plain_logits, cached_logits):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("settings", [dict(strategy="llada2_threshold"), dict(cache="prefix"),
                                      dict(strategy="threshold", threshold=0.3, cache="prefix", eotp=True),
                                      dict(strategy="llada2_threshold", eos_early_stop=True, threshold=0.5)])
def test_padded_batch_decodes_like_its_rows(eos_blocky, settings):
    """Residues mod 8 of 2, 6, 0, 2, 2: three sub-batches, one of them padded within itself."""
    assert_batch_decodes_like_its_rows(eos_blocky, cfg(**settings), lengths=(10, 6, 8, 2, 18))


def test_rows_of_different_residues_merge_in_order(blocky):
    ids = torch.cat([torch.full((1, 3), blocky.eos_token_id), prompt(5)], 1)
    ids = torch.cat([ids, prompt(8, seed=1)])
    mask = torch.tensor([[0, 0, 0] + [1] * 5, [1] * 8])
    out = generate(blocky, ids, cfg(strategy="threshold", threshold=0.3), attention_mask=mask, trace=True)
    for row in range(2):
        alone = generate(blocky, ids[row:row + 1, 3 * (1 - row):], cfg(strategy="threshold", threshold=0.3),
                         trace=True)
        assert torch.equal(out.tokens[row], alone.tokens[0]) and out.nfe[row] == alone.nfe[0]
        assert out.tokens_per_step[row] == alone.tokens_per_step[0]
        assert torch.equal(out.steps_per_block[row], alone.steps_per_block[0])
        assert (out.trace.row == row).sum() == alone.nfe[0]
    redecodes = out.trace.redecodes(out.tokens)
    assert [len(r) for r in redecodes] == [G, G]  # every generated position committed once, none in the prompt


BLOCKWISE = ["baseline", "threshold", "topk", "factor", "entropy_bounded", "margin", "learned", "credit", "hierarchy",
             "llada2_threshold"]
REFUSED = {"klass", "prophet", "rcr", "saber", "d3llm", "slow_fast", "wino", "oracle", "remdm"}


def test_every_strategy_is_either_blockwise_or_refused():
    assert all(block_diffusion_refusal(POLICIES[s]) == "" for s in BLOCKWISE)
    assert all(block_diffusion_refusal(POLICIES[s]) for s in REFUSED)


@pytest.mark.parametrize("strategy", BLOCKWISE)
@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_blockwise_strategies_decode(blocky, strategy, cache):
    knobs = {"filter_path": "tiny"} if strategy == "learned" else {}
    config = cfg(strategy=strategy, cache=cache, **knobs)
    out = generate(blocky, prompt(11), config)
    assert not (out.tokens == blocky.mask_token_id).any() and out.tokens.shape == (1, G)
    assert int(out.nfe[0]) == int(out.steps_per_block.sum()) and (out.steps_per_block[0] > 0).all()
    if cache == "prefix":
        assert torch.equal(out.tokens, generate(blocky, prompt(11), cfg(strategy=strategy, **knobs)).tokens)


@pytest.mark.parametrize("strategy", sorted(REFUSED))
def test_bidirectional_strategies_are_refused_in_one_line(blocky, strategy):
    config = cfg(strategy=strategy)
    reason = POLICIES[strategy].needs_bidirectional
    with pytest.raises(ConfigError, match=re.escape(f"strategy {strategy!r} cannot decode a block-diffusion model: "
                                                    f"{reason}")) as err:
        generate(blocky, prompt(11), config, reference=torch.zeros(1, G, dtype=torch.long))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        check_block_diffusion(config)  # the same refusal from the settings alone, before any weight loads


def test_dual_cache_is_refused(blocky):
    with pytest.raises(ConfigError, match="cache='dual' does not apply to a block-diffusion model: nothing after "
                                          "the current block is visible, so cache='prefix' is already exact"):
        generate(blocky, prompt(11), cfg(cache="dual"))


def test_a_rule_with_its_own_forward_is_refused():
    from harness.decoding import Policy
    class Shadowing(Policy):
        def forward(self, model, input_ids, key_mask, memory, rows, block_start, block_end):
            return model(input_ids, key_mask)
    assert block_diffusion_refusal(Shadowing) == "it feeds the model inputs of its own"


def test_canvas_filled_to_whole_blocks_must_fit(blocky):
    with pytest.raises(ConfigError, match=r"prompt \(97\) \+ gen_length \(32\) up to whole blocks of 16 = 144 "
                                          r"exceeds the model's max length 128"):
        generate(blocky, prompt(97), cfg(16))


def test_a_cell_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(LLaDA, "block_diffusion", True, raising=False)  # the embedded model, as if block-causal
    assert "strategy 'rcr' cannot decode a block-diffusion model" in run_failing_cell(tmp_path, "decoding=rcr")
    assert "cache='dual' does not apply" in run_failing_cell(tmp_path, "decoding.cache=dual")


@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_eotp_ends_the_answer_and_saves_forwards(eos_blocky, cache):
    ids = torch.randint(0, 250, (3, 10), generator=torch.Generator().manual_seed(0))
    plain = generate(eos_blocky, ids, cfg(strategy="threshold", threshold=0.5, cache=cache))
    out = generate(eos_blocky, ids, cfg(strategy="threshold", threshold=0.5, cache=cache, eotp=True))
    eos = eos_blocky.eos_token_id
    for row in out.tokens:
        first = (row == eos).nonzero()
        assert len(first) and (row[first[0, 0]:] == eos).all()
    assert not (out.tokens == eos_blocky.mask_token_id).any()
    assert (out.nfe <= plain.nfe).all() and out.nfe.sum() < plain.nfe.sum() and (out.eotp_skipped > 0).all()
