"""The native LLaDA2 MoE against the llada2_tiny golden fixture: block-causal and bidirectional logits, KV reuse
across blocks, the router's rules, strict loading and the config checks."""

import pytest
import torch
from safetensors.torch import load_file

from harness.models import KVCache, LLaDA2, LLaDA2Config, llada2_config, load_model, random_llada2
from harness.models.llada2 import Router

from .conftest import SHARED, fixture_copy

FIXTURE2 = SHARED / "fixtures" / "llada2_tiny"
IDS = {"mask_token_id": 310, "eos_token_id": 257}  # the fixture's; config.json holds neither


@pytest.fixture(scope="module")
def llada2():
    if not FIXTURE2.exists():
        pytest.fail(f"golden fixture not found at {FIXTURE2} (set DLLM_SHARED to the shared/ folder)")
    return load_model(FIXTURE2, **IDS)


@pytest.fixture(scope="module")
def expected():
    return load_file(FIXTURE2 / "expected.safetensors")


def block_causal(batch: int, queries: range, keys: int, block: int) -> torch.Tensor:
    """[batch, queries, keys]: query i sees key j iff j // block <= i // block."""
    q = torch.tensor(queries)[:, None] // block
    return (torch.arange(keys)[None] // block <= q).expand(batch, -1, -1)


@pytest.mark.parametrize("suffix, block", [("", 8), ("_long", 16)])
def test_block_causal_logits_match_official_code(llada2, expected, suffix, block):
    ids = expected["input_ids" + suffix]
    logits = llada2(ids, block_causal(len(ids), range(ids.shape[1]), ids.shape[1], block))
    torch.testing.assert_close(logits, expected["logits" + suffix], atol=1e-5, rtol=1e-5)


def test_no_mask_is_fully_bidirectional(llada2, expected):
    torch.testing.assert_close(llada2(expected["input_ids_bidir"]), expected["logits_bidir"], atol=1e-5, rtol=1e-5)


def test_cached_blocks_give_the_full_forward_rows(llada2, expected):
    """Block diffusion's KV reuse: fill the cache with the first blocks, then feed one block at a time with
    the cache and the block-causal mask over every cached key."""
    ids, block = expected["input_ids"], 8
    full = llada2(ids, block_causal(len(ids), range(32), 32, block))
    cache = KVCache()
    llada2(ids[:, :16], block_causal(len(ids), range(16), 16, block), cache=cache)
    for start in (16, 24):
        rows = range(start, start + block)
        logits = llada2(ids[:, start:start + block], block_causal(len(ids), rows, start + block, block),
                        start=start, cache=cache)
        torch.testing.assert_close(logits, full[:, start:start + block], atol=1e-5, rtol=1e-5)


def test_model_exposes_what_the_engine_needs(llada2):
    assert isinstance(llada2, LLaDA2) and llada2.block_diffusion and llada2.supports_cache
    assert (llada2.mask_token_id, llada2.eos_token_id, llada2.vocab_size, llada2.max_length) == (310, 257, 320, 256)


def test_random_llada2_uses_the_fixture_scheme():
    """Seed 1234 at the fixture's shape draws the fixture's weights (sorted names, one generator)."""
    model = random_llada2(llada2_config("tiny"), seed=1234)
    reference = load_file(FIXTURE2 / "model.safetensors")
    assert sorted(model.state_dict()) == sorted(reference)
    assert all(torch.equal(reference[name], t) for name, t in model.state_dict().items())


def _router(bias: list[float], top_k: int = 2) -> Router:
    """The tiny shape's router (8 experts in 4 groups of 2, 2 groups kept) with zero weights, so that every
    unbiased score is sigmoid(0) = 0.5 and the bias alone orders the experts."""
    router = Router(llada2_config("tiny", num_experts_per_tok=top_k))
    with torch.no_grad():
        router.weight.zero_()
        router.expert_bias.copy_(torch.tensor(bias))
    return router


def test_group_limit_keeps_the_best_groups():
    # Groups (by the sum of their 2 best biased scores): 0.9, 0.95, 0.8, 0.0. The plain top-2 would be experts
    # 0 and 4; group 2 is not kept, so the second choice is expert 2 from group 1.
    experts, weights = _router([0.9, 0.0, 0.5, 0.45, 0.8, 0.0, 0.0, 0.0])(torch.zeros(1, 64))
    assert experts.tolist() == [[0, 2]]
    torch.testing.assert_close(weights, torch.tensor([[1.25, 1.25]]))  # 0.5 / (0.5 + 0.5) × 2.5


def test_expert_bias_selects_but_does_not_weigh():
    router = Router(llada2_config("tiny"))
    torch.nn.init.normal_(router.weight, generator=torch.Generator().manual_seed(0))
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        experts, weights = router(x)
        scores = torch.sigmoid(x @ router.weight.T)
        chosen = scores.gather(1, experts)
        torch.testing.assert_close(weights, 2.5 * chosen / chosen.sum(-1, keepdim=True))
        unpicked = next(e for e in range(8) if e not in experts[0])  # by the first token
        router.expert_bias[unpicked] = 10.0  # now every token picks it, weighted by its unbiased score
        biased_experts, biased_weights = router(x)
    assert (biased_experts == unpicked).any(-1).all()
    chosen = scores.gather(1, biased_experts)
    torch.testing.assert_close(biased_weights, 2.5 * chosen / chosen.sum(-1, keepdim=True))


def test_single_expert_weight_is_not_normalised():
    experts, weights = _router([0.9, 0.0, 0.5, 0.45, 0.8, 0.0, 0.0, 0.0], top_k=1)(torch.zeros(1, 64))
    assert experts.tolist() == [[0]] and weights.tolist() == [[1.25]]  # 0.5 × 2.5


def _fixture_copy(tmp_path, state=None, **config):
    return fixture_copy(FIXTURE2, tmp_path, state, **config)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(renamed=s.pop("model.layers.1.mlp.experts.3.up_proj.weight")), "unexpected tensor 'renamed'"),
    (lambda s: s.update({"model.norm.weight": torch.ones(65)}), "'model.norm.weight' has shape (65,)"),
    (lambda s: s.pop("model.layers.1.mlp.gate.expert_bias"), "missing tensor 'model.layers.1.mlp.gate.expert_bias'"),
])
def test_strict_loading_names_the_bad_tensor(tmp_path, change, message):
    state = load_file(FIXTURE2 / "model.safetensors")
    change(state)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(_fixture_copy(tmp_path, state), **IDS)


