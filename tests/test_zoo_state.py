"""The stateful commit rules KLASS, Prophet and Slow-Fast: their rule on hand-built steps (with the memory their
`begin` builds), end-to-end decodes on the fixture model with a forward counter, the refused combinations, and
batches of left-padded rows decoding like each row alone (all three keep per-row state)."""
import pytest
import torch

from harness.decoding import POLICIES, ConfigError, DecodeConfig, StepState, generate
from harness.models.metered import Metered

from .conftest import assert_batch_decodes_like_its_rows

G, B = 32, 8
VOCAB = 6


def cfg(**kw):
    return DecodeConfig.create(**{"gen_length": G, "block_length": B, **kw})


def peaked(*confident):
    """[1, len, VOCAB] logits: token 1 with a logit of `c` against 0 for the others (c = 0: uniform)."""
    logits = torch.zeros(1, len(confident), VOCAB)
    logits[0, :, 1] = torch.tensor(confident, dtype=torch.float)
    return logits


def step_state(memory, logits, masked, step, start=0, block=None, quota=1, prompt_length=0):
    """One row's step over canvas positions [start, start + W); the current block is `block` (columns)."""
    confidence, prediction = logits.softmax(-1).max(-1)
    block_start, block_end = block or (0, logits.shape[1])
    return StepState(logits=logits, prediction=prediction, confidence=confidence, masked=torch.tensor([masked]),
                     quota=torch.tensor([quota]), step=step, rows=torch.tensor([0]), memory=memory, start=start,
                     block_start=block_start, block_end=block_end, prompt_length=prompt_length, mask_id=VOCAB - 1)


def policy(strategy, **kw):
    return POLICIES[strategy](cfg(strategy=strategy, **kw))


def committed(decision):
    return decision.commit[0].tolist()


# --- KLASS -----------------------------------------------------------------------------------------------------

def test_klass_commits_every_stable_confident_position_else_the_quota():
    klass = policy("klass", conf_threshold=0.9, kl_threshold=0.01)  # H = 2
    memory = klass.begin(torch.zeros(1, 4, dtype=torch.long), 0)
    logits, masked = peaked(8, 8, 1, 8), [True, True, True, False]
    # step 0: the previous distribution is all zeros, so the KL is huge (and step 0 < H - 1): the quota's top-1
    assert committed(klass.step(step_state(memory, logits, masked, 0))) == [True, False, False, False]
    assert (memory.kl_history[0, :, -1] > 20).all()
    # step 1: the same distributions, but the history still holds step 0's KL
    assert committed(klass.step(step_state(memory, logits, masked, 1, quota=2))) == [True, True, False, False]
    # step 2: two KLs of 0 -> ready: every masked position above τ at once (the quota of 1 does not cap it);
    # position 2 is stable but not confident (p = 0.35)
    assert committed(klass.step(step_state(memory, logits, masked, 2))) == [True, True, False, False]
    moved = peaked(8, 4, 1, 8)  # position 1's distribution moved: not stable, position 0 still is
    assert committed(klass.step(step_state(memory, moved, masked, 3))) == [True, False, False, False]


def test_klass_history_carries_over_blocks_but_the_first_step_of_a_block_falls_back():
    klass = policy("klass", conf_threshold=0.5, kl_threshold=0.01)
    memory = klass.begin(torch.zeros(1, 4, dtype=torch.long), 0)
    logits = peaked(8, 8, 8, 8)
    for step in range(2):  # the first block [0, 2) is read with the next one, [2, 4)
        klass.step(step_state(memory, logits, [True] * 4, step, block=(0, 2)))
    # the next block at its step 0: positions 2 and 3 were stable for two forwards, but step 0 < H - 1
    later = step_state(memory, logits[:, 2:], [True, True], 0, start=2, quota=1)
    assert committed(klass.step(later)) == [True, False]
    later = step_state(memory, logits[:, 2:], [False, True], 1, start=2, quota=1)
    assert committed(klass.step(later)) == [False, True]


