"""The opt-in compiled forward (harness/models/compiled.py) on the CPU with inductor: greedy decodes equal the
eager ones token for token, dynamic shapes keep the graph count bounded, and `model.compile` flows through
load_model, Hydra, lm-eval's model args and the recorded protocol. Compiling costs ~25 s a graph on a 2-core CPU:
one compiled golden fixture serves the module, on small canvases."""
import pytest
import torch
from lm_eval.api.instance import Instance

from harness.decoding import DecodeConfig, generate
from harness.lmeval import DLLM
from harness.models import KVCache, compile_stats, load_model

from .conftest import FIXTURE
from .test_config_errors import run_failing_cell
from .test_sweep import composed


@pytest.fixture(scope="module")
def compiled():
    return load_model(FIXTURE, compile="default")


def padded_prompts(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids, mask = torch.full((len(lengths), width), 257), torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:], mask[row, width - n:] = torch.randint(0, 250, (n,), generator=gen), 1
    return ids, mask


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_greedy_decodes_equal_the_eager_ones(tiny, compiled, cache):
    ids, mask = padded_prompts((10, 6, 8))
    config = DecodeConfig(gen_length=16, block_length=8, cache=cache)
    eager = generate(tiny, ids, config, attention_mask=mask)
    fast = generate(compiled, ids, config, attention_mask=mask)
    assert torch.equal(fast.tokens, eager.tokens) and torch.equal(fast.nfe, eager.nfe)


def test_logits_match_eager_full_and_cached(tiny, compiled):
    ids, mask = padded_prompts((12, 9, 7), seed=1)
    x = torch.cat([ids, torch.full((3, 16), tiny.mask_token_id)], 1)
    keys = torch.cat([mask, torch.ones(3, 16, dtype=torch.long)], 1).bool()  # the engine's masks are bool
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, keys), tiny(x, keys), atol=1e-5, rtol=1e-5)
        caches = KVCache(), KVCache()
        for model, cache in zip((tiny, compiled), caches):
            model(x, keys, cache=cache)
        block = x[:, 12:20].contiguous()  # as the engine feeds it (a strided view is another graph)
        torch.testing.assert_close(compiled(block, keys, start=12, cache=caches[1]),
                                   tiny(block, keys, start=12, cache=caches[0]), atol=1e-5, rtol=1e-5)


def test_new_prompt_lengths_and_batches_compile_nothing(tiny, compiled):
    # dynamic shapes: after the decodes above, other widths, batch sizes and generation lengths reuse the graphs
    config = DecodeConfig(gen_length=24, block_length=8, cache="dual")
    for lengths in [(5, 11), (14, 3, 9, 12)]:
        ids, mask = padded_prompts(lengths, seed=len(lengths))
        before = compile_stats(compiled)
        fast = generate(compiled, ids, config, attention_mask=mask)
        assert compile_stats(compiled) == before, "a new shape recompiled"
        assert torch.equal(fast.tokens, generate(tiny, ids, config, attention_mask=mask).tokens)
    stats = compile_stats(compiled)
    assert stats["compile"] == "default" and 1 <= stats["compiled_graphs"] <= 8 and stats["compile_seconds"] > 0
    assert compile_stats(tiny) == {"compile": "none", "compiled_graphs": 0, "compile_seconds": 0.0}


def test_a_graph_past_the_limit_is_an_error_not_a_silent_eager_fallback(compiled):
    ids, mask = padded_prompts((6, 4))
    with torch._dynamo.config.patch(recompile_limit=1), pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
        compiled(ids, mask.long())  # a long mask: a variant never compiled (the engine's are bool)


def test_lm_eval_model_arg_warms_up_the_compile_and_records_the_path():
    lm = DLLM("tiny", compile="default", block_length=8, batch_size=1, warmup=1)
    prompt = "math : ann has 5 apples . ann finds 3 more . how many apples does ann have ?"
    request = Instance("generate_until", {}, (prompt, {"until": [], "max_gen_toks": 16}), 0, ("t", 0, 1))
    lm.generate_until([request, request])
    protocol = lm.protocol()["compile"]
    assert protocol["compile"] == "default" and protocol["compiled_graphs"] >= 1
    assert protocol["timed_compiled_graphs"] == 0 and protocol["timed_compile_seconds"] == 0.0  # all in warm-up
    assert DLLM("tiny", block_length=8).protocol()["compile"]["compile"] == "none"


def test_compile_setting_flows_through_hydra_and_fails_before_weights_load(tmp_path):
    assert composed().model.compile == "none"
    assert composed("model.compile=reduce-overhead").model.compile == "reduce-overhead"
    error = run_failing_cell(tmp_path, "model.compile=fast")
    assert "model.compile=fast: must be one of none, default, reduce-overhead" in error
    with pytest.raises(ValueError, match="model.compile='fast': choose one of none, default, reduce-overhead"):
        load_model("/no/such/folder", compile="fast")  # the setting is checked before the folder


def test_dream_compiles_and_llada2_is_refused_before_its_weights_load(tmp_path):
    from .conftest import SHARED
    dream_folder = SHARED / "fixtures" / "dream_tiny"
    eager, fast = load_model(dream_folder), load_model(dream_folder, compile="default")
    ids, mask = padded_prompts((10, 7))
    config = DecodeConfig(gen_length=16, block_length=8, cache="dual", strategy="threshold")
    a, b = generate(eager, ids, config, attention_mask=mask), generate(fast, ids, config, attention_mask=mask)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.nfe, b.nfe)
    with pytest.raises(ValueError, match="model.compile=default: the native llada2_moe model is not compiled yet"):
        load_model(SHARED / "fixtures" / "llada2_tiny", compile="default", mask_token_id=310, eos_token_id=257)
