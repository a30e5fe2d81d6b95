"""The re-masking strategies (WINO, Saber, ReMDM, RCR): their rules on hand-built steps, end-to-end decodes on
the golden fixture counted by a forward meter, the combinations they refuse, and batches equal to single rows."""
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from harness.decoding import POLICIES, ConfigError, DecodeConfig, StepState, generate
from harness.models import MaskedLM
from harness.models.metered import Metered

from .conftest import assert_batch_decodes_like_its_rows

MASK = 3  # hand-built steps: a 4-token vocabulary whose last token is the mask


def peaked(confidences, tokens=None):
    """Logits whose softmax puts `c` on the given token (0 by default) and spreads the rest evenly."""
    rows = []
    for i, c in enumerate(confidences):
        token = 0 if tokens is None else tokens[i]
        p = torch.full((4,), (1 - c) / 3, dtype=torch.float64)
        p[token] = c
        rows.append(p.log())
    return torch.stack(rows)[None]


def policy(strategy, **settings):
    settings = {"gen_length": 8, "block_length": 8} | settings
    return POLICIES[strategy](DecodeConfig.create(strategy=strategy, **settings))


def step_state(confidences, masked, *, tokens=None, memory=None, step=0, block_start=0, block_end=None):
    n = len(confidences)
    masked = torch.tensor([masked])
    tokens = torch.tensor([tokens]) if tokens is not None else torch.where(masked, MASK, 0)
    logits = peaked(confidences)
    return StepState(logits=logits, prediction=logits.argmax(-1), confidence=logits.softmax(-1).amax(-1).float(),
                     masked=masked, quota=torch.tensor([1]), step=step, tokens=tokens, rows=torch.tensor([0]),
                     memory=memory, block_start=block_start, block_end=block_end or n, mask_id=MASK,
                     inside=torch.ones(1, n, dtype=torch.bool))


def without_mask(c):
    """The confidence `c` of `peaked` once the mask token leaves the softmax (ParallelBench's override)."""
    return c / (1 - (1 - c) / 3)


def row(mask):
    return mask[0].tolist()


# --- WINO ----------------------------------------------------------------------------------------------------

def wino_step(confidences, masked, shadow_confidences, cap=30, step=1, **knobs):
    wino = policy("wino", **knobs)
    memory = wino.begin(torch.zeros(1, 8, dtype=torch.long), 0)
    memory.cap[0], memory.shadow = cap, peaked(shadow_confidences)
    return wino.step(step_state(confidences, masked, memory=memory, step=step)), memory


def test_wino_drafts_above_the_threshold_at_most_max_accept_else_the_best_one():
    masked = [True] * 7 + [False]
    decision, _ = wino_step([0.9, 0.95, 0.7, 0.65, 0.8, 0.85, 0.62, 0.99], masked, [0.99] * 8)
    # all 7 masked pass 0.6, but max_accept = max(int(0.7 * 7), 5) = 5: the five most confident
    assert row(decision.commit) == [True, True, True, False, True, True, False, False]
    decision, _ = wino_step([0.4, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3], masked, [0.99] * 8)
    assert row(decision.commit) == [False, True, False, False, False, False, False, False]  # none passes: the best


def test_wino_verifies_earlier_commits_through_the_shadow_only_after_a_multi_token_draft():
    masked = [True, True, True, False, False, False, True, True]
    shadow = [0.99, 0.99, 0.99, 0.5, 0.95, 0.8, 0.99, 0.99]  # p(current token) with itself hidden
    decision, memory = wino_step([0.9, 0.95, 0.3, 0.9, 0.9, 0.9, 0.3, 0.3], masked, shadow)
    assert row(decision.commit) == [True, True, False, False, False, False, False, False]
    # this step's commits are not verified; earlier ones below 0.9 (positions 3 and 5) go back
    assert row(decision.remask) == [False, False, False, True, False, True, False, False]
    assert memory.cap.tolist() == [2]  # the next step's cap: this step's accept count
    decision, _ = wino_step([0.9, 0.5, 0.3, 0.9, 0.9, 0.9, 0.3, 0.3], masked, shadow)
    assert not decision.remask.any()  # one token drafted: no verify


