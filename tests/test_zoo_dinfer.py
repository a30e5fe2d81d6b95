"""dInfer's CreditDecoding and hierarchy decoders (on dInfer's unrolling, EOS-stopping block driver) and d3LLM's
entropy multi-block decoding: their rules on hand-built steps, and whole decodes on the fixture model."""
import math

import pytest
import torch

from harness.decoding import POLICIES, ConfigError, DecodeConfig, StepState, generate
from harness.models.metered import Metered

from .conftest import assert_batch_decodes_like_its_rows

G, B = 32, 8
MASK, EOS = 9, 8  # the hand-built steps' vocabulary: 10 tokens


def cfg(**kw):
    return DecodeConfig.create(**{"gen_length": G, "block_length": B, **kw})


def policy_for(strategy, **kw):
    return POLICIES[strategy](cfg(strategy=strategy, **kw))


def logits_for(*rows):
    """[1, W, 10] logits: per position a token and the probability it gets (the rest spread evenly)."""
    out = torch.empty(1, len(rows), 10)
    for i, (token, p) in enumerate(rows):
        probs = torch.full((10,), (1 - p) / 9)
        probs[token] = p
        out[0, i] = probs.log()
    return out


def step_state(policy, logits, tokens, prompt_length=0, start=None, canvas=None):
    """The step the engine would build for a window of `tokens` (MASK where masked) starting at `start`."""
    tokens = torch.tensor([tokens])
    start = prompt_length if start is None else start
    if canvas is None:
        canvas = torch.cat([torch.zeros(1, prompt_length, dtype=torch.long), torch.full((1, G), MASK)], 1)
    memory = policy.begin(canvas, prompt_length)
    probs = logits.softmax(-1)
    confidence, prediction = probs.max(-1)
    return StepState(logits=logits, prediction=prediction, confidence=confidence, masked=tokens == MASK,
                     quota=torch.tensor([1]), step=0, tokens=tokens, eos_id=EOS, rows=torch.tensor([0]),
                     memory=memory, start=start, block_start=0, block_end=min(B, tokens.shape[1]),
                     prompt_length=prompt_length, mask_id=MASK)


# ---- CreditDecoding ------------------------------------------------------------------------------------------


def test_credit_commits_what_clears_tau_after_fusing_its_credit():
    policy = policy_for("credit")
    # position 0 at p = 0.85 is below τ = 0.9 raw, but its own credit 0.85 ** 0.2 lifts it past τ
    state = step_state(policy, logits_for((1, 0.85), (2, 0.5), (3, 0.3)), [MASK, MASK, MASK])
    decision = policy.step(state)
    assert decision.commit[0].tolist() == [True, False, False]
    credit = state.memory.matrix[0, 0, 1].item()
    assert credit == pytest.approx(0.85 ** 0.2)
    fused = logits_for((1, 0.85))[0, 0]
    fused[1] += 0.7 * math.log1p(credit)
    assert fused.softmax(-1)[1] > 0.9 > 0.85


def test_credit_decays_by_beta_and_accumulates_over_calls_of_the_same_block():
    policy = policy_for("credit", threshold=1.0)
    logits = logits_for((1, 0.3), (2, 0.3))
    state = step_state(policy, logits, [MASK, MASK])
    policy.step(state)
    first = state.memory.matrix[0, 0, 1].item()
    state.tokens = torch.tensor([[MASK, 5]])  # position 1 decoded: it gets no credit any more
    state.masked = state.tokens == MASK
    policy.step(state)
    assert state.memory.matrix[0, 0, 1].item() == pytest.approx(0.8 * first + 0.3 ** 0.2)
    assert state.memory.matrix[0, 1, 2].item() == pytest.approx(0.8 * first)
    state.start += B  # the next block starts with a fresh matrix
    policy.step(state)
    assert state.memory.matrix[0, 0, 1].item() == pytest.approx(0.3 ** 0.2)


