"""Every registered strategy × EoTP × KV cache on each native family (the golden LLaDA, Dream and LLaDA2
fixtures): it decodes a left-padded batch, or it is refused in one line naming the setting — never a crash,
never a half-decoded answer."""
import pytest
import torch

from harness.decoding import DecodeConfig, generate
from harness.decoding.policy import CACHE_MODES, POLICIES, ConfigError
from harness.models import load_model

from .conftest import FIXTURE, SHARED

G, B = 16, 8
FAMILIES = {  # the fixtures' folders; LLaDA2's config.json holds no token ids (generate arguments upstream)
    "llada": (FIXTURE, {}),
    "dream": (SHARED / "fixtures" / "dream_tiny", {}),
    "llada2": (SHARED / "fixtures" / "llada2_tiny", {"mask_token_id": 310, "eos_token_id": 257}),
}
KNOBS = {"learned": {"filter_path": "tiny"}}  # the shipped filter (B = 8)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    folder, ids = FAMILIES[request.param]
    return request.param, load_model(folder, **ids)


@pytest.fixture(scope="module")
def batch():
    """Two prompts of 10 and 7 tokens, left-padded with EOS."""
    ids = torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(0))
    ids[1, :3] = 257
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


def decode_or_refusal(model, batch, strategy, eotp, cache) -> str | None:
    """None when the settings decode; the one-line refusal otherwise."""
    ids, mask = batch
    try:
        config = DecodeConfig.create(gen_length=G, block_length=B, strategy=strategy, eotp=eotp, cache=cache,
                                     **KNOBS.get(strategy, {}))
        reference = None
        if POLICIES[strategy].needs_reference:
            reference = generate(model, ids, config.with_strategy("baseline"), attention_mask=mask).tokens
        out = generate(model, ids, config, attention_mask=mask, reference=reference)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err), f"{strategy}: refusal is not one line: {err!r}"
        return str(err)
    assert out.tokens.shape == (2, G) and (out.nfe > 0).all()
    if strategy != "llada2_threshold":  # its reference may end a block with masks left (steps < quota)
        assert not (out.tokens == model.mask_token_id).any(), f"{strategy}: masks left"
    return None


def test_every_strategy_decodes_or_is_refused_in_one_line(family, batch):
    name, model = family
    refused = {}
    for strategy in sorted(POLICIES):
        for eotp in (False, True):
            for cache in CACHE_MODES:
                reason = decode_or_refusal(model, batch, strategy, eotp, cache)
                if reason is not None:
                    refused[strategy, eotp, cache] = reason
    plain = {s for s in POLICIES if (s, False, "none") not in refused}
    if name == "llada":  # the home model refuses nothing uncached
        assert plain == set(POLICIES)
    if name == "dream":
        assert plain == set(POLICIES) - {"wino"}
        assert "shifted logits" in refused["wino", False, "none"]
    if name == "llada2":
        assert {"baseline", "threshold", "llada2_threshold", "learned", "topk"} <= plain
        for strategy in ("klass", "d3llm", "wino", "rcr"):
            assert "cannot decode a block-diffusion model" in refused[strategy, False, "none"]
        assert all("dual" in refused[s, e, "dual"] or "block-diffusion" in refused[s, e, "dual"]
                   for s in POLICIES for e in (False, True))
    # a cache is refused only for rules that declare why (or a model without one)
    for (strategy, _, cache), reason in refused.items():
        if cache != "none" and (strategy, False, "none") not in refused and name != "llada2":
            assert POLICIES[strategy].no_cache_because in reason


def test_llada2_refusals_come_before_the_weights_load():
    """A sweep cell is checked against the folder's model_type alone (config.json), as `check_cell` does."""
    from harness.decoding.policy import check_model_fits
    from harness.models.loading import native_models
    with pytest.raises(ConfigError, match="'klass' cannot decode a block-diffusion model"):
        check_model_fits(native_models()["llada2_moe"], DecodeConfig(gen_length=G, block_length=B, strategy="klass"))
    with pytest.raises(ConfigError, match="'wino' cannot decode a model with shifted logits"):
        check_model_fits(native_models()["Dream"], DecodeConfig(gen_length=G, block_length=B, strategy="wino"))


@pytest.mark.parametrize("family, model_config, strategy", [
    ("dream", "dream_7b_instruct", "fastdllm_dream"), ("llada2", "llada2_mini", "llada2_threshold")])
def test_a_sweep_cell_runs_on_each_family_and_is_recorded(tmp_path, family, model_config, strategy):
    """The Hydra model group, lm-eval, records and analysis, as for LLaDA: the golden fixture's weights behind the
    embedded default's tokenizer (its ids fall inside the fixture's vocabulary), the published config's token
    ids overridden by the fixture's."""
    import shutil

    from analysis.collect import collect
    from harness.models.loading import NAMED_MODELS
    from harness.run import run_cell

    from .conftest import fixture_copy
    from .test_sweep import settings_for
    folder = fixture_copy(FAMILIES[family][0], tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(NAMED_MODELS["tiny"] / name, folder)
    settings = settings_for(tmp_path, f"model={model_config}", f"model.path={folder}", "model.dtype=float32",
                            "model.mask_token_id=310", "model.eos_token_id=257", "model.block_length=8",
                            "task=arith", f"decoding={strategy}", "pair_rounds=1")
    record = run_cell(settings, tmp_path / "store" / "cell", "cpu")
    assert record["status"] == "complete" and record["config"]["model"]["name"] == model_config.replace("_", "-")
    assert record["speed"]["nfe"] > 0 and record["method"]["strategy"] == strategy
    cells = collect([tmp_path / "store"]).cells
    assert set(cells.strategy) == {"baseline", strategy}
