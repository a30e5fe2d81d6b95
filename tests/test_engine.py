"""The decoding loop: schedules, policies, EoTP, caches, batching, traces."""
import pytest
import torch

from harness.decoding import DecodeConfig, generate

from .conftest import assert_batch_decodes_like_its_rows

G, B = 32, 8  # the fixture model's max length is 128


def cfg(**kw):
    return DecodeConfig.create(**{"gen_length": G, "block_length": B, **kw})


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_baseline_commits_one_token_per_step(tiny, prompts, cache):
    out = generate(tiny, prompts, cfg(cache=cache))
    assert out.nfe.tolist() == [G] * 3
    assert all(steps == [1] * G for steps in out.tokens_per_step)
    assert out.steps_per_block.tolist() == [[B] * (G // B)] * 3
    assert not (out.tokens == tiny.mask_token_id).any()


def test_baseline_schedule_spreads_the_quota(tiny, prompts):
    out = generate(tiny, prompts, cfg(steps=12))  # 3 steps per block of 8: 3 + 3 + 2
    assert out.tokens_per_step[0] == [3, 3, 2] * 4 and out.nfe.tolist() == [12] * 3


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_threshold_one_reproduces_baseline(tiny, prompts, cache):
    base = generate(tiny, prompts, cfg(cache=cache))
    out = generate(tiny, prompts, cfg(strategy="threshold", threshold=1.0, cache=cache))
    assert torch.equal(out.tokens, base.tokens) and torch.equal(out.nfe, base.nfe)


def test_lower_threshold_commits_more_per_step(tiny, prompts):
    nfe = [generate(tiny, prompts, cfg(strategy="threshold", threshold=t)).nfe.sum().item() for t in (0.9, 0.1, 0.01)]
    assert nfe[0] >= nfe[1] >= nfe[2] and nfe[2] < 3 * G


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_oracle_reproduces_the_reference_with_fewer_forwards(tiny, prompts, cache):
    base = generate(tiny, prompts, cfg(cache=cache))
    out = generate(tiny, prompts, cfg(strategy="oracle", cache=cache), reference=base.tokens)
    assert torch.equal(out.tokens, base.tokens)
    assert (out.nfe <= base.nfe).all() and out.nfe.sum() < base.nfe.sum()


def test_oracle_never_commits_a_wrong_token(tiny, prompts):
    reference = torch.randint(0, 250, (3, G), generator=torch.Generator().manual_seed(1))
    out = generate(tiny, prompts, cfg(strategy="oracle"), reference=reference)
    assert torch.equal(out.tokens, reference)  # forced when the model disagrees everywhere


@pytest.mark.parametrize("strategy", ["baseline", "threshold", "factor", "entropy_bounded"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_eotp_output_ends_in_eos_and_saves_forwards(eos_prone, prompts, strategy, cache):
    knobs = {"threshold": 0.5} if strategy == "threshold" else {}
    plain = generate(eos_prone, prompts, cfg(strategy=strategy, cache=cache, **knobs))
    out = generate(eos_prone, prompts, cfg(strategy=strategy, cache=cache, eotp=True, **knobs))
    eos = eos_prone.eos_token_id
    assert (plain.tokens == eos).any(), "the fixture should predict EOS somewhere"
    for row in out.tokens:
        first = (row == eos).nonzero()
        assert len(first), "EoTP should stop at a predicted end of text"
        assert (row[first[0, 0]:] == eos).all()
    assert not (out.tokens == eos_prone.mask_token_id).any()
    assert (out.nfe <= plain.nfe).all() and out.nfe.sum() < plain.nfe.sum()
    assert (out.eotp_skipped > 0).all()


def test_eotp_skips_blocks_beyond_the_cut(eos_prone, prompts):
    out = generate(eos_prone, prompts, cfg(eotp=True))
    first_eos = (out.tokens == eos_prone.eos_token_id).int().argmax(-1)
    for row, cut in enumerate(first_eos.tolist()):
        assert (out.steps_per_block[row, cut // B + 1:] == 0).all()


@pytest.mark.parametrize("settings", [
    dict(), dict(cache="prefix"), dict(cache="dual"), dict(strategy="threshold", threshold=0.3),
    dict(strategy="threshold", threshold=0.3, cache="dual", eotp=True), dict(eotp=True),
])
def test_batched_rows_equal_single_rows(eos_prone, settings):
    """Left-padded prompts of different lengths, decoded together, give each row's single-row result."""
    assert_batch_decodes_like_its_rows(eos_prone, cfg(**settings))


def test_factor_and_entropy_bounded_commit_in_parallel(tiny, prompts):
    for strategy, knob in [("factor", dict(factor=4.0)), ("entropy_bounded", dict(gamma=50.0))]:
        out = generate(tiny, prompts, cfg(strategy=strategy, **knob))
        assert (out.nfe < G).all() and not (out.tokens == tiny.mask_token_id).any()
    tight = generate(tiny, prompts, cfg(strategy="entropy_bounded", gamma=0.0))
    assert tight.nfe.tolist() == [G] * 3  # a zero budget is one token per step


def test_sampling_is_seeded(tiny, prompts):
    a = generate(tiny, prompts, cfg(temperature=1.0, seed=5))
    b = generate(tiny, prompts, cfg(temperature=1.0, seed=5))
    c = generate(tiny, prompts, cfg(temperature=1.0, seed=6))
    greedy = generate(tiny, prompts, cfg())
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert not torch.equal(a.tokens, greedy.tokens)
    r = generate(tiny, prompts, cfg(remasking="random"))
    assert r.nfe.tolist() == [G] * 3 and not torch.equal(r.tokens, greedy.tokens)


def test_trace_records_every_step(tiny, prompts):
    out = generate(tiny, prompts, cfg(strategy="threshold", threshold=0.2), trace=True)
    t = out.trace
    assert len(t) == out.nfe.sum() and t.confidence.shape == (len(t), B) and t.confidence.dtype == torch.float32
    assert (t.committed & ~t.masked).sum() == 0 and (t.committed.sum(1) >= 1).all()
    for row in range(3):
        assert t.committed[t.row == row].sum() == G
        assert t.committed[t.row == row].sum(1).tolist() == out.tokens_per_step[row]
    # the first step of a block sees every position masked; predictions at committed positions were written
    first = t.step == 0
    assert t.masked[first].all()
    assert ((t.confidence > 0) & (t.confidence <= 1)).all()


def test_statistics_are_per_row(eos_prone, prompts):
    out = generate(eos_prone, prompts, cfg(eotp=True))
    assert out.wall_time.shape == (3,) and (out.wall_time > 0).all()
    assert torch.equal(out.nfe, out.steps_per_block.sum(1))
    # tokens committed before a later cut are overwritten by EOS, so at least the kept length was committed
    assert all(sum(s) >= G - skipped for s, skipped in zip(out.tokens_per_step, out.eotp_skipped.tolist()))
    assert ((out.tokens == eos_prone.eos_token_id).sum(1) >= out.eotp_skipped).all()


def test_redecodes_count_forwards_between_first_correct_prediction_and_commit(tiny, prompts):
    config = DecodeConfig(gen_length=16, block_length=8)
    base = generate(tiny, prompts, config, trace=True)
    oracle = generate(tiny, prompts, DecodeConfig.create(gen_length=16, block_length=8, strategy="oracle"),
                      reference=base.tokens, trace=True)
    base_counts, oracle_counts = base.trace.redecodes(base.tokens), oracle.trace.redecodes(oracle.tokens)
    for row in range(prompts.shape[0]):
        assert len(base_counts[row]) == 16  # every position committed once
        assert oracle_counts[row] == [0] * 16  # the oracle commits at first sight
        assert max(base_counts[row]) <= 7  # never more than the block's steps


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("strategy", ["baseline", "threshold"])
def test_caches_are_exact_for_a_one_layer_model(prompts, cache, strategy):
    """Within a block the cached positions' tokens do not change, and a single layer's keys and values depend
    only on its own tokens: so with one layer the prefix and dual caches must decode exactly like full
    forwards. Their accuracy cost on deeper models (the embedded default's `perm`) is the caches' staleness
    in the later layers, not the implementation."""
    from harness.models import LLaDAConfig, random_llada
    one_layer = random_llada(LLaDAConfig(d_model=64, n_heads=4, n_kv_heads=4, n_layers=1, mlp_hidden_size=128,
                                         vocab_size=320, max_sequence_length=128, rope_theta=10000.0,
                                         rms_norm_eps=1e-5, mask_token_id=310, eos_token_id=257, pad_token_id=257),
                             seed=1)
    plain = generate(one_layer, prompts, cfg(strategy=strategy))
    cached = generate(one_layer, prompts, cfg(strategy=strategy, cache=cache))
    assert torch.equal(cached.tokens, plain.tokens) and torch.equal(cached.nfe, plain.nfe)
