"""The native LLaDA against the golden fixture, strict loading, and the KV cache."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.models import KVCache, LLaDAConfig, load_model, random_llada, save_llada

from .conftest import FIXTURE, float32_tolerance


@pytest.mark.parametrize("suffix", ["", "_long"])
def test_logits_match_official_code(tiny_on, suffix):
    expected = load_file(FIXTURE / "expected.safetensors")
    logits = tiny_on(expected["input_ids" + suffix].to(tiny_on.device)).cpu()
    tolerance = float32_tolerance(tiny_on)
    torch.testing.assert_close(logits, expected["logits" + suffix], atol=tolerance, rtol=tolerance)


def test_left_padded_logits_match(tiny):
    expected = load_file(FIXTURE / "expected_padded.safetensors")
    mask = expected["attention_mask"]
    logits = tiny(expected["input_ids"], mask)
    valid = mask.bool()  # padded query rows are unspecified
    torch.testing.assert_close(logits[valid], expected["logits"][valid], atol=1e-5, rtol=1e-5)


def test_model_exposes_what_the_engine_needs(tiny):
    assert (tiny.mask_token_id, tiny.eos_token_id, tiny.vocab_size, tiny.max_length) == (310, 257, 320, 128)
    assert tiny.supports_cache and tiny.tokenizer is None


def test_official_8b_config_maps(tmp_path):
    raw = json.loads((FIXTURE / "config.json").read_text())
    raw.update(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
               embedding_size=126464, max_sequence_length=4096, eos_token_id=126081, pad_token_id=126081,
               mask_token_id=126336)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = LLaDAConfig.from_json(tmp_path / "config.json")
    assert (cfg.head_dim, cfg.mask_token_id, cfg.eos_token_id, cfg.vocab_size) == (128, 126336, 126081, 126464)


def _copy_fixture(tmp_path, state=None):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(FIXTURE / "config.json", folder)
    if state is not None:
        save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("model.transformer.blocks.1.up_proj.weight"), "missing tensor 'model.transformer.blocks.1.up_proj"),
    (lambda s: s.update(extra=torch.zeros(1)), "unexpected tensor 'extra'"),
    (lambda s: s.update({"model.transformer.ln_f.weight": torch.ones(65)}), "'model.transformer.ln_f.weight' has shape (65,)"),
])
def test_strict_loading_names_the_bad_tensor(tmp_path, change, message):
    state = load_file(FIXTURE / "model.safetensors")
    change(state)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(_copy_fixture(tmp_path, state))


def test_unsupported_architecture_flag_is_rejected(tmp_path):
    folder = _copy_fixture(tmp_path, load_file(FIXTURE / "model.safetensors"))
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "weight_tying": True}))
    with pytest.raises(ValueError, match="weight_tying"):
        load_model(folder)


def test_sharded_checkpoint_loads(tmp_path, tiny):
    state = load_file(FIXTURE / "model.safetensors")
    folder = _copy_fixture(tmp_path)
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[:10], "model-00002-of-00002.safetensors": names[10:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = load_model(folder, dtype=torch.bfloat16)
    assert model.model.transformer.wte.weight.dtype == torch.bfloat16
    ids = load_file(FIXTURE / "expected.safetensors")["input_ids"]
    torch.testing.assert_close(model(ids).float(), tiny(ids), atol=0.15, rtol=0.05)


def test_save_roundtrip_keeps_the_official_key_set(tmp_path, tiny):
    folder = save_llada(tiny, tmp_path / "out")
    assert json.loads((folder / "config.json").read_text()) == json.loads((FIXTURE / "config.json").read_text())
    assert set(load_file(folder / "model.safetensors")) == set(load_file(FIXTURE / "model.safetensors"))


def test_cache_refresh_gives_the_same_logits(tiny):
    ids = load_file(FIXTURE / "expected.safetensors")["input_ids"]
    cache = KVCache()
    torch.testing.assert_close(tiny(ids, cache=cache), tiny(ids), atol=0, rtol=0)
    assert len(cache) == ids.shape[1] and len(cache.keys) == 2


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_range_forward_matches_full_forward(tiny_on, mode):
    """While the tokens are those of the refresh, serving the other positions from the cache is exact."""
    ids = load_file(FIXTURE / "expected.safetensors")["input_ids"].to(tiny_on.device)
    full = tiny_on(ids)
    cache = KVCache()
    tiny_on(ids, cache=cache)
    s, e = 12, 20 if mode == "dual" else ids.shape[1]
    tolerance = float32_tolerance(tiny_on)
    torch.testing.assert_close(tiny_on(ids[:, s:e], start=s, cache=cache), full[:, s:e], atol=tolerance,
                               rtol=tolerance)


def test_cached_forward_sees_updated_block_tokens(tiny):
    """A dual-cache step recomputes the block against the cached rest: the block's own edits are visible."""
    ids = load_file(FIXTURE / "expected.safetensors")["input_ids"][:1]
    cache = KVCache()
    tiny(ids, cache=cache)
    edited = ids.clone()
    edited[0, 12:20] = 5
    stale = tiny(edited[:, 12:20], start=12, cache=cache)
    # Exact except for the frozen K/V of positions outside the block, which still see the old block.
    fresh = tiny(edited)[:, 12:20]
    assert not torch.allclose(stale, tiny(ids)[:, 12:20])
    assert (stale - fresh).abs().max() < (tiny(ids)[:, 12:20] - fresh).abs().max()


def test_random_llada_is_seeded():
    cfg = LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, mlp_hidden_size=64, vocab_size=50,
                      max_sequence_length=64, rope_theta=10000.0, rms_norm_eps=1e-5, mask_token_id=49,
                      eos_token_id=48, pad_token_id=48)
    a, b = random_llada(cfg, seed=3), random_llada(cfg, seed=3)
    ids = torch.arange(20)[None]
    assert torch.equal(a(ids), b(ids)) and a(ids).shape == (1, 20, 50)  # grouped-query attention runs too


def test_explicit_positions_and_per_query_mask(tiny):
    """The layout WINO feeds: explicit position ids and a [batch, queries, keys] mask. With the default
    positions and an all-true mask it is the plain forward; a query that may not see a key is unaffected by it."""
    ids = torch.randint(0, tiny.vocab_size - 1, (2, 10))
    plain = tiny(ids)
    full = torch.ones(2, 10, 10, dtype=torch.bool)
    torch.testing.assert_close(tiny(ids, full, position_ids=torch.arange(10)), plain)
    torch.testing.assert_close(tiny(ids, full, position_ids=torch.arange(10).expand(2, 10)), plain)
    # WINO-like: query 9 repeats position 3 and may see every key but 3; queries 0-8 never see key 9, so they
    # are the plain forward of the first 9 tokens
    positions = torch.cat([torch.arange(9), torch.tensor([3])])
    layout = torch.zeros(2, 10, 10, dtype=torch.bool)
    layout[:, :9, :9] = True
    layout[:, 9] = True
    layout[:, 9, 3] = False
    logits = tiny(ids, layout, position_ids=positions)
    torch.testing.assert_close(logits[:, :9], tiny(ids[:, :9]))
    layout[:, 9, 3] = True
    assert not torch.allclose(logits[:, 9], tiny(ids, layout, position_ids=positions)[:, 9])