def test_wino_verify_is_capped_by_the_previous_steps_accept_count():
    masked = [True, True, True, False, False, False, True, True]
    shadow = [0.99, 0.99, 0.99, 0.5, 0.7, 0.8, 0.99, 0.99]
    decision, _ = wino_step([0.9, 0.95, 0.3, 0.9, 0.9, 0.9, 0.3, 0.3], masked, shadow, cap=3)
    assert row(decision.remask) == [False, False, False, True, True, False, False, False]  # 3 >= cap: the 2 lowest
    decision, _ = wino_step([0.9, 0.95, 0.3, 0.9, 0.9, 0.9, 0.3, 0.3], masked, shadow, cap=3, step=0)
    assert decision.remask.sum() == 3  # a block's first step resets the cap to 30


# --- Saber ---------------------------------------------------------------------------------------------------

def saber_step(confidences, masked, committed_conf, previous, n=2):
    saber = policy("saber", n=n)
    memory = saber.begin(torch.zeros(1, 8, dtype=torch.long), 0)  # no prompt: window column = position
    memory.committed_conf[0, :len(committed_conf)] = torch.tensor(committed_conf)
    memory.previous[0, :len(previous)] = torch.tensor(previous)
    return saber.step(step_state(confidences, masked, memory=memory, block_start=3)), memory


def test_saber_commits_above_the_mean_commit_confidence_and_backtracks_the_largest_drop():
    # columns 0-2: an earlier block (committed at 0.9, 0.8, 0.7: threshold 0.8); 3-5: the current block
    masked = [False, False, False, True, True, True]
    decision, memory = saber_step([0.95, 0.4, 0.69, 0.85, 0.81, 0.3], masked, [0.9, 0.8, 0.7],
                                  [0.9, 0.8, 0.7, 0.5, 0.5, 0.5])
    assert row(decision.commit) == [False, False, False, True, True, False]
    # fix = 2, k = max(2 // 2, ceil(2 / 8)) = 1: the earlier block's token whose confidence fell 0.8 -> 0.4
    assert row(decision.remask) == [False, True, False, False, False, False]
    assert memory.committed_conf[0, 3:5].tolist() == pytest.approx([0.85, 0.81])
    assert memory.previous[0, :6].tolist() == pytest.approx([0.95, 0.4, 0.69, 0.85, 0.81, 0.3])
    assert memory.previous[0, 6:].isneginf().all()  # beyond the block: first seen later, drifting +inf


def test_saber_can_revoke_its_own_commit_and_falls_back_to_top_n():
    masked = [False, False, False, True, True, True]
    decision, _ = saber_step([0.9, 0.75, 0.7, 0.85, 0.81, 0.3], masked, [0.9, 0.8, 0.7],
                             [0.9, 0.8, 0.7, 0.5, 0.99, 0.5])
    assert row(decision.remask) == [False, False, False, False, True, False]  # committed now, dropped 0.99 -> 0.81
    decision, _ = saber_step([0.9, 0.75, 0.7, 0.5, 0.6, 0.3], masked, [0.9, 0.8, 0.7], [0.9] * 6)
    assert row(decision.commit) == [False, False, False, True, True, False]  # none above 0.8: the top 2


def test_saber_does_not_remask_once_the_block_is_full():
    decision, _ = saber_step([0.9, 0.75, 0.7, 0.85, 0.81, 0.3], [False] * 4 + [True, True], [0.9, 0.8, 0.7],
                             [0.99] * 6)
    assert row(decision.commit) == [False] * 4 + [True, True] and not decision.remask.any()


# --- ReMDM ---------------------------------------------------------------------------------------------------

