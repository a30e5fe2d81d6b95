"""The same code on a GPU: bfloat16, the filter's torch step and whole decodes against the CPU (the golden logits
and the KV cache run on CUDA in test_model.py). Skipped where torch sees no CUDA device (CI); on a GPU machine:
`python -m pytest tests/test_cuda.py tests/test_model.py`. float32 matmuls stay full precision (torch's default:
TF32 off), so the GPU is compared at the CPU's precision."""
import pytest
import torch
from safetensors.torch import load_file

from harness.decoding import DecodeConfig
from harness.learn2pd.filter import load_filter, token_flags
from harness.models import load_model
from harness.tasks.evaluate import evaluate_task
from harness.tasks.synthetic import TASKS, held_out

from .conftest import FIXTURE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_bfloat16_keeps_the_float32_predictions():
    """bfloat16 (how LLaDA-8B runs) moves logits by rounding only: the argmax survives almost everywhere."""
    expected = load_file(FIXTURE / "expected.safetensors")
    model = load_model(FIXTURE, dtype=torch.bfloat16, device="cuda")
    logits = model(expected["input_ids_long"].cuda()).float().cpu()
    reference = expected["logits_long"]
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.95


@torch.no_grad()
def test_filter_step_on_cuda_equals_the_network():
    """On a GPU the decode step runs the torch branch of the fold, on the device."""
    filter_ = load_filter("tiny", device="cuda")
    assert not filter_._folded().as_numpy
    MASK, EOS, B = 50, 0, filter_.block_length
    generator = torch.Generator().manual_seed(0)
    for width, step in ((B, 0), (B, 3), (B - 3, 2)):  # full block, later step, block cut by EoTP
        tokens = torch.where(torch.rand(16, width, generator=generator) < 0.6, MASK,
                             torch.randint(0, 6, (16, width), generator=generator))
        state = [torch.rand(16, width, generator=generator), torch.randint(0, 6, (16, width), generator=generator),
                 tokens, tokens == MASK]
        state = [t.cuda() for t in state]
        fast = filter_.decode_logits(state[0], step, *state[1:], EOS)
        assert fast.device.type == "cuda"
        flags = token_flags(state[1], state[2], state[0], state[3], EOS)
        torch.testing.assert_close(fast, filter_.block_logits(state[0], step, flags), atol=1e-4, rtol=1e-4)


SETTINGS = {  # the strategies and loop switches whose tensors stay on the device
    "baseline": dict(),
    "threshold 0.9 + EoTP": dict(strategy="threshold", threshold=0.9, eotp=True),
    "learned + EoTP": dict(strategy="learned", filter_path="tiny", filter_threshold=0.8, eotp=True),
    "learned + dual": dict(strategy="learned", filter_path="tiny", filter_threshold=0.8, cache="dual"),
    "oracle + prefix": dict(strategy="oracle", cache="prefix"),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_decoding_on_cuda_gives_the_cpu_answers(default_model, task):
    """The embedded default decodes 50 test problems per setting on both devices: float32 kernels differ in
    summation order, so a near-tie may flip a rare answer, never the accuracy or the forward count at large."""
    on_cuda = load_model("tiny", device="cuda")
    problems = [p.__dict__ for p in held_out(TASKS[task])["test"][:50]]
    for label, settings in SETTINGS.items():
        config = DecodeConfig.create(gen_length=32, block_length=8, **settings)
        runs = []
        for model in (default_model, on_cuda):
            reference = None
            if config.strategy == "oracle":
                reference = evaluate_task(model, task, problems, DecodeConfig(gen_length=32, block_length=8)).tokens
            runs.append(evaluate_task(model, task, problems, config, reference=reference))
        cpu, cuda = runs
        same = sum(a == b for a, b in zip(cpu.outputs, cuda.outputs)) / len(problems)
        print(f"{task} {label}: cpu {cpu.accuracy:.2f}/{cpu.nfe:.2f} cuda {cuda.accuracy:.2f}/{cuda.nfe:.2f} "
              f"same answers {same:.2f}")
        assert same >= 0.96, label
        assert abs(cpu.accuracy - cuda.accuracy) <= 0.02 and abs(cpu.nfe - cuda.nfe) <= 0.02 * cpu.nfe, label