def test_klass_decodes_with_stable_positions_in_parallel(tiny, prompts):
    model = Metered(tiny)
    base = generate(tiny, prompts, cfg())
    strict = generate(model, prompts, cfg(strategy="klass"))  # nothing reaches 0.9 on the random fixture
    assert torch.equal(strict.tokens, base.tokens) and strict.nfe.tolist() == [G] * 3 and model.calls == G
    model.calls = 0
    loose = generate(model, prompts, cfg(strategy="klass", conf_threshold=0.02, kl_threshold=2.0, kl_history_length=3))
    assert (loose.nfe < G).all() and model.calls == int(loose.nfe.max())
    assert max(max(steps) for steps in loose.tokens_per_step) > 1
    assert not (loose.tokens == tiny.mask_token_id).any()


# --- Prophet ---------------------------------------------------------------------------------------------------

def test_prophet_exits_when_the_answer_gap_reaches_the_phase_threshold():
    prophet = policy("prophet", answer_start=2)  # steps = G = 32: early while g < 10.56, mid while g < 21.44
    canvas = torch.zeros(1, 4 + G, dtype=torch.long)
    memory = prophet.begin(canvas, 4)
    # window: the block [4, 12) and everything after it; answer positions 6..10 have a logit gap of 6
    logits = torch.cat([peaked(*[6] * 8), peaked(*[0] * 24)], 1)
    masked = [True] * 32
    state = step_state(memory, logits, masked, 0, start=4, block=(0, 8), prompt_length=4)
    assert committed(prophet.step(state)) == [True] + [False] * 31  # g = 1: 6 < 7.5, the baseline's top-1
    memory.forwards[0] = 10  # the next forward is g = 11: mid phase, 6 >= 5: every masked position
    decision = prophet.step(step_state(memory, logits, masked, 1, start=4, block=(0, 8), prompt_length=4))
    assert committed(decision) == [True] * 32 and bool(memory.exited[0])


def test_prophet_without_an_exit_is_the_baseline_and_counts_every_forward(tiny, prompts):
    model = Metered(tiny)
    base = generate(tiny, prompts, cfg())
    out = generate(model, prompts, cfg(strategy="prophet"))  # gaps on the random fixture stay below 2.5
    assert torch.equal(out.tokens, base.tokens) and out.nfe.tolist() == [G] * 3 and model.calls == G
    model.calls = 0
    slow = generate(model, prompts, cfg(strategy="prophet", steps=2 * G))  # quota 0 in half the steps
    assert torch.equal(slow.tokens, base.tokens) and slow.nfe.tolist() == [2 * G] * 3 and model.calls == 2 * G


def test_prophet_exit_fills_every_mask_in_one_step(tiny, prompts):
    model = Metered(tiny)
    out = generate(model, prompts, cfg(strategy="prophet", early_threshold=0.0, answer_start=20))
    assert out.nfe.tolist() == [1] * 3 and model.calls == 1 and out.tokens_per_step == [[G]] * 3
    out = generate(tiny, prompts, cfg(strategy="prophet", late_threshold=0.0))  # exits at g / 32 >= 0.67
    assert out.nfe.tolist() == [22] * 3 and all(steps[-1] == G - 21 for steps in out.tokens_per_step)


# --- Slow-Fast -------------------------------------------------------------------------------------------------

def test_slow_fast_commit_rule():
    slow_fast = policy("slow_fast")
    masked = torch.tensor([True, True, True, False])
    # two or more at >= 0.9: all of them; one: the top-1 branch; restricted to [lo, hi)
    assert slow_fast.fill(masked, torch.tensor([0.95, 0.9, 0.5, 0.99]), 0, 4).tolist() == [True, True, False, False]
    assert slow_fast.fill(masked, torch.tensor([0.3, 0.95, 0.5, 0.99]), 0, 4).tolist() == [False, True, False, False]
    assert slow_fast.fill(masked, torch.tensor([0.95, 0.9, 0.5, 0.99]), 1, 3).tolist() == [False, True, False, False]
    assert slow_fast.fill(masked, torch.tensor([0.95, 0.9, 0.5, 0.99]), 3, 4).tolist() == [False] * 4


