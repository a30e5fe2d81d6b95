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


def pytest_sessionfinish(session, exitstatus):
    """Stop wandb's background service if a test started one, so the session ends cleanly."""
    import sys
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
