"""Learn2PD: trace labels, the filter and its released-file loader, filter training, the learned policy."""
import argparse
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

from harness.decoding import ConfigError, DecodeConfig, generate
from harness.learn2pd.filter import Filter, load_filter, save_filter, token_flags
from harness.learn2pd.traces import TraceSet, collect, oracle_labels
from harness.learn2pd.training import train_filter
from harness.models import load_model
from harness.tasks import TASKS, held_out, vocabulary
from harness.tasks.tokenizer import build_tokenizer
from harness.train import make_model

from .conftest import FIXTURE

G, B = 32, 8


def test_labels_mark_predictions_equal_to_the_reference():
    reference = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    trace = SimpleNamespace(row=torch.tensor([0, 1, 1]), block=torch.tensor([1, 0, 1]),
                            prediction=torch.tensor([[7, 0], [1, 9], [3, 4]]),
                            valid=torch.tensor([[True, True], [True, True], [True, False]]))
    labels = oracle_labels(trace, reference, block_length=2)
    assert labels.tolist() == [[True, False], [True, False], [True, False]]  # invalid (cut) is never positive


def test_filter_matches_the_paper_and_loads_the_released_file(tmp_path):
    model = Filter(block_length=32)
    assert sum(p.numel() for p in model.parameters()) == 2112
    released = {"linear1.weight": torch.randn(32, 32), "linear1.bias": torch.randn(32),
                "linear2.weight": torch.randn(32, 32), "linear2.bias": torch.randn(32)}
    torch.save(released, tmp_path / "layer_2_flan.pth")
    loaded = load_filter(tmp_path / "layer_2_flan.pth")
    assert (loaded.depth, loaded.block_length, loaded.hidden) == (2, 32, 32)
    c = torch.rand(3, 32)
    expected = torch.relu(c @ released["linear1.weight"].T + released["linear1.bias"]) @ released["linear2.weight"].T
    torch.testing.assert_close(loaded(c), expected + released["linear2.bias"])
    # a block shortened by EoTP is zero-padded to B and the output cropped
    short = torch.rand(2, 20)
    torch.testing.assert_close(loaded.accept_probability(short),
                               torch.sigmoid(loaded(torch.nn.functional.pad(short, (0, 12))))[:, :20])


def test_saved_filter_roundtrip_with_extra_features(tmp_path):
    model = Filter(block_length=8, hidden=16, depth=4, features=("confidence", "position", "step"))
    path = save_filter(model, tmp_path / "f.safetensors")
    loaded = load_filter(path)
    c = torch.rand(5, 8)
    torch.testing.assert_close(loaded.accept_probability(c, 3), model.accept_probability(c, 3))


@pytest.fixture(scope="module")
def micro():
    """A small trained-from-scratch-shaped LLaDA with the tasks' tokenizer (random weights)."""
    args = argparse.Namespace(d_model=32, heads=2, layers=1, mlp=64, max_length=64, seed=0)
    return make_model(args, build_tokenizer(vocabulary())).eval().requires_grad_(False)