def test_credit_skips_positions_predicting_the_mask_and_ties_within_1e5_pass():
    policy = policy_for("credit")
    state = step_state(policy, logits_for((MASK, 0.99), (2, 0.5), (3, 0.5), (4, 0.2)), [MASK] * 4)
    assert policy.step(state).commit[0].tolist() == [False, True, True, False]
    # every masked position predicting the mask token: the reference commits nothing (the engine's cap stops it)
    state = step_state(policy, logits_for((MASK, 0.99), (MASK, 0.5)), [MASK, MASK])
    assert not policy.step(state).commit.any()


# ---- the dInfer driver: unrolled iterations and the EOS stop ---------------------------------------------------


@pytest.mark.parametrize("strategy", ["credit", "hierarchy"])
def test_the_driver_unrolls_masks_over_expected_tpf_forwards_capped_at_maximum_unroll(strategy):
    policy = policy_for(strategy, expected_tpf=2, maximum_unroll=3, threshold=0.1)
    state = step_state(policy, logits_for(*[(1, 0.9)] * B), [MASK] * B)  # 8 masks: u = min(8 // 2, 3) = 3
    memory = state.memory
    decision = policy.step(state)
    assert decision.commit.all()  # the block is full after the first iteration ...
    assert policy.keep_decoding(memory, torch.tensor([False])).tolist() == [True]  # ... two more forwards run
    state.tokens, state.masked = torch.ones(1, B, dtype=torch.long), torch.zeros(1, B, dtype=torch.bool)
    policy.step(state)
    assert policy.keep_decoding(memory, torch.tensor([False])).tolist() == [True]
    policy.step(state)
    assert policy.keep_decoding(memory, torch.tensor([False])).tolist() == [False]


@pytest.mark.parametrize("strategy", ["credit", "hierarchy"])
def test_a_finished_block_holding_eos_ends_the_row_at_the_block_end(strategy):
    policy = policy_for(strategy, threshold=0.1)
    state = step_state(policy, logits_for(*[(EOS, 0.9)] + [(1, 0.9)] * 7), [MASK] * B, prompt_length=4)
    assert state.start + B == 12
    assert policy.step(state).end.tolist() == [12]
    state = step_state(policy, logits_for(*[(2, 0.9)] * B), [MASK] * B, prompt_length=4)
    assert policy.step(state).end.tolist() == [4 + G]  # no EOS: nothing is cut
    assert policy_for(strategy, threshold=0.1, eos_stop=False).step(state).end is None


def test_no_end_while_unrolled_iterations_are_pending():
    policy = policy_for("hierarchy", expected_tpf=1, threshold=0.1)  # 8 masks: u = 4
    state = step_state(policy, logits_for(*[(EOS, 0.9)] * B), [MASK] * B)
    assert policy.step(state).end.tolist() == [G]  # the block is full of EOS, but 3 iterations are pending


# ---- hierarchy ------------------------------------------------------------------------------------------------


def test_hierarchy_commits_each_runs_best_above_low_plus_all_above_tau():
    policy = policy_for("hierarchy")  # τ 0.9, τ_low 0.3
    # runs of masks: [0, 1], [3, 4, 5], [7]; position 2 and 6 are decoded
    logits = logits_for((1, 0.5), (1, 0.4), (1, 0.99), (1, 0.35), (1, 0.95), (1, 0.92), (1, 0.99), (1, 0.25))
    state = step_state(policy, logits, [MASK, MASK, 4, MASK, MASK, MASK, 4, MASK])
    assert policy.step(state).commit[0].tolist() == [True, False, False, False, True, True, False, False]


def test_hierarchy_commits_ties_of_a_runs_best_and_always_the_blocks_best():
    policy = policy_for("hierarchy")
    state = step_state(policy, logits_for((1, 0.5), (1, 0.5), (3, 0.2)), [MASK, MASK, MASK])
    assert policy.step(state).commit[0].tolist() == [True, True, False]  # both equal the run's best
    state = step_state(policy, logits_for((1, 0.2), (2, 0.25), (3, 0.1)), [MASK, 5, MASK])
    assert policy.step(state).commit[0].tolist() == [True, False, False]  # all below τ_low: the best one only


# ---- d3LLM multi-block ----------------------------------------------------------------------------------------


