"""Invalid settings fail with one line before the first forward pass."""
import pytest
import torch

from harness.decoding import ConfigError, DecodeConfig, generate
from harness.models.metered import Metered


@pytest.mark.parametrize("settings, message", [
    (dict(gen_length=30, block_length=8), "multiple of block_length"),
    (dict(gen_length=32, block_length=8, steps=6), "multiple of the number of blocks"),
    (dict(strategy="threshold", threshold=0.0), r"threshold must be in \(0, 1\]"),
    (dict(strategy="threshold", threshold=1.5), r"threshold must be in \(0, 1\]"),
    (dict(strategy="greedy"), "unknown strategy 'greedy'"),
    (dict(cache="triple"), "unknown cache 'triple'"),
    (dict(remasking="lowest"), "decoding.remasking must be low_confidence or random"),
])
def test_bad_config_values_fail_at_construction(settings, message):
    with pytest.raises(ConfigError, match=message) as err:
        DecodeConfig.create(**settings)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case, message", [
    ("oracle without reference", "needs reference="),
    ("reference of the wrong shape", "reference has shape"),
    ("too long", "exceeds the model's max length 128"),
    ("mask of the wrong shape", "attention_mask has shape"),
])
def test_bad_inputs_fail_before_any_forward(tiny, case, message):
    model = Metered(tiny)
    ids = torch.randint(0, 250, (2, 10))
    kwargs, config = {}, DecodeConfig(gen_length=32, block_length=8)
    if case == "oracle without reference":
        config = DecodeConfig.create(gen_length=32, block_length=8, strategy="oracle")
    elif case == "reference of the wrong shape":
        config = DecodeConfig.create(gen_length=32, block_length=8, strategy="oracle")
        kwargs["reference"] = torch.zeros(2, 16, dtype=torch.long)
    elif case == "too long":
        ids = torch.randint(0, 250, (2, 100))
    elif case == "mask of the wrong shape":
        kwargs["attention_mask"] = torch.ones(2, 9, dtype=torch.long)
    with pytest.raises(ConfigError, match=message) as err:
        generate(model, ids, config, **kwargs)
    assert model.calls == 0 and "\n" not in str(err.value)
