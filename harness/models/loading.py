"""Load a diffusion LM from a local Hugging Face-format folder."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .compiled import check_compile_mode, compile_model
from .dream import Dream
from .llada import LLaDA
from .llada2 import LLaDA2

# Checkpoints shipped inside the package, loadable by name.
NAMED_MODELS = {"tiny": Path(__file__).resolve().parents[1] / "assets" / "tiny-llada"}


def native_models() -> dict[str, type[torch.nn.Module]]:
    """config.json's `model_type` -> the native implementation that loads it (its `config_class.from_json`
    reads the folder's config; `reset_buffers` rebuilds what a checkpoint does not store)."""
    return {"llada": LLaDA, "Dream": Dream, "llada2_moe": LLaDA2}


def model_folder(path: str | Path) -> Path:
    """The folder of a shipped model's name ("tiny") or of a local path; it must exist."""
    if str(path) in ("???", ""):
        raise FileNotFoundError("model.path is not set: give model.path=/path/to/a/model/folder (or 'tiny')")
    folder = NAMED_MODELS.get(str(path), Path(path).expanduser())
    if not folder.is_dir():
        raise FileNotFoundError(f"model.path={path}: no such folder ({folder})")
    return folder


def read_json(file: Path) -> dict:
    """A JSON object from `file`; a corrupt or missing file is one line naming it."""
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not readable JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no weight_map")
        shards = [folder / s for s in sorted(set(weight_map.values()))]
        missing = [s for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]} not found (listed in {index.name})")
        return shards
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def open_safetensors(file: Path, device="cpu"):
    """`safe_open`, whose errors name the file (it checks the header covers the file: a truncated one fails)."""
    try:
        return safe_open(str(file), framework="pt", device=str(device))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file}: not a readable safetensors file ({err})") from None


def check_model_folder(path: str | Path) -> int | None:
    """Everything loading reads before the weights, checked without reading a weight: the folder, its
    config.json (a LLaDA one in full) and the safetensors headers (a truncated file fails here). Returns the
    model's max sequence length, None when config.json does not say."""
    folder = model_folder(path)
    raw = read_json(folder / "config.json")
    native = native_models().get(raw.get("model_type"))
    if native is not None:
        files = _weight_files(folder)
        max_length = native.config_class.from_json(folder / "config.json", _PLACEHOLDER_IDS).max_length
    else:  # transformers also reads pytorch_model.bin; the safetensors headers are checked where present
        files = _weight_files(folder) if any(folder.glob("model.safetensors*")) else []
        max_length = raw.get("max_position_embeddings") or raw.get("max_sequence_length")
    for file in files:
        with open_safetensors(file):
            pass
    return max_length


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
    """Assign checkpoint tensors to `model` by name (its parameters and persistent buffers, e.g. LLaDA2's
    `expert_bias`); any missing, unexpected or mis-shaped tensor is an error that names it. Tensors are read
    straight onto `device`, so an 8B model never needs a CPU copy."""
    expected = {name: t.shape for name, t in model.state_dict().items()}
    state = {}
    for file in files:
        with open_safetensors(file, device) as f:
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


# Token ids a config.json may lack (LLaDA2 takes them as `generate` arguments): placeholders when only the
# config's shape is checked, before any tokenizer loads.
_PLACEHOLDER_IDS = {"mask_token_id": -1, "eos_token_id": -1}


def special_token_ids(tokenizer, mask_token_id: int | None, eos_token_id: int | None) -> dict:
    """The mask and EOS ids to fill into a config: explicit values first, else the folder's tokenizer's."""
    ids = {"mask_token_id": mask_token_id, "eos_token_id": eos_token_id}
    if tokenizer is not None:
        ids = {key: getattr(tokenizer, key, None) if value is None else value for key, value in ids.items()}
    return {k: v for k, v in ids.items() if v is not None}


def load_native(cls: type[torch.nn.Module], folder: Path, dtype: torch.dtype, device, *,
                mask_token_id: int | None = None, eos_token_id: int | None = None) -> torch.nn.Module:
    """A native model from `folder`: config.json (explicit token ids override its own; they, else the
    tokenizer's, fill what it lacks), weights strictly by name and shape, straight onto `device`."""
    tokenizer = _load_tokenizer(folder)
    explicit = {k: v for k, v in (("mask_token_id", mask_token_id), ("eos_token_id", eos_token_id)) if v is not None}
    cfg = cls.config_class.from_json(folder / "config.json", special_token_ids(tokenizer, mask_token_id, eos_token_id))
    if explicit:
        cfg = dataclasses.replace(cfg, **explicit)
    with torch.device("meta"):
        model = cls(cfg)
    load_state_dict_strict(model, _weight_files(folder), dtype, device)
    model.reset_buffers()  # non-persistent buffers were built on meta
    model.tokenizer = tokenizer
    return model.eval().requires_grad_(False)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *,
               shift_logits: bool = False, trust_remote_code: bool = False,
               mask_token_id: int | None = None, eos_token_id: int | None = None, compile: str = "none"):
    """Load a dLLM from a local folder, or a shipped one by name ("tiny": the embedded default).

    A folder whose config.json names a native `model_type` (see `native_models`) loads into that implementation
    (KV cache supported); any other folder loads as a transformers masked LM (`AutoModelForMaskedLM`).
    `compile`: none (eager), default or reduce-overhead (see harness/models/compiled.py); it compiles lazily, on
    each variant's first forward.
    """
    check_compile_mode(compile)
    folder = model_folder(path)
    model_type = read_json(folder / "config.json").get("model_type")
    native = native_models().get(model_type)
    if native is not None:
        if compile != "none" and getattr(native, "no_compile_because", ""):
            raise ValueError(f"model.compile={compile}: the native {model_type} model is not compiled yet "
                             f"({native.no_compile_because}); use model.compile=none")
        if shift_logits:
            raise ValueError(f"shift_logits applies to transformers masked LMs; the native {model_type} model "
                             f"aligns its own logits")
        model = load_native(native, folder, dtype, device, mask_token_id=mask_token_id, eos_token_id=eos_token_id)
    else:
        from .masked_lm import MaskedLM
        model = MaskedLM.from_folder(folder, dtype=dtype, device=device, shift_logits=shift_logits,
                                     trust_remote_code=trust_remote_code, mask_token_id=mask_token_id,
                                     eos_token_id=eos_token_id, tokenizer=_load_tokenizer(folder, trust_remote_code))
    return compile_model(model, compile)


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