def test_missing_token_ids_name_the_settings():
    with pytest.raises(ValueError, match=r"set model\.mask_token_id=156895 model\.eos_token_id=156892"):
        load_model(FIXTURE2)
    with pytest.raises(ValueError, match=r"no eos_token_id .* set model\.eos_token_id=156892 \("):
        load_model(FIXTURE2, mask_token_id=310)


@pytest.mark.parametrize("key, value", [("score_function", "softmax"), ("use_qk_norm", False),
                                        ("router_dtype", "bf16"), ("use_qkv_bias", True), ("rotary_dim", 16)])
def test_unsupported_config_value_names_file_and_key(tmp_path, key, value):
    folder = _fixture_copy(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=f"config.json: {key}="):
        LLaDA2Config.from_json(folder / "config.json", IDS)


def test_routing_overhead_times_the_real_dispatch():
    """The bookkeeping it times is the layer's own dispatch (identity experts give Σ weights · x), and every
    figure is a positive time or ratio."""
    from harness.bench import moe_routing_overhead
    from harness.models.llada2 import random_moe_layer
    layer = random_moe_layer(llada2_config("tiny"))
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    experts, weights = layer.gate(x)
    torch.testing.assert_close(layer.dispatch(x, experts, weights, lambda e, rows: rows), weights.sum(-1, True) * x)
    figures = moe_routing_overhead(llada2_config("tiny"), tokens=8, repeats=1)
    assert set(figures) >= {"router", "dispatch", "layer", "dense", "router_share", "overhead_vs_dense"}
    assert all(v > 0 for v in figures.values())


def test_lm_eval_refuses_log_likelihoods_of_a_block_diffusion_model(llada2):
    from harness.lmeval.model import DLLM
    with pytest.raises(NotImplementedError, match="block diffusion"):
        DLLM(model=llada2, gen_length=16, block_length=8).loglikelihood([])
