"""Load a diffusion LM from a local Hugging Face-format folder."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .llada import LLaDA, LLaDAConfig

# Checkpoints shipped inside the package, loadable by name.
NAMED_MODELS = {"tiny": Path(__file__).resolve().parents[1] / "assets" / "tiny-llada"}


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _load_tokenizer(folder: Path, trust_remote_code: bool = False):
    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer
    from transformers.utils import logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # AutoConfig does not know `llada` and says so; the tokenizer loads fine
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    finally:
        logging.set_verbosity(verbosity)


def load_state_dict_strict(model: torch.nn.Module, files: list[Path], dtype: torch.dtype, device) -> None:
    """Assign checkpoint tensors to `model` by name; any missing, unexpected or mis-shaped tensor is an error
    that names it. Tensors are read straight onto `device`, so an 8B model never needs a CPU copy."""
    expected = {name: p.shape for name, p in model.named_parameters()}
    state = {}
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for name in f.keys():
                if name not in expected:
                    raise ValueError(f"{file.name}: unexpected tensor {name!r}")
                tensor = f.get_tensor(name)
                if tensor.shape != expected[name]:
                    raise ValueError(f"{file.name}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                                     f"the model expects {tuple(expected[name])}")
                state[name] = tensor.to(dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"checkpoint is missing tensor {missing[0]!r}{more}")
    model.load_state_dict(state, strict=True, assign=True)


def load_llada(folder: Path, dtype: torch.dtype, device) -> LLaDA:
    cfg = LLaDAConfig.from_json(folder / "config.json")
    with torch.device("meta"):
        model = LLaDA(cfg)
    load_state_dict_strict(model, _weight_files(folder), dtype, device)
    # Non-persistent buffers were created on meta; rebuild them on the target device.
    model.inv_freq = (1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32,
                                                               device=device) / cfg.head_dim))
    model.tokenizer = _load_tokenizer(folder)
    return model.eval().requires_grad_(False)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *,
               shift_logits: bool = False, trust_remote_code: bool = False,
               mask_token_id: int | None = None, eos_token_id: int | None = None):
    """Load a dLLM from a local folder, or a shipped one by name ("tiny": the embedded default).

    A folder whose config.json says `model_type: llada` loads into the native LLaDA implementation (KV cache
    supported); any other folder loads as a transformers masked LM (`AutoModelForMaskedLM`).
    """
    folder = NAMED_MODELS.get(str(path), Path(path).expanduser())
    config_file = folder / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{folder}: no config.json (expected a local Hugging Face-format model folder)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type == "llada":
        if shift_logits:
            raise ValueError("shift_logits applies to masked-LM checkpoints such as Dream, not LLaDA")
        return load_llada(folder, dtype, device)
    from .masked_lm import MaskedLM
    return MaskedLM.from_folder(folder, dtype=dtype, device=device, shift_logits=shift_logits,
                                trust_remote_code=trust_remote_code, mask_token_id=mask_token_id,
                                eos_token_id=eos_token_id, tokenizer=_load_tokenizer(folder, trust_remote_code))


def save_llada(model: LLaDA, folder: str | Path) -> Path:
    """Write `model` as an official-format LLaDA folder (config.json, model.safetensors, tokenizer files)."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_json_dict(), indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(folder)
    return folder
