"""The native Dream against its golden fixture (official modeling code's logits), its shift, strict loading,
the KV cache, and the decoding engine on it."""

import pytest
import torch
from safetensors.torch import load_file

from harness.decoding import DecodeConfig, generate
from harness.models import Dream, DreamConfig, KVCache, load_model, random_dream
from harness.models.dream import padded_positions
from harness.models.loading import check_model_folder, native_models

from .conftest import ON_CUDA, SHARED, assert_batch_decodes_like_its_rows, fixture_copy, float32_tolerance

FIXTURE = SHARED / "fixtures" / "dream_tiny"
TOL = dict(atol=1e-5, rtol=1e-5)  # the fixture README's fp32 CPU tolerance


@pytest.fixture(scope="module")
def dream():
    """The golden fixture's Dream (official layout, random weights; mask 310, eos = pad 257, max length 128)."""
    if not FIXTURE.exists():
        pytest.fail(f"Dream fixture not found at {FIXTURE} (set DLLM_SHARED to the shared/ folder)")
    return load_model(FIXTURE)


@pytest.fixture(scope="module")
def expected():
    return load_file(FIXTURE / "expected.safetensors")


@pytest.fixture(scope="module")
def padded():
    return load_file(FIXTURE / "expected_padded.safetensors")


@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
@pytest.mark.parametrize("suffix", ["", "_long"])
def test_logits_match_official_code(dream, expected, suffix, device):
    model = dream if device == "cpu" else load_model(FIXTURE, device=device)
    raw = model.next_token_logits(expected["input_ids" + suffix].to(device)).cpu()
    tolerance = float32_tolerance(model)
    torch.testing.assert_close(raw, expected["logits" + suffix], atol=tolerance, rtol=tolerance)


def test_forward_aligns_the_shifted_logits(dream, expected):
    """Row i of the forward is the reference's raw row i - 1 (its prediction of token i); row 0 repeats raw 0."""
    for suffix in ("", "_long"):
        out, raw = dream(expected["input_ids" + suffix]), expected["logits" + suffix]
        torch.testing.assert_close(out[:, 1:], raw[:, :-1], **TOL)
        torch.testing.assert_close(out[:, 0], raw[:, 0], **TOL)


def test_left_padded_batch_matches_official_code(dream, padded):
    """Dream's padding convention: hidden pad keys and positions counted from each row's first real token."""
    mask = padded["attention_mask"].bool()
    assert torch.equal(padded_positions(mask, 0, 0, mask.shape[1]), padded["position_ids"])
    raw = dream.next_token_logits(padded["input_ids"], padded["attention_mask"])
    assert raw.isfinite().all()  # pad queries too
    torch.testing.assert_close(raw[mask], padded["logits"][mask], **TOL)


def test_model_exposes_what_the_engine_needs(dream):
    assert (dream.mask_token_id, dream.eos_token_id, dream.vocab_size, dream.max_length) == (310, 257, 320, 128)
    assert dream.supports_cache and not dream.block_diffusion and dream.tokenizer is None
    assert native_models()["Dream"] is Dream and check_model_folder(FIXTURE) == 128


def test_random_dream_draws_the_fixture_weights(dream):
    """The fixture's weights are `random_dream`'s recipe from seed 1234: sorted names, one generator."""
    weights = random_dream(dream.config, seed=1234).state_dict()
    assert all(torch.equal(weights[name], p) for name, p in load_file(FIXTURE / "model.safetensors").items())


def _folder(tmp_path, state=None, **config):
    return fixture_copy(FIXTURE, tmp_path, state, **config)


def test_official_7b_config_maps(tmp_path):
    folder = _folder(tmp_path, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                     max_position_embeddings=131072, eos_token_id=151643, pad_token_id=151643,
                     mask_token_id=151666)
    cfg = DreamConfig.from_json(folder / "config.json")
    assert (cfg.head_dim, cfg.mask_token_id, cfg.eos_token_id, cfg.max_length) == (128, 151666, 151643, 131072)


@pytest.mark.parametrize("rename, message", [
    (("model.layers.1.self_attn.k_proj.bias", "model.layers.1.self_attn.k_proj.b"),
     "unexpected tensor 'model.layers.1.self_attn.k_proj.b'"),
    (("model.layers.0.mlp.up_proj.weight", None), "missing tensor 'model.layers.0.mlp.up_proj.weight'"),
    (("lm_head.weight", torch.zeros(320, 65)), r"'lm_head.weight' has shape \(320, 65\)"),
])
def test_strict_loading_names_the_bad_tensor(tmp_path, rename, message):
    state = load_file(FIXTURE / "model.safetensors")
    name, change = rename
    if isinstance(change, str):
        state[change] = state.pop(name)
    elif change is None:
        state.pop(name)
    else:
        state[name] = change
    with pytest.raises(ValueError, match=message):
        load_model(_folder(tmp_path, state))