def test_d3llm_commits_the_lowest_entropy_and_all_under_threshold_in_the_open_window():
    policy = policy_for("d3llm", block_add_threshold=0.5)
    sure, unsure = (1, 0.99), (2, 0.3)  # entropies 0.08 and ~1.8 nats
    logits = logits_for(*[unsure] * 3 + [sure] + [unsure] * 4 + [sure] * 8 + [sure] * 16)
    state = step_state(policy, logits, [MASK] * G)
    decision = policy.step(state)
    # only block 1 exists (block 2 opens once block 1 is half done): its confident position, nothing beyond
    assert decision.commit[0].nonzero().flatten().tolist() == [3]
    assert state.memory.created.tolist() == [1]


def test_d3llm_opens_the_next_block_at_block_add_threshold_and_activates_it_at_decoded_token_threshold():
    policy = policy_for("d3llm")  # add at progress 0.1, activate at 0.95
    sure, unsure = (1, 0.99), (2, 0.3)
    tokens = [4] + [MASK] * (G - 1)  # block 1 has progress 1/8 >= 0.1: block 2 is created, not activated
    logits = logits_for(*[unsure] * B + [unsure, sure] + [unsure] * 6 + [sure] * 16)
    state = step_state(policy, logits, tokens)
    decision = policy.step(state)
    assert state.memory.created.tolist() == [2]
    assert state.memory.activated[0].tolist() == [True, False, False, False]
    # block 2's confident position is committed; activated block 1 got nothing, so its best one is forced
    assert decision.commit[0].nonzero().flatten().tolist() == [1, 9]  # block 1's first of equal entropies


def test_d3llm_with_both_thresholds_at_one_decodes_one_block_at_a_time(tiny, prompts):
    out = generate(tiny, prompts, cfg(strategy="d3llm", block_add_threshold=1.0, decoded_token_threshold=1.0,
                                      early_stop=False), trace=True)
    assert (out.steps_per_block > 0).all()  # no block was filled while an earlier one was decoding
    assert out.trace.committed.sum() == prompts.shape[0] * G
    pipelined = generate(tiny, prompts, cfg(strategy="d3llm", early_stop=False))
    assert (pipelined.steps_per_block == 0).any() and (pipelined.nfe < out.nfe).all()


