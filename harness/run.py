"""`dllm-harness` / `python -m harness`: evaluate one (model, task, decoding) cell through lm-eval and record
it in the sweep's store (and W&B). Hydra composes the cell from `conf/`; `-m` sweeps a grid of cells.

    dllm-harness task=perm decoding=threshold decoding.threshold=0.7
    dllm-harness -m experiment=quickstart                       # the embedded default's full grid
    dllm-harness -m experiment=quickstart hydra/launcher=joblib   # cells in parallel processes

A cell with a complete record of the same config hash in the store is skipped (`force=true` re-runs it); the
hash covers the settings and the content of what the cell reads (`harness.fingerprints`: data, weights,
tokenizer, learned filter, harness source); a failing cell is recorded as failed and the sweep goes on (a
full store ends it, in one line). Speedup is the cell's throughput over that of the plain baseline with the
same model, task, G, B, device and batch size, both decoding the cell's first batch in alternating rounds
right after its evaluation (harness/timing.py: the pairing and its trust rule).
"""
from __future__ import annotations

import logging
import platform
import subprocess
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import __version__, schema
from .decoding import ConfigError, method_of
from .fingerprints import cell_identity
from .progress import result_line  # also registers ${cell_name:}, the cell folders' names
from .store import StoreFull, cell_lock, config_hash, find_complete, full_disk_named, read_record, write_record
from .timing import available_cores, observed, pin_threads, resolve_threads, spread, untrusted_reasons

log = logging.getLogger("harness.run")
schema.register()

REPO = Path(__file__).resolve().parents[1]  # the folder holding the package: a checkout, or site-packages
_LOADED: dict[tuple, object] = {}  # models stay loaded across the cells one process runs


