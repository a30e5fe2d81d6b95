"""Each policy's selection rule on hand-made confidences."""
import torch

from harness.decoding import POLICIES, DecodeConfig, StepState


def state(confidence, masked=None, quota=1, prediction=None, reference=None, logits=None):
    confidence = torch.tensor([confidence])
    n = confidence.shape[1]
    return StepState(
        logits=logits if logits is not None else torch.zeros(1, n, 4),
        prediction=torch.tensor([prediction]) if prediction else torch.zeros(1, n, dtype=torch.long),
        confidence=confidence,
        masked=torch.tensor([masked]) if masked else torch.ones(1, n, dtype=torch.bool),
        quota=torch.tensor([quota]), step=0,
        reference=torch.tensor([reference]) if reference else None)


def select(strategy, s, **settings):
    policy = POLICIES[strategy](DecodeConfig.create(strategy=strategy, **settings))
    return policy.select(s)[0].tolist()


def test_baseline_takes_the_quota_of_most_confident_masked():
    s = state([0.9, 0.2, 0.8, 0.5], masked=[False, True, True, True], quota=2)
    assert select("baseline", s) == [False, False, True, True]


def test_threshold_commits_above_tau_or_the_best_one():
    assert select("threshold", state([0.95, 0.91, 0.3, 0.99], masked=[True, True, True, False]),
                  threshold=0.9) == [True, True, False, False]
    assert select("threshold", state([0.2, 0.5, 0.3]), threshold=0.9) == [False, True, False]


def test_factor_rule():
    # sorted 0.99, 0.9, 0.6: (k+1)(1-c) = 0.02, 0.3, 1.6 -> with f=1 the first two pass, the last rank fails
    assert select("factor", state([0.6, 0.99, 0.9]), factor=1.0, rule="clean") == [False, True, True]
    assert select("factor", state([0.6, 0.99, 0.9]), factor=2.0) == [True, True, True]
    assert select("factor", state([0.1, 0.2]), factor=0.5, rule="clean") == [False, True]  # k = 1 always


def test_factor_reference_commits_all_when_only_the_last_rank_fails():
    # Fast-dLLM's loop: a failure at the last rank commits every masked position (the default rule) ...
    assert select("factor", state([0.6, 0.99, 0.9]), factor=1.0) == [True, True, True]
    assert select("factor", state([0.1, 0.2]), factor=0.5) == [True, True]
    # ... a failure earlier commits the passing prefix, as the clean rule does
    s = state([0.6, 0.99, 0.9, 0.5])
    assert select("factor", s, factor=1.0) == select("factor", s, factor=1.0, rule="clean") \
        == [False, True, True, False]


def test_entropy_bound():
    # entropies of [uniform over 4, one-hot, uniform over 2, one-hot]
    probs = torch.tensor([[[.25] * 4, [1, 0, 0, 0], [.5, .5, 0, 0], [1, 0, 0, 0]]])
    s = state([0.25, 1.0, 0.5, 1.0], logits=probs.log())
    # sorted entropies 0, 0, ln2, ln4; sum minus the largest: 0, 0, 0, ln2 = 0.69
    assert select("entropy_bounded", s, gamma=0.5) == [False, True, True, True]
    assert select("entropy_bounded", s, gamma=0.7) == [True, True, True, True]


def test_oracle_commits_matches_or_forces_one():
    s = state([0.3, 0.9, 0.5], prediction=[4, 5, 6], reference=[4, 7, 6])
    assert select("oracle", s) == [True, False, True]
    s = state([0.3, 0.9, 0.5], prediction=[1, 1, 1], reference=[4, 7, 6])
    assert select("oracle", s) == [False, True, False]


def test_topk_commits_the_k_most_confident_masked_whatever_their_confidence():
    s = state([0.1, 0.3, 0.2, 0.99, 0.05], masked=[True, True, True, False, True])
    assert select("topk", s, k=2) == [False, True, True, False, False]
    assert select("topk", s, k=3) == [True, True, True, False, False]
    assert select("topk", s, k=9) == [True, True, True, False, True]  # fewer masked than k: all of them


def test_margin_commits_above_the_margin_threshold_or_the_best_one():
    # p(top-1), p(top-2) per position: margins 0.9, 0.2, 0.96, 0.5 (position 2 is already decoded)
    probs = torch.tensor([[[.95, .05, 0, 0], [.5, .3, .2, 0], [.98, .02, 0, 0], [.6, .1, .1, .2]]])
    logits = probs.clamp(min=1e-9).log()
    s = state([0.95, 0.5, 0.98, 0.6], masked=[True, True, False, True], logits=logits)
    assert select("margin", s, margin_threshold=0.8) == [True, False, False, False]
    assert select("margin", s, margin_threshold=0.4) == [True, False, False, True]
    # none above 0.95: only the largest margin among the masked (not the decoded position 2)
    assert select("margin", s, margin_threshold=0.95) == [True, False, False, False]
    # both above tau = 0.9, but the first one's runner-up is close enough that its margin (0.87) is not
    rival = torch.tensor([[[.93, .06, .01, 0], [.96, .02, .02, 0], [.5, .3, .2, 0]]]).clamp(min=1e-9).log()
    s = state([0.93, 0.96, 0.5], logits=rival)
    assert select("threshold", s, threshold=0.9) == [True, True, False]
    assert select("margin", s, margin_threshold=0.9) == [False, True, False]
    assert select("margin", s, margin_threshold=0.1) == [True, True, True]  # margins 0.87, 0.94, 0.2