def test_remdm_inserts_its_remask_steps_at_seven_eighths_of_the_block():
    assert policy("remdm", gen_length=32, block_length=8, remdm_steps=2).schedule(32) == [False] * 7 + [True] * 2 + [False]
    assert policy("remdm", gen_length=16, block_length=16, steps=8, remdm_steps=3).schedule(16) == [False] * 8 + [True] * 3
    assert policy("remdm", gen_length=32, block_length=8).schedule(32).count(True) == 8  # None: as many as ordinary


def test_remdm_remasks_the_lowest_commit_time_confidence_before_a_remask_step():
    remdm = policy("remdm", remdm_steps=1)  # G = B = 8: 7 ordinary steps, one re-mask step, the last one
    memory = remdm.begin(torch.zeros(1, 8, dtype=torch.long), 0)
    memory.quota[0] = 1
    memory.commit_conf[0] = torch.tensor([0.9, 0.2, 0.8, 0.7, 0.95, 0.6, float("inf"), float("inf")],
                                         dtype=torch.float64)
    masked = [False] * 6 + [True, True]
    decision = remdm.step(step_state([0.9] * 6 + [0.99, 0.5], masked, memory=memory, step=6))
    assert row(decision.commit) == [False] * 6 + [True, False]
    assert row(decision.remask) == [False, True] + [False] * 6  # stale confidence 0.2, not re-evaluated
    assert memory.commit_conf[0, 1].isinf() and memory.commit_conf[0, 6] == pytest.approx(without_mask(0.99))
    assert policy("remdm").step(step_state([0.9, 0.5] + [0.3] * 6, [True] * 8, memory=memory, step=0)).remask is None


# --- RCR -----------------------------------------------------------------------------------------------------

def test_rcr_commits_every_mask_and_keeps_the_quota_with_the_best_running_confidence():
    rcr = policy("rcr", gen_length=8, block_length=4, steps=8)  # 4 steps per block: ratios .75, .5, .25, 0
    memory = rcr.begin(torch.zeros(1, 8, dtype=torch.long), 0)
    memory.running[0, :4] = torch.tensor([0.9, 0.3, 0.8, 0.95])  # the first block's commit-time confidences
    masked = [False] * 4 + [True] * 4
    decision = rcr.step(step_state([0.5] * 4 + [0.6, 0.99, 0.5, 0.7], masked, memory=memory, block_start=4))
    assert row(decision.commit) == masked
    # floor(4 * 0.75) = 3 go back: the lowest running confidences, an earlier block's token included
    assert row(decision.remask) == [False, True, False, False, True, False, True, False]
    assert memory.running[0].tolist() == pytest.approx([0.9, 0.3, 0.8, 0.95] + [without_mask(c) for c in (0.6, 0.99, 0.5, 0.7)])
    last = rcr.step(step_state([0.5] * 8, masked, memory=memory, step=3, block_start=4))
    assert last.remask is None  # the block's last step re-masks nothing


# --- end to end on the golden fixture ------------------------------------------------------------------------

@pytest.mark.parametrize("strategy, settings, nfe", [
    ("wino", dict(threshold=0.02, threshold_back=0.95), None),
    ("saber", dict(), None),
    ("remdm", dict(remdm_steps=2), 32 + 4 * 2),  # steps + blocks x remdm_steps
    ("remdm", dict(steps=16, remdm_steps=1, remdm_number=2, gen_length=16, block_length=16), 16 + 1),
    ("rcr", dict(), 32),  # steps per block x blocks
    ("rcr", dict(steps=16), 16),
    ("rcr", dict(steps=64), 64),  # more steps than tokens: the block's later forwards are spent, as in the reference
])
def test_decodes_everything_and_counts_every_forward(tiny, prompts, strategy, settings, nfe):
    metered = Metered(tiny)
    config = DecodeConfig.create(strategy=strategy, **{"gen_length": 32, "block_length": 8} | settings)
    out = generate(metered, prompts[:1], config)
    assert not (out.tokens == tiny.mask_token_id).any()
    assert out.nfe.item() == metered.calls == out.steps_per_block.sum()
    if nfe is not None:
        assert out.nfe.item() == nfe
    assert out.remasked.item() > 0


