"""The installable wheel: built from the repository, it carries every Hydra config, the embedded default and the
task YAMLs, and the unpacked wheel runs `dllm-harness` from another folder (its configs found inside the
package); records name the checkout's commit only in a checkout of this project. `--help` and TAB completion
list only the options a user picks, without importing torch."""
import json
import os
import subprocess
import sys
import zipfile
from configparser import ConfigParser
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness import __version__, schema
from harness.decoding import POLICIES
from harness.run import source_commit

from .conftest import REPO

CONF = REPO / "conf"
USER_GROUPS = ("model", "task", "tracking", "experiment")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, timeout=600)
    (built,) = out.glob("dllm_harness-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked as pip would install it (its files are the install); first on PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def harness_cli(*args, cwd: Path, pythonpath: Path | None = None, env: dict | None = None):
    environment = {**os.environ, **(env or {})}
    if pythonpath:
        environment["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=300)


def option_lines(help_text: str) -> dict[str, list[str]]:
    """`group: a, b, c` lines of the help's option listing."""
    section = help_text.split("== Options (group=option) ==")[1].split("==")[0]
    return {group: options.split(", ") for group, _, options in
            (line.partition(": ") for line in section.strip().splitlines())}


def test_the_wheel_carries_configs_assets_task_yamls_and_entry_points(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"harness/conf/{p.relative_to(CONF)}" for p in CONF.rglob("*.yaml")}
    assert "harness/conf/config.yaml" in configs and "harness/conf/experiment/quickstart.yaml" in configs
    assert configs <= names, f"configs missing from the wheel: {sorted(configs - names)}"
    assets = {str(p.relative_to(REPO)) for p in (REPO / "harness" / "assets").rglob("*") if p.is_file()}
    assert "harness/assets/tiny-llada/model.safetensors" in assets and assets <= names
    task_yamls = {str(p.relative_to(REPO)) for p in (REPO / "harness").rglob("*.yaml")}
    assert task_yamls <= names, f"task YAMLs missing: {sorted(task_yamls - names)}"
    sources = {str(p.relative_to(REPO)) for package in ("harness", "analysis", "hydra_plugins")
               for p in (REPO / package).rglob("*.py")}
    assert sources <= names, f"modules missing: {sorted(sources - names)}"
    entry_points = ConfigParser()
    (listing,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points.read_string(zipfile.ZipFile(wheel).read(listing).decode())
    assert entry_points["console_scripts"]["dllm-harness"] == "harness.cli:main"
    assert entry_points["console_scripts"]["dllm-bench"] == "harness.bench:main"


def test_the_installed_package_finds_its_configs_from_any_folder(installed, tmp_path):
    done = harness_cli("--cfg", "job", "experiment=quickstart", "task=perm", cwd=tmp_path, pythonpath=installed)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = OmegaConf.create(done.stdout)
    assert (cfg.sweep, cfg.task.name, cfg.model.path, cfg.model.block_length) == ("quickstart", "perm", "tiny", 8)
    probe = ("import harness.cli, harness.models.loading as m, harness.learn2pd.filter as f; "
             "print(harness.cli.CONF, m.NAMED_MODELS['tiny'], f.NAMED_FILTERS['tiny'])")
    paths = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)},
                           capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(installed / "harness") and Path(p).exists() for p in paths), paths


def test_records_name_the_commit_only_in_a_checkout_of_this_project(installed, tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert source_commit() == head  # this checkout
    subprocess.run(["git", "init", "-q", str(installed)], check=True)  # an install inside another repository
    (installed / "pyproject.toml").write_text('[project]\nname = "another-project"\n')
    subprocess.run(["git", "-C", str(installed), "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q",
                    "--allow-empty", "-m", "other"], check=True)
    probe = "from harness.run import source_commit; print(source_commit())"
    recorded = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(installed)}, check=True).stdout.strip()
    assert recorded == f"dllm-harness=={__version__}"


def test_help_lists_the_options_a_user_picks_and_no_schema(tmp_path):
    done = harness_cli("--help", cwd=REPO, env={"DLLM_HARNESS_DATA": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    listed = option_lines(done.stdout)
    expected = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in USER_GROUPS}
    assert listed == {**expected, "decoding": sorted(POLICIES)}
    assert "schema" not in done.stdout
    assert "strategy: baseline" in done.stdout and "block_length: ${model.block_length}" in done.stdout


def test_tab_completion_lists_group_options_and_decoding_keys(tmp_path):
    env = {"DLLM_HARNESS_DATA": str(tmp_path)}
    options = harness_cli("-sc", "query=bash", cwd=REPO, env={**env, "COMP_LINE": "dllm-harness model="})
    assert options.stdout.split() == [f"model={p.stem}" for p in sorted((CONF / "model").glob("*.yaml"))]
    line = "dllm-harness decoding=threshold decoding.th"
    keys = harness_cli("-sc", "query=bash", cwd=REPO, env={**env, "COMP_LINE": line})
    assert keys.stdout.split() == ["decoding.threshold="]  # the chosen strategy's knobs


def test_listing_imports_neither_torch_nor_lm_eval_once_the_options_are_cached(tmp_path):
    heavy = "sorted(m for m in ('torch', 'lm_eval', 'transformers', 'wandb') if m in sys.modules)"
    probe = (f"import atexit, sys; atexit.register(lambda: print('heavy:', {heavy})); "  # Hydra exits after help
             "sys.argv = ['dllm-harness', '--help']; from harness import cli; cli.main()")
    env = {**os.environ, "DLLM_HARNESS_DATA": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    assert "heavy: ['torch']" in first.stdout, first.stderr[-2000:]  # the first listing builds the cache
    again = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    assert "heavy: []" in again.stdout, again.stderr[-2000:]


def test_the_cached_options_are_the_typed_schemas_and_a_stale_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_HARNESS_DATA", str(tmp_path))
    typed = {name: OmegaConf.to_container(OmegaConf.structured(node), enum_to_str=True)
             for name, node in schema.typed_decoding_options().items()}
    (tmp_path / "decoding-options.json").write_text(json.dumps({"source": "an older harness",
                                                                "options": {"gone": {"strategy": "gone"}}}))
    assert schema.listed_decoding_options() == typed
    assert json.loads((tmp_path / "decoding-options.json").read_text())["options"] == typed