def resolve_device(name: str) -> str:
    """`auto`: CUDA when visible, else CPU; with several GPUs, parallel jobs take one each (by job number).
    A device torch cannot name or does not see is a ConfigError."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"device={name}: not a torch device (cpu, cuda, cuda:1, ...)") from None
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"device={name}: torch {torch.__version__} sees {torch.cuda.device_count()} "
                              f"CUDA device(s)")
        return name
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    job = HydraConfig.get().job.num if HydraConfig.initialized() and count > 1 else 0
    return f"cuda:{(job or 0) % count}"


def cell_settings(cfg: DictConfig, device: str) -> dict:
    """The resolved cell as a plain dict; the device is recorded by kind (cpu/cuda) so that a cell resumes
    on any GPU of the machine."""
    settings = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    settings.pop("hydra", None)
    settings["device"] = torch.device(device).type
    return settings


def get_model(model_cfg: dict, device: str):
    from .models import load_model
    dtype = getattr(torch, model_cfg["dtype"] or ("bfloat16" if device.startswith("cuda") else "float32"))
    options = {k: model_cfg[k] for k in ("shift_logits", "trust_remote_code", "mask_token_id", "eos_token_id",
                                         "compile")}
    key = (model_cfg["path"], dtype, device, *options.values())
    if key not in _LOADED:
        _LOADED.clear()  # one model at a time
        _LOADED[key] = load_model(model_cfg["path"], dtype=dtype, device=device, **options)
    return _LOADED[key]


def check_cell(settings: dict) -> dict:
    """Every check that reads no weight, so that a bad cell fails in seconds, not after minutes of loading:
    run settings, decoding values, task name, data rows, metric and code opt-ins, the model folder (config.json,
    safetensors headers) against the generation length, a block-diffusion model's refusals, the learned filter's
    file and block length. Returns the lm-eval task objects."""
    from .decoding.policy import check_model_fits
    from .learn2pd.filter import load_filter
    from .lmeval import build_tasks
    from .lmeval.model import decode_config, request_config
    from .lmeval.tasks import check_metric
    from .models.loading import check_model_folder, model_folder, native_models, read_json
    check_run_settings(settings)
    decoding, fixed_gen_length = decode_config(settings["decoding"])
    task = settings["task"]
    tasks = build_tasks([task["name"]], task["data_dir"], task["num_fewshot"], task["unsafe_code"])
    check_metric(tasks[task["name"]], task["metric"])
    max_length = check_model_folder(settings["model"]["path"])
    native = native_models().get(read_json(model_folder(settings["model"]["path"]) / "config.json").get("model_type"))
    if native is not None:  # LLaDA2: block-causal, no rule that reads past the block; Dream: shifted logits
        check_model_fits(native, decoding)
    for lm_task in tasks.values():
        if lm_task.OUTPUT_TYPE == "generate_until":
            request_config(decoding, fixed_gen_length, lm_task.config.generation_kwargs or {}, max_length)
    filter_path, block_length = settings["decoding"].get("filter_path"), settings["decoding"]["block_length"]
    if filter_path:  # a learned strategy's filter: a few KB, read now (and again by the policy)
        trained_for = load_filter(filter_path).block_length
        if trained_for != block_length:
            raise ConfigError(f"filter {filter_path} was trained for block_length {trained_for}, "
                              f"not decoding.block_length={block_length}")
    return tasks


def check_run_settings(settings: dict) -> None:
    """Range checks the schema's types cannot express (written so that NaN fails them too)."""
    from .models.compiled import COMPILE_MODES
    task, limit = settings["task"], settings["task"]["limit"]
    rules = [("batch_size", settings["batch_size"], settings["batch_size"] >= 1, "an integer >= 1"),
             ("warmup", settings["warmup"], settings["warmup"] >= 0, "an integer >= 0"),
             ("pair_rounds", settings["pair_rounds"], settings["pair_rounds"] >= 0, "an integer >= 0"),
             ("model.compile", settings["model"]["compile"], settings["model"]["compile"] in COMPILE_MODES,
              f"one of {', '.join(COMPILE_MODES)}"),
             ("task.limit", limit, limit is None or limit > 0,
              "a number of problems >= 1 or a fraction in (0, 1)"),
             ("task.num_fewshot", task["num_fewshot"], task["num_fewshot"] is None or task["num_fewshot"] >= 0,
              "an integer >= 0")]
    for name, value, valid, wanted in rules:
        if not valid:
            raise ConfigError(f"{name}={value}: must be {wanted}")
    resolve_threads(settings["threads"])


def measure(settings: dict, tasks: dict, device: str) -> tuple[dict, list[dict]]:
    """Run the cell through lm-eval, then (unless it is the plain baseline itself) the paired speedup's
    rounds on its first batch; returns the record's measured part and the per-sample records."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from .lmeval import DLLM
    from .lmeval.model import decode_config
    from .lmeval.scoring import protections
    from .lmeval.tasks import CODE_TASKS
    model_cfg, task = settings["model"], settings["task"]
    threads = pin_threads(settings["threads"])  # before any decoding (and before the weights load)
    rounds = 0 if is_reference(settings) else settings["pair_rounds"]
    start = time.perf_counter()
    model = get_model(model_cfg, device)
    loaded = time.perf_counter()
    lm = DLLM(model, settings["decoding"], batch_size=settings["batch_size"], warmup=settings["warmup"],
              trace=settings["trace"],
              chat_template=model_cfg["chat_template"], raw_prompt_tasks=model_cfg["raw_prompt_tasks"])
    limit = task["limit"]
    limit = int(limit) if limit is not None and limit >= 1 else limit
    timing = {"threads": threads, "interop_threads": torch.get_num_interop_threads(), "cores": available_cores()}
    with observed(timing):
        results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks.values()), limit=limit, log_samples=True,
                                          confirm_run_unsafe_code=task["unsafe_code"],
                                          task_manager=TaskManager(include_defaults=False))
        evaluated = time.perf_counter()
        reference = decode_config(baseline_settings(settings)["decoding"])[0] if rounds else None
        timing["ratios"] = lm.paired_ratios(reference, rounds) if rounds else []
    timing.update(lm.timed, pairs=rounds)  # results["speed"]: merged by the model (DLLM.attach_speed)
    name, metric = task["name"], task["metric"]
    scores = results["results"][name]  # `metric` is among them: check_cell checked it before the model loaded
    metric_name, _, metric_filter = metric.partition(",")
    stderr = scores.get(f"{metric_name}_stderr,{metric_filter}")
    speed = results["speed"][name]
    protocol = results["speed_protocol"]
    if name in CODE_TASKS:
        protocol = protocol | {"sandbox": protections()}  # what the generated programs could not do
    record = {
        "metrics": {"accuracy": float(scores[metric]), "accuracy_stderr": _number(stderr),
                    "lm_eval": {k: _number(v) for k, v in scores.items() if k not in ("name", "alias")}},
        "speed": {k: v for k, v in speed.items() if k != "decode_seconds"},
        "protocol": protocol, "device": protocol["device"], "device_name": protocol["device_name"],
        "dtype": protocol["dtype"], "batch_size": settings["batch_size"], "timing": timing,
        "timings": {"model_load": loaded - start, "evaluate": evaluated - loaded,
                    "decode": speed["decode_seconds"], "pairs": time.perf_counter() - evaluated},
    }
    return record, results["samples"][name]


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def baseline_settings(settings: dict) -> dict:
    """The plain baseline this cell's speed is compared with: same model, task, G, B, device, batch size."""
    d = settings["decoding"]
    base = OmegaConf.to_container(OmegaConf.structured(schema.decoding_schema("baseline")), enum_to_str=True)
    base.update(gen_length=d["gen_length"], block_length=d["block_length"], seed=d["seed"])
    return {**settings, "decoding": base}