@pytest.mark.parametrize("strategy", ["wino", "saber", "remdm", "rcr"])
def test_eotp_cuts_rows_and_rules_leave_positions_past_the_cut_alone(eos_prone, prompts, strategy):
    metered = Metered(eos_prone)
    out = generate(metered, prompts, DecodeConfig.create(strategy=strategy, gen_length=32, block_length=8,
                                                         eotp=True))
    assert not (out.tokens == eos_prone.mask_token_id).any() and (out.eotp_skipped > 0).any()
    for tokens, skipped in zip(out.tokens, out.eotp_skipped.tolist()):
        assert (tokens[32 - skipped:] == eos_prone.eos_token_id).all()
    assert out.steps_per_block.sum(1).max() <= metered.calls <= out.nfe.sum()


@pytest.mark.parametrize("settings, message", [
    (dict(strategy="wino", cache="prefix"), "strategy 'wino' cannot run with cache='prefix': its forward appends"),
    (dict(strategy="saber", cache="dual"), "strategy 'saber' cannot run with cache='dual': it re-masks tokens of "
                                           "earlier blocks"),
    (dict(strategy="rcr", cache="prefix"), "strategy 'rcr' cannot run with cache='prefix'"),
    (dict(strategy="remdm", temperature=0.5), "strategy 'remdm' decodes greedily"),
    (dict(strategy="remdm", steps=12), r"decoding.steps \(12\) must divide gen_length \(32\)"),
    (dict(strategy="remdm", steps=16), r"decoding.steps \(16\) leaves masks in every block: .* steps = gen_length"),
    (dict(strategy="rcr", mode="square"), "decoding.mode must be linear, cosine or pow<k>, got 'square'"),
    (dict(strategy="wino", threshold_back=1.5), r"decoding.threshold_back must be in \[0, 1\]"),
])
def test_refused_combinations_are_one_line_at_config_time(settings, message):
    with pytest.raises(ConfigError, match=message):
        DecodeConfig.create(**{"gen_length": 32, "block_length": 8} | settings)


def test_remdm_runs_with_the_kv_caches(tiny, prompts):
    """ReMDM reads and re-masks only the current block, so the cached forwards serve it."""
    out = generate(tiny, prompts[:1], DecodeConfig.create(strategy="remdm", gen_length=16, block_length=8,
                                                          remdm_steps=1, cache="dual"))
    assert out.nfe.item() == 16 + 2 and not (out.tokens == tiny.mask_token_id).any()


def test_wino_refuses_a_model_without_position_ids_before_its_first_forward():
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    model = Metered(MaskedLM(BertForMaskedLM(config).eval(), mask_token_id=63, eos_token_id=62, max_length=64))
    with pytest.raises(ConfigError, match="strategy 'wino' needs a model whose forward takes position_ids"):
        generate(model, torch.randint(0, 60, (1, 6)), DecodeConfig.create(strategy="wino", gen_length=8,
                                                                          block_length=8))
    assert model.calls == 0


@pytest.mark.parametrize("strategy, settings", [
    ("wino", dict(threshold=0.02, threshold_back=0.95)), ("saber", dict()), ("remdm", dict(remdm_steps=2)),
    ("rcr", dict(steps=16)),
])
def test_batched_rows_equal_single_rows(tiny, strategy, settings):
    """Every rule keeps its state per row, so left-padded prompts decoded together decode as alone."""
    assert_batch_decodes_like_its_rows(tiny, DecodeConfig.create(strategy=strategy, gen_length=16, block_length=8,
                                                               **settings))