def test_collect_records_one_example_per_oracle_step(micro, tmp_path):
    prompts = [p.prompt for p in held_out(TASKS["perm"])["validation"][:12]]
    traces = collect(micro, prompts, DecodeConfig(gen_length=G, block_length=B), batch_size=5, meta={"task": "perm"})
    assert traces.meta["prompts"] == 12 and traces.meta["examples"] == len(traces) > 12 * (G // B) - 1
    assert traces.confidence.shape == (len(traces), B) and traces.valid.all()
    assert set(traces.prompt.tolist()) == set(range(12))
    loaded = TraceSet.load(traces.save(tmp_path / "t.safetensors"))
    assert torch.equal(loaded.label, traces.label) and loaded.meta == traces.meta
    assert torch.equal(loaded.outranked, traces.outranked) and traces.outranked.shape == (len(traces), B)
    assert not (traces.outranked & ~traces.repeat).any()  # only a repeated token can be outranked


def test_training_lowers_validation_bce():
    gen = torch.Generator().manual_seed(0)
    confidence = torch.rand(600, 8, generator=gen)
    labels = confidence > 0.6  # a learnable rule: confident positions are final
    traces = TraceSet(confidence, labels, torch.ones_like(labels), torch.zeros(600, dtype=torch.long),
                      torch.arange(600), meta={})
    _, short = train_filter(traces, iterations=1, progress=False)
    _, trained = train_filter(traces, iterations=1500, progress=False)
    assert trained["validation"]["bce"] < 0.5 * short["validation"]["bce"]
    assert trained["examples"] == {"train": 480, "validation": 60, "test": 60}


def accept_all_filter(folder, block_length):
    model = Filter(block_length=block_length)
    with torch.no_grad():
        model.linear2.bias.fill_(100.0)
    return str(save_filter(model, folder / f"all{block_length}.safetensors"))


@pytest.fixture(scope="module")
def accept_all(tmp_path_factory):
    return accept_all_filter(tmp_path_factory.mktemp("filter"), B)


def test_learned_at_tau_one_is_baseline(tiny, prompts, accept_all):
    base = generate(tiny, prompts, DecodeConfig(gen_length=G, block_length=B))
    out = generate(tiny, prompts, DecodeConfig.create(gen_length=G, block_length=B, strategy="learned",
                                                  filter_path=accept_all, filter_threshold=1.0))
    assert torch.equal(out.tokens, base.tokens) and torch.equal(out.nfe, base.nfe)


def test_learned_commits_what_the_filter_accepts(tiny, prompts, accept_all):
    out = generate(tiny, prompts, DecodeConfig.create(gen_length=G, block_length=B, strategy="learned",
                                                  filter_path=accept_all))
    assert out.nfe.tolist() == [G // B] * 3  # every block in one step
    first = tiny(torch.cat([prompts, torch.full((3, G), tiny.mask_token_id)], 1))
    assert torch.equal(out.tokens[:, :B], first[:, prompts.shape[1]:prompts.shape[1] + B].argmax(-1))


def test_learned_reads_the_blocks_tokens(tiny, prompts, tmp_path):
    """A filter that accepts exactly the positions no other position outranks: its first step commits those."""
    unique = Filter(block_length=B, depth=1, features=("confidence", "outranked"))
    with torch.no_grad():
        unique.linear1.weight.zero_()
        unique.linear1.weight[:, B:] = -20 * torch.eye(B)
        unique.linear1.bias.fill_(10.0)
    path = str(save_filter(unique, tmp_path / "unique.safetensors"))
    config = DecodeConfig.create(gen_length=G, block_length=B, strategy="learned", filter_path=path)
    out = generate(tiny, prompts, config, trace=True)
    first = out.trace.step == 0
    flags = token_flags(out.trace.prediction[first], out.trace.tokens[first], out.trace.confidence[first],
                        out.trace.masked[first], tiny.eos_token_id)
    assert flags["outranked"].any(), "the tiny model should predict some token twice in a first step"
    assert torch.equal(out.trace.committed[first], ~flags["outranked"])


def test_outranked_threshold_holds_back_positions_another_claims_more_surely(tiny, prompts, accept_all):
    """The accept-all filter with an outranked_threshold of 1: a first step commits exactly the positions
    whose token no other position claims more confidently (the quota pick is never outranked)."""
    out = generate(tiny, prompts, DecodeConfig.create(gen_length=G, block_length=B, strategy="learned",
                                                  filter_path=accept_all, outranked_threshold=1.0), trace=True)
    first = out.trace.step == 0
    flags = token_flags(out.trace.prediction[first], out.trace.tokens[first], out.trace.confidence[first],
                        out.trace.masked[first], tiny.eos_token_id)
    assert flags["outranked"].any(), "the tiny model should predict some token twice in a first step"
    assert torch.equal(out.trace.committed[first], ~flags["outranked"])
    loose = generate(tiny, prompts, DecodeConfig.create(gen_length=G, block_length=B, strategy="learned",
                                                    filter_path=accept_all, outranked_threshold=0.999))
    assert loose.nfe.tolist() == [G // B] * 3  # the filter's logit (100) passes any threshold below 1


def test_token_features_need_traces_that_carry_them(micro, tmp_path):
    from harness.learn2pd.__main__ import main
    prompts = [p.prompt for p in held_out(TASKS["perm"])["validation"][:4]]
    traces = collect(micro, prompts, DecodeConfig(gen_length=G, block_length=B), batch_size=4)
    traces.repeat = traces.outranked = None  # as written before token flags were recorded
    old = traces.save(tmp_path / "old.safetensors")
    with pytest.raises(SystemExit, match="needs token flags"):
        main(["train", str(old), "--features", "confidence", "outranked", "--out", str(tmp_path / "f.safetensors")])


def test_eotp_cuts_after_the_first_accepted_eos(prompts, tmp_path):
    eos_prone = load_model(FIXTURE)
    P = prompts.shape[1]
    canvas = torch.cat([prompts, torch.full((3, G), eos_prone.mask_token_id)], 1)
    with torch.no_grad():  # make EOS the first forward's prediction wherever its favourite token was
        head = eos_prone.model.transformer.ff_out.weight
        favourite = eos_prone(canvas)[:, P:].argmax(-1).flatten().mode().values
        head[eos_prone.eos_token_id] = 2 * head[favourite]
    out = generate(eos_prone, prompts, DecodeConfig.create(gen_length=G, block_length=G, strategy="learned",
                                                       filter_path=accept_all_filter(tmp_path, G), eotp=True))
    predicted = eos_prone(torch.cat([prompts, torch.full((3, G), eos_prone.mask_token_id)], 1))[:, P:]
    predicted = predicted.argmax(-1)
    rows = [r for r in range(3) if (predicted[r] == eos_prone.eos_token_id).any()]
    assert rows, "the EOS-prone fixture should predict EOS in some first block"
    for row in rows:  # the whole first block is accepted at step 1, so the first EOS in it ends the text
        cut = (predicted[row] == eos_prone.eos_token_id).nonzero()[0, 0].item() + 1
        assert torch.equal(out.tokens[row, :cut], predicted[row, :cut])
        assert (out.tokens[row, cut:] == eos_prone.eos_token_id).all() and out.nfe[row] == 1


def test_learned_needs_an_existing_filter():
    with pytest.raises(ConfigError, match="needs decoding.filter_path"):
        DecodeConfig.create(strategy="learned")
    with pytest.raises(ConfigError, match="filter file not found"):
        DecodeConfig.create(strategy="learned", filter_path="/nonexistent/filter.safetensors")
    with pytest.raises(ConfigError, match="filter_threshold must be in"):
        DecodeConfig.create(strategy="learned", filter_path="x", filter_threshold=0)
    with pytest.raises(ConfigError, match="outranked_threshold must be in"):
        DecodeConfig.create(strategy="learned", filter_path="tiny", outranked_threshold=1.5)
    with pytest.raises(ConfigError, match=r"outranked_threshold \(0.5\) below filter_threshold \(0.8\)"):
        DecodeConfig.create(strategy="learned", filter_path="tiny", filter_threshold=0.8, outranked_threshold=0.5)


def test_token_flags_mark_repeated_and_outranked_predictions():
    EOS, MASK = 0, 9
    tokens = torch.tensor([[5, MASK, MASK, MASK, MASK, EOS]])  # 5 decoded; the last position cut by EoTP
    prediction = torch.tensor([[1, 5, 7, 7, EOS, 3]])
    confidence = torch.tensor([[1.0, 0.9, 0.4, 0.6, 0.3, 0.0]])
    flags = token_flags(prediction, tokens, confidence, tokens == MASK, EOS)
    # 5 is decoded already, so its second claim is outranked; of the two 7s the more confident wins;
    # EOS (predicted or past the cut) never counts as a repeat
    assert flags["repeat"].tolist() == [[True, True, True, True, False, False]]
    assert flags["outranked"].tolist() == [[False, True, True, False, False, False]]
    on_numpy = token_flags(prediction.numpy(), tokens.numpy(), confidence.numpy(), (tokens == MASK).numpy(), EOS)
    assert all(on_numpy[name].tolist() == flags[name].tolist() for name in flags)  # the CPU decode path


ALL_FEATURES = ("confidence", "position", "step", "repeat", "outranked")


@pytest.mark.parametrize("features", [("confidence",), ("confidence", "position"), ("confidence", "position", "step"),
                                      ALL_FEATURES, ("outranked", "confidence", "step")])
@pytest.mark.parametrize("depth", [1, 2, 3])  # later layers' biases are folded into their weights
def test_decoding_fast_path_matches_the_trained_network(features, depth):
    torch.manual_seed(0)
    filter_ = Filter(8, 16, depth, features)
    assert filter_.reads_tokens == ("outranked" in features)
    MASK, EOS = 50, 0

    def state(width):
        tokens = torch.where(torch.rand(4, width) < 0.6, MASK, torch.randint(0, 6, (4, width)))
        return torch.rand(4, width), torch.randint(0, 6, (4, width)), tokens, tokens == MASK

    def network(confidence, step, prediction, tokens, masked):
        flags = token_flags(prediction, tokens, confidence, masked, EOS)
        return filter_(filter_.featurize(confidence, step, flags))[:, :confidence.shape[1]]

    torch_fold = filter_._fold_for_decoding(as_numpy=False)  # the path a GPU takes, run on the CPU
    for width, step in ((8, 0), (8, 3), (5, 2)):  # full block, later step, block cut by EoTP
        confidence, prediction, tokens, masked = state(width)
        reference = network(confidence, step, prediction, tokens, masked)
        with torch.no_grad():
            fast = filter_.decode_logits(confidence, step, prediction, tokens, masked, EOS)
            with mock.patch.object(filter_, "_folded", lambda: torch_fold):
                in_torch = filter_.decode_logits(confidence, step, prediction, tokens, masked, EOS)
        assert torch.allclose(fast, reference, atol=1e-4) and torch.allclose(in_torch, reference, atol=1e-4)
        if filter_.reads_tokens:  # the step's flags handed in (the outranked threshold computes them first)
            given = filter_.decode_logits(confidence, step, flags=filter_.step_flags(prediction, tokens, confidence,
                                                                                     masked, EOS))
            with mock.patch.object(filter_, "_folded", lambda: torch_fold):
                flags = filter_.step_flags(prediction, tokens, confidence, masked, EOS)
                assert isinstance(flags["outranked"], torch.Tensor)
                given_in_torch = filter_.decode_logits(confidence, step, flags=flags)
            assert torch.equal(given, fast) and torch.equal(given_in_torch, in_torch)
    with torch.no_grad():  # weights updated after a decode: the folded copy is rebuilt
        filter_.linear1.weight.add_(0.5)
        assert torch.allclose(filter_.decode_logits(confidence, 1, prediction, tokens, masked, EOS),
                              network(confidence, 1, prediction, tokens, masked), atol=1e-4)
    if filter_.reads_tokens:
        with pytest.raises(ValueError, match="reads the block's tokens"):
            filter_.block_logits(confidence, 1)


def test_collect_with_eotp_records_blocks_cut_short(tmp_path):
    """EoTP traces (the shipped filter trains on them too) hold positions past the cut as invalid."""
    from harness.learn2pd.__main__ import main
    main(["collect", "--model", "tiny", "--task", "perm", "--num-prompts", "20", "--gen-length", "32",
          "--block-length", "8", "--eotp", "--out", str(tmp_path / "perm_eotp.safetensors")])
    traces = TraceSet.load(tmp_path / "perm_eotp.safetensors")
    assert traces.meta["eotp"] is True and traces.meta["prompts"] == 20
    assert not traces.valid.all() and not traces.label[~traces.valid].any()  # cut positions: no label
    assert len(traces) < 20 * 32 // 8 * 2  # EoTP skips whole blocks of padding