def test_d3llm_early_stop_turns_everything_after_the_first_committed_eos_into_eos():
    policy = policy_for("d3llm", block_add_threshold=1.0)
    state = step_state(policy, logits_for(*[(EOS, 0.99)] + [(2, 0.3)] * (G - 1)), [MASK] * G, prompt_length=3)
    decision = policy.step(state)
    assert decision.commit[0, 0] and decision.end.tolist() == [3 + 1]
    assert state.memory.created.tolist() == [G // B]  # no block is opened after the EOS
    # the step that fills the last mask cuts nothing: the reference's stop runs before its next forward only
    state = step_state(policy, logits_for((EOS, 0.99), (2, 0.99)), [MASK, MASK], prompt_length=3, start=3 + G - 2)
    state.memory.created[:] = G // B  # the last block is open
    assert policy.step(state).end.tolist() == [3 + G]


# ---- whole decodes on the fixture model -----------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["credit", "hierarchy"])
def test_wasted_unrolled_iterations_are_forwards(default_model, strategy):
    prompts = torch.randint(0, 200, (2, 10), generator=torch.Generator().manual_seed(1))
    eager = dict(threshold=1e-6) if strategy == "credit" else dict(threshold=0.0, low_threshold=0.0)
    metered = Metered(default_model)
    # every masked position passes: one forward fills a block, then u - 1 = 3 wasted ones (8 masks // 2)
    out = generate(metered, prompts, cfg(strategy=strategy, expected_tpf=2, eos_stop=False, **eager))
    assert out.steps_per_block.tolist() == [[4] * (G // B)] * 2
    assert metered.calls == 4 * (G // B) and out.nfe.tolist() == [4 * (G // B)] * 2
    once = generate(default_model, prompts, cfg(strategy=strategy, maximum_unroll=1, eos_stop=False, **eager))
    assert once.nfe.tolist() == [G // B] * 2 and torch.equal(once.tokens, out.tokens)


@pytest.mark.parametrize("strategy", ["credit", "hierarchy"])
def test_the_eos_stop_ends_after_the_first_block_holding_eos(eos_prone, prompts, strategy):
    b = 4  # this model's first EOS comes late: small blocks leave some after it
    stopped = generate(eos_prone, prompts, cfg(strategy=strategy, block_length=b))
    full = generate(eos_prone, prompts, cfg(strategy=strategy, block_length=b, eos_stop=False))
    for row in range(prompts.shape[0]):
        blocks = full.tokens[row].view(-1, b)
        first = next(k for k in range(G // b) if (blocks[k] == eos_prone.eos_token_id).any())
        assert torch.equal(stopped.tokens[row, :(first + 1) * b], full.tokens[row, :(first + 1) * b])
        assert (stopped.tokens[row, (first + 1) * b:] == eos_prone.eos_token_id).all()
        assert (stopped.steps_per_block[row, first + 1:] == 0).all()
    assert (stopped.nfe < full.nfe).any()


class Widths(Metered):
    """Records the length of every forward's input."""

    def forward(self, input_ids, *args, **kwargs):
        self.widths = getattr(self, "widths", []) + [input_ids.shape[1]]
        return super().forward(input_ids, *args, **kwargs)


def test_d3llm_early_stop_ends_at_the_first_eos_and_keeps_feeding_the_eos_tail(eos_prone, prompts):
    model = Widths(eos_prone)
    out = generate(model, prompts, cfg(strategy="d3llm"))
    assert set(model.widths) == {prompts.shape[1] + G}  # as in the reference, the EOS after a cut are fed
    for row, skipped in zip(out.tokens, out.eotp_skipped.tolist()):
        # cut right after an EOS (a later step may still commit an earlier EOS, and the step that fills the
        # last mask cuts nothing, as in the reference)
        end = G - skipped
        assert (row != eos_prone.mask_token_id).all() and (row[end - 1:] == eos_prone.eos_token_id).all()
    assert (out.eotp_skipped > 0).all()


@pytest.mark.parametrize("settings", [dict(strategy="d3llm"), dict(strategy="d3llm", early_stop=False)])
def test_d3llm_nfe_is_forwards_and_every_forward_commits(tiny, prompts, settings):
    metered = Metered(tiny)
    out = generate(metered, prompts, cfg(**settings))
    assert metered.calls == int(out.steps_per_block.max(0).values.sum())  # rows share the batch's forwards
    assert all(len(steps) == n and min(steps) >= 1 for steps, n in zip(out.tokens_per_step, out.nfe.tolist()))


@pytest.mark.parametrize("settings", [
    dict(strategy="credit"), dict(strategy="credit", cache="dual", threshold=0.3), dict(strategy="hierarchy"),
    dict(strategy="hierarchy", cache="prefix", eotp=True), dict(strategy="d3llm"),
    dict(strategy="d3llm", threshold=3.0, eotp=True),
])
def test_batched_rows_equal_single_rows(eos_prone, settings):
    """Left-padded prompts of different lengths, decoded together, give each row's single-row result (dInfer
    sizes the unroll from the whole batch's masks and its hierarchy decoder and d3LLM take one row: our rows
    are independent)."""
    assert_batch_decodes_like_its_rows(eos_prone, cfg(**settings))


@pytest.mark.parametrize("settings, message", [
    (dict(strategy="d3llm", cache="prefix"), "strategy 'd3llm' cannot run with cache='prefix': d3LLM decodes"),
    (dict(strategy="d3llm", cache="dual"), "strategy 'd3llm' cannot run with cache='dual'"),
    (dict(strategy="credit", temperature=0.5), "strategy 'credit' decodes greedily"),
    (dict(strategy="credit", maximum_unroll=0), "decoding.maximum_unroll must be >= 1, got 0"),
    (dict(strategy="hierarchy", expected_tpf=0), "decoding.expected_tpf must be >= 1, got 0"),
])
def test_refused_settings_are_one_line_at_config_time(settings, message):
    with pytest.raises(ConfigError, match=f"^{message}") as error:
        cfg(**settings)
    assert "\n" not in str(error.value)