def environment() -> dict:
    packages = ("torch", "transformers", "lm_eval", "hydra-core", "wandb", "dllm-harness")
    return {"versions": {p: _version(p) for p in packages} | {"python": platform.python_version()},
            "git_commit": source_commit(), "host": platform.node()}


def source_commit() -> str:
    """The commit of the checkout the harness runs from, when that is a git checkout of this project; else (an
    installed wheel, which may sit inside another repository) the package's version."""
    pyproject = REPO / "pyproject.toml"
    if (REPO / ".git").exists() and pyproject.is_file() and _project_name(pyproject) == "dllm-harness":
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                    timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
        if commit:
            return commit
    return f"dllm-harness=={__version__}"


def _project_name(pyproject: Path) -> str | None:
    try:
        return tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except Exception:
        return None


def run_cell(settings: dict, folder: Path, device: str) -> dict:
    """Evaluate (or skip) one cell and write its record into `folder`. Never raises for a cell's failure (a full
    store raises `StoreFull`). The cell is identified by its settings and what it reads (fingerprints)."""
    store, (digest, prints) = Path(settings["store"]), cell_identity(settings)
    # a parallel job may be running this very cell as its baseline
    with full_disk_named(store), cell_lock(store, digest):
        if not settings["force"]:
            done = find_complete(store, digest, own_folders=(folder, folder / digest))
            if done:
                log.info(result_line(done))
                return done
        existing = read_record(folder / "result.json")
        if existing and existing.get("config_hash") != digest:  # never overwrite another cell's record
            folder = folder / digest
        return _run_and_record(settings, digest, prints, folder, device)


def _run_and_record(settings: dict, digest: str, prints: dict, folder: Path, device: str) -> dict:
    started = time.perf_counter()
    record = {"status": "running", "config_hash": digest, "fingerprints": prints, "config": settings,
              "method": method_of(settings["decoding"]), **environment()}
    samples = None
    from .tracking import finish_cell, start_cell
    run = start_cell(settings["tracking"], record, folder)  # open while the cell runs: its console, system metrics
    try:
        tasks = check_cell(settings)
        measured, samples = measure(settings, tasks, device)
        record.update(measured)
        record.update(pair_with_baseline(settings, record, tasks, device))
        record["status"] = "complete"
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
    record["timings"] = {**record.get("timings", {}), "cell": time.perf_counter() - started}
    write_record(folder, record, samples, Path(settings["store"]))
    log.log(logging.INFO if record["status"] == "complete" else logging.ERROR, result_line(record))
    finish_cell(run, record, samples or [], settings["task"]["metric"])  # after the line: W&B's console shows it
    return record


