import os
from pathlib import Path

import pytest
import torch

from harness.models import load_model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DLLM_SHARED", REPO.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "llada_tiny"
DATA = SHARED / "data"  # real GSM8K / MATH / HumanEval / MBPP copies (read by path, never copied)


@pytest.fixture(scope="session")
def tiny():
    """The golden fixture's LLaDA (official layout, random weights; mask 310, eos 257, max length 128)."""
    if not FIXTURE.exists():
        pytest.fail(f"golden fixture not found at {FIXTURE} (set DLLM_SHARED to the shared/ folder)")
    return load_model(FIXTURE)


ON_CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


@pytest.fixture(params=["cpu", ON_CUDA])
def tiny_on(request, tiny):
    """The golden fixture's LLaDA on the CPU and, where torch sees one, on a CUDA device."""
    return tiny if request.param == "cpu" else load_model(FIXTURE, device=request.param)


def float32_tolerance(model) -> float:
    return 1e-5 if model.device.type == "cpu" else 1e-4  # GPU kernels sum in another order


@pytest.fixture(scope="session")
def default_model():
    """The embedded default: the shipped tiny LLaDA trained on the synthetic tasks."""
    return load_model("tiny")


@pytest.fixture(scope="session")
def eos_prone(tiny):
    """The fixture model with its EOS logit scaled up, so that it predicts end of text at many positions."""
    model = load_model(FIXTURE)
    with torch.no_grad():
        head = model.model.transformer.ff_out.weight
        head[model.eos_token_id] = 6 * head[model.eos_token_id]
    return model


@pytest.fixture
def prompts():
    return torch.randint(0, 250, (3, 10), generator=torch.Generator().manual_seed(0))


def fixture_copy(fixture: Path, tmp_path: Path, state: dict | None = None, **config) -> Path:
    """A writable copy of a golden fixture's folder: config.json with `config` overriding keys, and its weights
    (or `state`, a state dict, instead)."""
    import json
    import shutil

    from safetensors.torch import save_file
    folder = tmp_path / "ckpt"
    folder.mkdir()
    raw = json.loads((fixture / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, **config}))
    if state is None:
        shutil.copy(fixture / "model.safetensors", folder)
    else:
        save_file(state, str(folder / "model.safetensors"))
    return folder


def assert_batch_decodes_like_its_rows(model, config, lengths=(10, 6, 8), seed=2):
    """Left-padded prompts of different lengths, decoded together, give each row's single-row result: tokens,
    forwards and re-masks."""
    from harness.decoding import generate
    gen = torch.Generator().manual_seed(seed)
    singles = [torch.randint(0, 250, (1, n), generator=gen) for n in lengths]
    width = max(lengths)
    batch = torch.full((len(lengths), width), model.eos_token_id)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, ids in enumerate(singles):
        batch[i, width - ids.shape[1]:], mask[i, width - ids.shape[1]:] = ids[0], 1
    together = generate(model, batch, config, attention_mask=mask)
    for i, ids in enumerate(singles):
        alone = generate(model, ids, config)
        assert torch.equal(together.tokens[i], alone.tokens[0]), f"row {i}"
        assert together.nfe[i] == alone.nfe[0] and together.remasked[i] == alone.remasked[0], f"row {i}"


def pytest_sessionfinish(session, exitstatus):
    """Stop wandb's background service if a test started one, so the session ends cleanly."""
    import sys
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