def test_slow_fast_fixes_the_cycle_length_then_fills_it_fast():
    slow_fast = policy("slow_fast", k_exploration_steps=3)  # W = 2, std < 1
    memory = slow_fast.begin(torch.zeros(1, B), 0)
    # the farthest masked position with confidence >= 0.3 is column 4: the estimate is 5, twice -> fixed
    logits = peaked(3, 0, 0, 0, 3, 0, 0, 0)  # p = 0.80 at columns 0 and 4, 0.17 elsewhere
    masked = [True] * B
    first = slow_fast.step(step_state(memory, logits, masked, 0))
    assert committed(first) == [True] + [False] * 7 and memory[0].history == [5] and not memory[0].determined
    masked[0] = False
    slow_fast.step(step_state(memory, logits, masked, 1))
    assert (memory[0].cur, memory[0].determined) == (5, True)
    masked[4] = False
    slow_fast.step(step_state(memory, logits, masked, 2))  # the last slow forward: the fast phase starts
    assert memory[0].slow_forwards == 3 and memory[0].history == [5, 5]
    assert slow_fast.fed_length(memory[0], 0, 40) == 40  # its first forward is fed everything
    masked[1] = False
    fast = slow_fast.step(step_state(memory, logits, masked, 3))
    assert committed(fast) == [False, False, True, False, False, False, False, False]  # inside [0, 5) only
    assert slow_fast.fed_length(memory[0], 0, 40) == 5  # later ones only up to the region's end


def test_slow_fast_counts_slow_forwards_on_a_full_block_and_feeds_fast_forwards_truncated(tiny, prompts):
    fed = []

    class Recorder(Metered):
        def forward(self, ids, *args, **kwargs):
            fed.append(ids.shape[1])
            return super().forward(ids, *args, **kwargs)

    model = Recorder(tiny)
    out = generate(model, prompts[:1], cfg(strategy="slow_fast", k_exploration_steps=2,
                                           cycle_len_confidence_threshold=0.02))
    P = prompts.shape[1]
    assert model.calls == int(out.nfe[0]) == len(fed)
    # block 0: 2 slow forwards, then the fast phase over [0, 8): its first forward fed everything, the rest
    # only the canvas up to the region's end
    assert fed[:8] == [P + G] * 3 + [P + B] * 5 and out.tokens_per_step[0][:8] == [1] * 8
    # a block fills during its first slow phase, whose K = 6 forwards all run
    model.calls = 0
    out = generate(model, prompts, cfg(strategy="slow_fast", high_confidence_threshold=0.0))
    assert out.tokens_per_step == [[B, 0, 0, 0, 0, 0] * (G // B)] * 3 and model.calls == 6 * G // B


# --- all three -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, refused", [
    (dict(strategy="klass", cache="dual"), "strategy 'klass' cannot run with cache='dual'.*use cache='none' or 'prefix'"),
    (dict(strategy="klass", temperature=0.5), "strategy 'klass' decodes at temperature 0 only"),
    (dict(strategy="klass", steps=30), r"decoding.steps \(30\) must be a multiple of the number of blocks"),
    (dict(strategy="prophet", cache="prefix"), "strategy 'prophet' cannot run with cache='prefix': the early exit"),
    (dict(strategy="slow_fast", cache="dual"), "strategy 'slow_fast' cannot run with cache='dual': Slow-Fast's"),
    (dict(strategy="slow_fast", max_sub_cycles_per_block=4), r"block_length \(8\) must be <= decoding.max_sub_cycles"),
])
def test_refused_combinations_are_one_line_at_config_time(settings, refused):
    with pytest.raises(ConfigError, match=refused):
        cfg(**settings)


@pytest.mark.parametrize("settings", [
    dict(strategy="klass", conf_threshold=0.02, kl_threshold=2.0), dict(strategy="klass", cache="prefix", eotp=True),
    dict(strategy="prophet", early_threshold=0.4, mid_threshold=0.4, late_threshold=0.4, answer_start=5),
    dict(strategy="prophet", late_threshold=0.0, eotp=True),
    dict(strategy="slow_fast", high_confidence_threshold=0.05), dict(strategy="slow_fast", eotp=True),
])
def test_batched_rows_equal_single_rows(eos_prone, settings):
    assert_batch_decodes_like_its_rows(eos_prone, cfg(**settings))