def is_reference(settings: dict) -> bool:
    """The cell is the plain baseline every speedup of its group is measured against."""
    return config_hash(baseline_settings(settings), {}) == config_hash(settings, {})  # same fingerprints


def pair_with_baseline(settings: dict, record: dict, tasks: dict, device: str) -> dict:
    """speedup (with its IQR) = the median of the paired rounds' throughput ratios (`measure`); nfe_ratio =
    the plain baseline's NFE over this cell's, from its full evaluation (from the store, or run first); the
    cell's timing judged by the trust rule (harness.timing)."""
    base = baseline_settings(settings)
    base_hash, base_prints = cell_identity(base)
    if is_reference(settings):
        return {**judged(record, [1.0], 1.0), "baseline_hash": base_hash}
    store = Path(settings["store"])
    with cell_lock(store, base_hash):
        found = find_complete(store, base_hash, own_folders=(store / "baselines" / base_hash,))
        if found is None:
            log.info(f"running the baseline {base_hash} this cell is compared with")
            measured, samples = measure(base, tasks, device)  # same task: its lm-eval objects are reused
            found = {"status": "complete", "config_hash": base_hash, "fingerprints": base_prints, "config": base,
                     "method": method_of(base["decoding"]), **environment(), **measured, "baseline_hash": base_hash}
            found.update(judged(found, [1.0], 1.0))
            write_record(store / "baselines" / base_hash, found, samples, store)
    speed, base_speed = record["speed"], found["speed"]
    nfe_ratio = base_speed["nfe"] / speed["nfe"] if speed.get("nfe") else None
    return {**judged(record, record["timing"]["ratios"], nfe_ratio), "baseline_hash": base_hash}


def judged(record: dict, ratios: list[float], nfe_ratio: float | None) -> dict:
    """speedup, its IQR ends, nfe_ratio and the record's timing with the trust rule's verdict. Without paired
    rounds (`pair_rounds=0`, a hardware-free sweep) there is no speedup and no timing to trust."""
    if not ratios:
        return {"speedup": None, "speedup_q1": None, "speedup_q3": None, "nfe_ratio": nfe_ratio,
                "timing": {**record["timing"], "trusted": False, "reasons": ["no paired rounds (pair_rounds=0)"]}}
    speedup, q1, q3 = spread(ratios)
    timing = record["timing"]
    reasons = untrusted_reasons(speedup=speedup, q1=q1, q3=q3, nfe_ratio=nfe_ratio, **{
        k: timing[k] for k in ("cpu_seconds", "wall_seconds", "threads", "cores", "load_average",
                               "load_average_after")})
    return {"speedup": speedup, "speedup_q1": q1, "speedup_q3": q3, "nfe_ratio": nfe_ratio,
            "timing": {**timing, "trusted": not reasons, "reasons": reasons}}


def run_job(cfg: DictConfig) -> float | None:
    """One Hydra job (harness/cli.py): the cell `cfg`, run and recorded; its accuracy for the sweeper."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task chatter drowns the cell's log
    logging.raiseExceptions = False  # a full disk also fails the job's log file: no traceback per log line
    try:
        device = resolve_device(cfg.device)  # the machine's setting, the same for every cell
        record = run_cell(cell_settings(cfg, device), Path(HydraConfig.get().runtime.output_dir), device)
    except (ConfigError, StoreFull) as err:  # every later cell would fail the same way: stop the sweep
        raise SystemExit(f"error: {err}") from None
    if record["status"] == "failed" and HydraConfig.get().mode == RunMode.RUN:
        raise SystemExit(f"error: {record['error']}")
    return record.get("metrics", {}).get("accuracy")

