"""The code sandbox against programs that try to fool the scorer or escape: each ends failed or contained, and
this (pytest) process survives. Every program runs for real in the sandbox; the synthetic `code` checker is
given answers that would hang or escape an `exec`."""
from __future__ import annotations

import os
import resource
import secrets
import socket
import sys
import time
from pathlib import Path

import pytest

from harness.lmeval import scoring
from harness.lmeval.scoring import LIMITS, mbpp_program, protections, run_program
from harness.tasks.synthetic import TASKS, code_agrees

from .conftest import DATA, REPO

FAILING_TEST = {"test_setup_code": "", "test_list": ["assert add(2, 3) == 5"]}
SANDBOX_SCRIPT = str(Path(scoring.__file__).with_name("sandbox_child.py"))  # in every sandboxed command line
ROOT_ON_LINUX = pytest.mark.skipif(os.geteuid() != 0 or not sys.platform.startswith("linux"),
                                   reason="the full sandbox needs root on Linux")


def _running(token: str) -> list[int]:
    """Processes whose command line holds ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def _gone(token: str = SANDBOX_SCRIPT) -> bool:
    """Nothing the sandbox started is left (a SIGKILLed process may take a moment to disappear)."""
    deadline = time.monotonic() + 2
    while _running(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _running(token)


@ROOT_ON_LINUX
def test_every_protection_is_active_as_root_on_linux():
    active = protections()
    assert {k: active[k] for k in ("network", "pid_namespace", "private_tmp", "own_user", "ipc_namespace")} == {
        "network": False, "pid_namespace": True, "private_tmp": True, "own_user": True, "ipc_namespace": True}
    assert active["completion_marker"] and active["scrubbed_environment"] and active["processes"] == LIMITS["processes"]


@pytest.mark.parametrize("exit_early", ["raise SystemExit(0)", "import os; os._exit(0)", "import sys; sys.exit()",
                                        "exit()"])
def test_exiting_before_the_tests_fails(exit_early):
    program = mbpp_program(FAILING_TEST, f"def add(a, b):\n    return a * b\n{exit_early}")
    ok, status = run_program(program)
    assert not ok and "before its tests ended" in status


def test_writing_to_every_descriptor_cannot_forge_the_marker():
    program = ("import os\nfor fd in range(64):\n    try:\n        os.write(fd, b'passed ' * 64)\n"
               "    except OSError:\n        pass\nos._exit(0)\n")
    ok, status = run_program(program)
    assert not ok and status.startswith("failed: ")


def test_the_harness_environment_does_not_leak(monkeypatch):
    monkeypatch.setenv("HARNESS_SECRET_TOKEN", "hunter2")
    program = (
        "import os\n"
        "assert 'hunter2' not in repr(os.environ), 'token in the environment'\n"
        f"for pid in ({os.getpid()}, os.getppid(), 1):\n"
        "    try:\n"
        "        leaked = b'hunter2' in open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError:\n"
        "        leaked = False\n"
        "    assert not leaked, f'token read from process {pid}'\n"
        "assert sorted(os.environ) == ['HOME', 'LANG', 'MKL_NUM_THREADS', 'OMP_NUM_THREADS', "
        "'OPENBLAS_NUM_THREADS', 'PATH', 'TMPDIR'], sorted(os.environ)\n"
        "assert os.environ['HOME'] == os.environ['TMPDIR'] == os.getcwd()\n"
    )
    assert run_program(program) == (True, "passed")


@ROOT_ON_LINUX
def test_writes_outside_its_directory_do_not_land(tmp_path):
    tmp_path.chmod(0o777)
    token = secrets.token_hex(4)
    targets = [tmp_path / "escaped", REPO / f"escaped_{token}", Path(f"/tmp/escaped_{token}"),
               Path(f"/dev/shm/escaped_{token}"), Path(f"/var/tmp/escaped_{token}")]
    program = (f"for path in {[str(t) for t in targets]!r}:\n"
               "    try:\n        open(path, 'w').write('x')\n    except OSError:\n        pass\n"
               "open('big', 'wb').write(bytes(100 << 20))\n")
    ok, status = run_program(program)
    assert (ok, status) == (False, "failed: OSError: [Errno 27] File too large")
    assert [t for t in targets if t.exists()] == []


@ROOT_ON_LINUX
def test_no_network():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        program = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                   "except OSError as e:\n    print(e)\nelse:\n    raise SystemExit('connected')\n")
        assert run_program(program) == (True, "passed")
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody knocked


@ROOT_ON_LINUX
def test_the_program_cannot_kill_the_harness():
    me = os.getpid()
    program = (
        "import os, signal\n"
        f"for kill in (lambda: os.kill({me}, signal.SIGKILL), lambda: os.killpg(os.getpgid({me}), signal.SIGKILL),\n"
        "             lambda: os.kill(os.getppid(), signal.SIGKILL)):\n"
        "    try:\n        kill()\n    except OSError:\n        pass\n"
        "raise SystemExit(0)\n"
    )
    ok, status = run_program(program)
    assert not ok and "before its tests ended" in status
    assert os.getpid() == me and _gone()


@ROOT_ON_LINUX
@pytest.mark.parametrize("then", ["while True: pass", "pass"])
def test_a_setsid_double_fork_does_not_outlive_the_run(then):
    token = f"sandbox-daemon-{secrets.token_hex(4)}"
    program = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {token!r}])\n"
        "    os._exit(0)\n"
        "def started():\n"
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        f"            if {token!r}.encode() in open(f'/proc/{{pid}}/cmdline', 'rb').read():\n"
        "                return True\n"
        "        except OSError:\n"
        "            pass\n"
        "deadline = time.monotonic() + 10\n"
        "while not started():\n"
        "    assert time.monotonic() < deadline, 'the daemon never started'\n"
        "    time.sleep(0.05)\n"
        f"{then}\n"
    )
    outcome = run_program(program, timeout=15 if then == "pass" else 3)
    assert outcome == ((True, "passed") if then == "pass" else (False, "timed out"))
    assert _gone(token) and _gone()


def test_huge_output_is_capped():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for stream in ("sys.stdout", "sys.stderr"):
        program = f"import sys\nfor _ in range(100):\n    {stream}.write('x' * 1_000_000)\nassert False, 'done'\n"
        assert run_program(program) == (False, "failed: AssertionError: done")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: 200 MB went through


@pytest.mark.parametrize("stream", ["sys.stdout", "sys.stderr"])
def test_endless_output_ends_at_the_timeout(stream):
    start = time.monotonic()
    assert run_program(f"import sys\nwhile True:\n    {stream}.write('x' * 10_000)\n", timeout=2) == (False, "timed out")
    assert time.monotonic() - start < 6 and _gone()


@ROOT_ON_LINUX
def test_a_fork_bomb_is_bounded():
    # A linear bomb that stops itself at 1000, so that a missing limit fails the test without hurting the machine.
    program = (
        "import os, time\nchildren = 0\n"
        "try:\n"
        "    while children < 1000:\n"
        "        if os.fork() == 0:\n            time.sleep(60)\n            os._exit(0)\n"
        "        children += 1\n"
        "except OSError:\n    pass\n"
        f"assert children < {LIMITS['processes']}, children\n"
    )
    assert run_program(program) == (True, "passed")
    assert _gone()


def test_a_memory_hog_fails():
    assert run_program("hog = bytearray(8 << 30)") == (False, "failed: MemoryError")


@pytest.mark.parametrize("answer", ["return 9**9**9", "return x ** x ** x", "return " + "9" * 200,
                                    "return " + " * ".join(["x"] * 120), "return __import__('os')"])
def test_the_synthetic_code_checker_is_bounded(answer):
    problem = {"meta": {"reference": "return x * y + z"}}
    assert not TASKS["code"].score(problem, answer)
    assert TASKS["code"].score(problem, "return z + y * x")
    assert code_agrees("return x * x", "return x ** 2")


@pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")
def test_code_cells_record_the_sandbox_in_their_protocol(monkeypatch):
    from hydra import compose, initialize_config_dir

    from harness.run import cell_settings, check_cell, measure
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["task=mbpp", f"task.data_dir={DATA}", "task.limit=1", "task.unsafe_code=true",
                                           "batch_size=1", "warmup=0", "tracking=disabled",
                                           "decoding.gen_length=8", "decoding.block_length=8"])
    settings = cell_settings(cfg, "cpu")
    record, _ = measure(settings, check_cell(settings), "cpu")
    assert record["protocol"]["sandbox"] == protections()