@pytest.mark.parametrize("config, message", [
    (dict(use_sliding_window=True), "use_sliding_window=True is not supported"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), "rope_scaling=.* is not supported"),
    (dict(tie_word_embeddings=True), "tie_word_embeddings=True is not supported"),
    (dict(rope_theta=None), "missing Dream config key 'rope_theta'"),
])
def test_bad_config_is_one_line_naming_file_and_key(tmp_path, config, message):
    folder = _folder(tmp_path, **config)
    with pytest.raises(ValueError, match=message) as err:
        load_model(folder)
    assert str(folder / "config.json") in str(err.value) and "\n" not in str(err.value)


def test_token_ids_from_the_tokenizer_fill_a_config_without_them(tmp_path):
    folder = _folder(tmp_path, mask_token_id=None)
    cfg = DreamConfig.from_json(folder / "config.json", {"mask_token_id": 300, "eos_token_id": 1})
    assert (cfg.mask_token_id, cfg.eos_token_id) == (300, 257)  # the config's own eos wins


def test_cache_fill_gives_the_same_logits(dream, expected):
    ids = expected["input_ids"]
    cache = KVCache()
    torch.testing.assert_close(dream(ids, cache=cache), dream(ids), atol=0, rtol=0)
    assert len(cache) == ids.shape[1] and len(cache.keys) == 2


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("batch", ["plain", "padded"])
def test_cached_span_forward_matches_full_forward(dream, expected, padded, mode, batch):
    """Right after the refresh, a block (dual) or block + suffix (prefix) forward served the rest from the
    cache equals the full forward's rows of that span; with padding its positions come from the key mask."""
    data = expected if batch == "plain" else padded
    ids, mask = data["input_ids"], data.get("attention_mask")
    full = dream.next_token_logits(ids, mask)
    cache = KVCache()
    dream(ids, mask, cache=cache)
    s, e = 16, 24 if mode == "dual" else ids.shape[1]
    span = dream.next_token_logits(ids[:, s:e], mask, start=s, cache=cache)
    torch.testing.assert_close(span, full[:, s:e], **TOL)
    # aligned, the span's first position is predicted from the one before it (a read-only query), as uncached
    aligned = dream(ids[:, s:e], mask, start=s, cache=cache)
    torch.testing.assert_close(aligned, full[:, s - 1:e - 1], **TOL)
    torch.testing.assert_close(aligned[:, 1:], span[:, :-1], atol=0, rtol=0)  # the other rows: Fast-dLLM's
    after = [k.clone() for k in cache.keys]
    dream(ids[:, s:e], mask, start=s, cache=cache)
    assert all(torch.equal(a[:, :, :s], k[:, :, :s]) for a, k in zip(after, cache.keys))  # the query wrote nothing


def test_cached_forwards_take_positions_from_the_key_mask(dream, padded, monkeypatch):
    """RoPE is relative, so logits barely see a uniform offset: check the positions themselves, for the
    refresh and for a block served by the cache (the key mask then spans every cached position)."""
    seen = []
    rope = dream.rope
    monkeypatch.setattr(dream, "rope", lambda positions: seen.append(positions) or rope(positions))
    ids, mask = padded["input_ids"], padded["attention_mask"]
    cache = KVCache()
    dream(ids, mask, cache=cache)
    dream(ids[:, 16:24], mask, start=16, cache=cache)
    assert torch.equal(seen[0], padded["position_ids"]) and torch.equal(seen[1], padded["position_ids"][:, 15:24])


G, B = 32, 8  # the fixture model's max length is 128


def cfg(**kw):
    return DecodeConfig.create(**{"gen_length": G, "block_length": B, **kw})


@pytest.fixture(scope="module")
def prompts():
    return torch.randint(0, 250, (3, 10), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("strategy", [dict(strategy="baseline"), dict(strategy="threshold", threshold=0.05)])
def test_engine_decodes_dream(dream, prompts, cache, strategy):
    out = generate(dream, prompts, cfg(cache=cache, **strategy))
    assert not (out.tokens == dream.mask_token_id).any()
    if strategy["strategy"] == "baseline":
        assert out.nfe.tolist() == [G] * 3
    else:
        assert (out.nfe < G).all()


def test_uncached_decode_reads_the_aligned_logits(dream, prompts):
    """The first token baseline commits is the argmax of the reference's raw row before it."""
    out = generate(dream, prompts[:1], cfg(steps=G), trace=True)
    canvas = torch.cat([prompts[:1], torch.full((1, G), dream.mask_token_id)], 1)
    raw = dream.next_token_logits(canvas)[0, 9:9 + B]  # predicts positions 10..17, the first block
    first = out.trace.committed[0].nonzero().item()
    assert out.tokens[0, first] == raw[first].argmax()
    assert out.trace.confidence[0, first] == pytest.approx(raw[first].softmax(-1).max().item())


@pytest.mark.parametrize("settings", [
    dict(), dict(cache="prefix"), dict(cache="dual"), dict(strategy="threshold", threshold=0.05, cache="dual"),
    dict(strategy="threshold", threshold=0.05, eotp=True),  # the random model is unsure: p < 0.08
])
def test_left_padded_batch_decodes_like_its_rows(dream, settings):
    assert_batch_decodes_like_its_rows(dream, cfg(**settings))

