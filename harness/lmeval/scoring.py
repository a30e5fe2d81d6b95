"""Offline scorers for benchmark tasks, written as lm-eval metric / process_results functions.

Two families:

* MATH (Minerva prompting). The model's answer is the text of the "Final Answer: The final answer is X.
  I hope it is correct." line the 4-shot prompt teaches, falling back to the last ``\\boxed{}``. It is
  compared with the gold by ``math-verify`` (sympy equivalence: ``0.5`` == ``\\frac12``, intervals, ``x=3``
  == ``3``); lm-eval's own math-verify scorer comes with ``lm-eval[math]``, whose antlr pin breaks Hydra,
  so math-verify is called directly. Where it abstains (see ``math_verify_verdict``) a Minerva/Hendrycks
  string normalisation plus exact numeric equality decides (``math_equal``).

* Code execution (HumanEval, MBPP; pass@1). lm-eval's metrics load HF ``code_eval`` from the hub, which
  is unavailable offline. Each program (candidate + tests) runs in a sandbox (``sandbox_child.py``): a
  fresh interpreter with a scrubbed environment in a throw-away directory, resource limits and, where the
  platform allows (root on Linux), no network, its own PID and mount namespaces, private temporary folders
  and a user of its own. A program passes only if it ran to its end (a per-run nonce, written after it
  returned), never by its exit code; its output is read up to a cap; at the timeout, or when it ends,
  everything it started is killed. ``protections()`` says what was active. Generated code is never executed
  in this process. Like ``code_eval``, running anything requires an explicit opt-in (``HF_ALLOW_CODE_EVAL=1``).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "last_boxed",
    "extract_math_answer",
    "normalize_math_answer",
    "math_equal",
    "math_verify_verdict",
    "answers_match",
    "process_math_results",
    "CodeExecutionNotAllowed",
    "require_code_opt_in",
    "LIMITS",
    "protections",
    "run_program",
    "run_programs",
    "pass_at_1",
    "humaneval_program",
    "mbpp_program",
]

# --------------------------------------------------------------------------------------------------
# MATH
# --------------------------------------------------------------------------------------------------

_FINAL_ANSWER = "Final Answer: The final answer is"
_HOPE = "I hope it is correct"


def _balanced_group(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start] == "{"`` (None when it never closes)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed 5`` in ``text``, or None."""
    match = None
    for match in re.finditer(r"\\(?:boxed|fbox)(?![a-zA-Z])", text):
        pass
    if match is None:
        return None
    rest = text[match.end() :]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _balanced_group(text, match.end() + len(rest) - len(stripped))
    if rest[:1].isspace() and stripped:
        # "\boxed 5": the argument runs to the end of the math (a "$") or of the line.
        return re.split(r"[$\n]", stripped, maxsplit=1)[0].strip()
    return None


def extract_math_answer(output: str) -> str:
    """The answer a model wrote: its Minerva "Final Answer" line, else its last box, else ""."""
    at = output.find(_FINAL_ANSWER)
    if at >= 0:
        rest = output[at + len(_FINAL_ANSWER) :]
        end = rest.find(_HOPE)
        # A generation cut by a stop sequence may lack the closing sentence: stop at the line end.
        answer = rest[:end] if end >= 0 else rest.split("\n", 1)[0]
        answer = answer.strip().rstrip(".").strip()
        if answer.startswith("$") and answer.endswith("$") and len(answer) > 1:
            answer = answer.strip("$").strip()
        if answer:
            return answer
    boxed = last_boxed(output)
    return boxed.strip() if boxed is not None else ""


# Literal substitutions applied before spaces are dropped (order matters: "\dfrac" before "\frac" rules).
_SUBSTITUTIONS: list[tuple[str, str]] = [
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("\\left", ""),
    ("\\right", ""),
    ("\\displaystyle", ""),
    ("\\!", ""),
    ("\\,", ""),
    ("\\;", ""),
    ("\\:", ""),
    ("~", " "),
    ("{,}", ""),
    ("^{\\circ}", ""),
    ("^\\circ", ""),
    ("\\%", ""),
    ("%", ""),
    ("\\$", ""),
    ("$", ""),
    ("\\mbox", "\\text"),
    ("\\textnormal", "\\text"),
    ("\\textbf", "\\text"),
    ("\\mathrm", "\\text"),
    ("\\neq", "\\ne"),
    ("\\leq", "\\le"),
    ("\\geq", "\\ge"),
]

# Unit words a model may append to a number without ``\text{}`` ("10 cm", "5 degrees").
_UNIT_WORDS = (
    "degrees?|cm|mm|km|meters?|inch(?:es)?|feet|foot|ft|units?|square units|sq units|dollars?|cents?"
    "|hours?|minutes?|seconds?|days?|mph|pounds?|grams?|gm|kg|miles?|ways|points|students|people"
)
_TRAILING_TEXT = re.compile(r"^(.*\S)\s*\\text\{\s*[a-zA-Z][a-zA-Z .]*\}(\^\{?\d\}?)?$")
_TRAILING_UNIT = re.compile(rf"^(.*[\d}}])\s*(?:{_UNIT_WORDS})(\^\{{?\d\}}?)?$")
# A single symbol being assigned or constrained: "x = 5", "k=2", "\theta = 30", "x \in [1,2]", "a_1 = 3".
_ASSIGNMENT = re.compile(r"^\s*\\?[a-zA-Z]+(?:_\{?\w+\}?)?\s*(?:=|\\in(?![a-zA-Z]))(?!.*=)(.+)$", re.S)
# Only a whole-answer number: inside a tuple "(0,100)" the comma separates coordinates.
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize_math_answer(answer: str) -> str:
    """Canonical string for an answer, so that notational variants of one value compare equal."""
    s = re.sub(r"(?<!\\)\\ ", " ", answer).strip()  # "\ " is a space, but "\\ " is a matrix row end
    if last_boxed(s) is not None and re.fullmatch(r"\$?\\(?:boxed|fbox).*", s, re.S):
        s = last_boxed(s) or ""
    for old, new in _SUBSTITUTIONS:
        s = s.replace(old, new)
    s = s.strip().rstrip(".").strip()

    m = _ASSIGNMENT.match(s)
    # Only a short left side counts as a variable name: "\frac{a}{b} = 3" is not an assignment.
    if m and len(s[: m.start(1)].split("=")[0].strip()) <= 8:
        s = m.group(1).strip()

    # Units: "10\text{ cm}^2" -> "10", then "\text{Evelyn}" -> "Evelyn", then bare unit words.
    m = _TRAILING_TEXT.match(s)
    if m:
        s = m.group(1)
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    m = _TRAILING_UNIT.match(s.strip())
    if m:
        s = m.group(1)

    s = re.sub(r"\s+", "", s).rstrip(".")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")

    # Shorthand TeX: \frac12 -> \frac{1}{2}, \frac1{2} / \frac{1}2 likewise, \sqrt2 -> \sqrt{2}.
    s = re.sub(r"\\frac([^{\\])", r"\\frac{\1}", s)
    s = re.sub(r"\\frac(\{[^{}]*\})([^{\\])", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt([^{\[\\])", r"\\sqrt{\1}", s)
    s = re.sub(r"([\^_])\{(\w)\}", r"\1\2", s)  # x^{2} -> x^2

    # Numbers: ".5" -> "0.5", "1/2" -> "\frac{1}{2}", "2.50" -> "2.5".
    s = re.sub(r"(^|[^\d}])\.(\d)", r"\g<1>0.\2", s)
    s = re.sub(r"^(-?)(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", s)
    if re.fullmatch(r"-?\d+\.\d+", s):
        s = s.rstrip("0").rstrip(".")
    return s


def _as_number(s: str) -> Fraction | None:
    """Exact value of a normalised plain number or integer fraction (None for anything else).

    Exact, not float: a relative tolerance would equate large integers such as 11111111100 and 11111111101.
    """
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", s)
    if m:
        return None if int(m.group(3)) == 0 else Fraction(int(m.group(1) + m.group(2)), int(m.group(3)))
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", s):
        return Fraction(s)
    return None


def math_equal(pred: str, gold: str) -> bool:
    """Whether two answers agree after normalisation, or as numbers (so "0.5" == "\\frac{1}{2}")."""
    a, b = normalize_math_answer(pred), normalize_math_answer(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = _as_number(a), _as_number(b)
    return x is not None and x == y


# Seconds math-verify may spend parsing or comparing one answer: not its default 5, which plain intervals hit
# on a loaded 2-core machine (1-3 s each there), so that the load would decide between math-verify and the
# fallback. Its timeout is a SIGALRM, which only the main thread may set; elsewhere (a scorer run in a worker
# thread) it runs without one.
_MATH_VERIFY_TIMEOUT = 30
_BASE_SUBSCRIPT = re.compile(r"\d_\{?\d")


def math_verify_verdict(pred: str, gold: str) -> bool | None:
    """math-verify's verdict on two extracted answers, or None where it abstains.

    It abstains when either answer has unbalanced braces or is a number in a base ("52_8": math-verify drops
    the subscript, so 52_8 would equal 52_9), or yields no sympy expression (``parse`` with
    ``fallback_mode="no_fallback"`` returns an empty list: empty or unparseable LaTeX), or when the comparison
    raises or times out. Otherwise its verdict, true or false, is final.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    if any(_balanced_group(f"{{{answer}}}", 0) != answer for answer in (pred, gold)):
        return None  # "3}" boxed would read as 3
    if _BASE_SUBSCRIPT.search(pred) or _BASE_SUBSCRIPT.search(gold):
        return None
    timeout = _MATH_VERIFY_TIMEOUT if threading.current_thread() is threading.main_thread() else None
    # Boxed, so that math-verify reads the whole answer as one expression (its highest-priority anchor).
    gold_parsed, pred_parsed = (parse(f"\\boxed{{{answer}}}", fallback_mode="no_fallback", parsing_timeout=timeout)
                                for answer in (gold, pred))
    if not gold_parsed or not pred_parsed:
        return None
    try:
        return verify(gold_parsed, pred_parsed, timeout_seconds=timeout, raise_on_error=True)
    except (Exception, TimeoutException):
        return None


def answers_match(pred: str, gold: str) -> bool:
    """math-verify's verdict where it gives one, else ``math_equal``'s."""
    verdict = math_verify_verdict(pred, gold)
    return math_equal(pred, gold) if verdict is None else verdict


def process_math_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, int]:
    """lm-eval ``process_results``: whether the generation's answer matches the gold.

    The gold is the solution's last box as written where there is one: the task may store a normalised
    ``answer`` ("June20" for ``\\text{June 20}``), which math-verify reads differently.
    """
    gold = last_boxed(doc.get("solution") or "")
    if gold is None:
        gold = doc.get("answer") or ""
    return {"exact_match": int(answers_match(extract_math_answer(results[0]), gold))}


# --------------------------------------------------------------------------------------------------
# Code execution
# --------------------------------------------------------------------------------------------------

_OPT_IN_VAR = "HF_ALLOW_CODE_EVAL"
_WORKERS = max(1, min(4, os.cpu_count() or 1))


class CodeExecutionNotAllowed(RuntimeError):
    """Raised when generated code would run without the user's explicit opt-in."""


def require_code_opt_in() -> None:
    """Refuse to run untrusted model output unless the user asked for it (same switch as HF code_eval)."""
    if os.environ.get(_OPT_IN_VAR) != "1":
        raise CodeExecutionNotAllowed(
            "running generated code needs an explicit opt-in: set HF_ALLOW_CODE_EVAL=1 and pass "
            "confirm_run_unsafe_code=True (harness: unsafe_code=true)"
        )


# Per-program limits. Address space is per process; with the process cap it bounds a fork bomb's memory too.
LIMITS = {"memory_bytes": 1 << 30, "file_bytes": 16 << 20, "processes": 32, "open_files": 256}
_STDERR_CAP = 64 * 1024  # the tail is kept: a traceback's last line says why a program failed
_CHILD = Path(__file__).with_name("sandbox_child.py")
# Isolated, and without site's start-up hooks (.pth files): half the start-up time, and the harness's own
# editable install is not importable in there; the child puts site-packages on sys.path itself.
_INTERPRETER = (sys.executable, "-I", "-S", str(_CHILD))
_KILL = shutil.which("kill")


def _environment(workdir: str) -> dict[str, str]:
    """Nothing of the harness's environment (tokens, proxies, paths) reaches the program."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _settings(workdir: str, timeout: float, marker_fd: int = -1) -> dict[str, Any]:
    # A user id of its own per run (root only): a process cap that counts only this run, and a way to kill
    # everything the run started, wherever it hid.
    uid = 2**20 + secrets.randbelow(2**30) if os.geteuid() == 0 and _KILL else None
    limits = LIMITS | {"cpu_seconds": math.ceil(timeout) + 1}
    return {"workdir": workdir, "uid": uid, "limits": limits, "marker_fd": marker_fd}


@functools.cache
def protections() -> dict[str, Any]:
    """What the code sandbox enforces on this machine (probed once): recorded in a code task's protocol."""
    with tempfile.TemporaryDirectory(prefix="harness_code_") as workdir:
        Path(workdir, "program.py").write_text("")
        probe = subprocess.run([*_INTERPRETER, "--probe", json.dumps(_settings(workdir, 10.0))],
                               cwd=workdir, env=_environment(workdir), capture_output=True, text=True,
                               timeout=60, start_new_session=True, check=False)
    if probe.returncode != 0:
        raise RuntimeError(f"code sandbox probe failed: {probe.stderr.strip().splitlines()[-1:]}")
    return {"completion_marker": True, "scrubbed_environment": True, "fresh_directory": True,
            "output_cap_bytes": _STDERR_CAP, **LIMITS, "core_dumps": False, **json.loads(probe.stdout)}


def _end(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the program's session and, given the user it ran as (a user of its own), every process of that user."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if uid is not None:
        subprocess.run([_KILL, "-9", "-1"], user=uid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    proc.wait()


def _read_bounded(proc: subprocess.Popen, caps: dict[int, int], timeout: float, on_exit) -> tuple[dict, bool]:
    """Each pipe's last ``caps[fd]`` bytes, read (the rest discarded) until the pipes close and the process has
    ended, which calls ``on_exit()`` at once (it kills any leftover holding the pipes); True if time ran out."""
    tails = {fd: bytearray() for fd in caps}
    deadline = time.monotonic() + timeout
    exited = os.pidfd_open(proc.pid)  # readable once the process has ended
    waiting = {*caps, exited}
    with selectors.DefaultSelector() as selector:
        for fd in waiting:
            selector.register(fd, selectors.EVENT_READ)
        try:
            while waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return tails, True
                for key, _ in selector.select(remaining):
                    data = b"" if key.fd == exited else os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fd)
                        waiting.discard(key.fd)
                        if key.fd == exited:
                            on_exit()
                        continue
                    tails[key.fd] += data
                    del tails[key.fd][: -caps[key.fd]]
        finally:
            os.close(exited)
    return tails, False


def run_program(program: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Run ``program`` in the sandbox; (passed, "passed" | "failed: <why>" | "timed out").

    Passed means the program ran to its end: the sandbox wrote the run's nonce after the program returned.
    The exit code alone never counts.
    """
    nonce = secrets.token_hex(16).encode()
    with tempfile.TemporaryDirectory(prefix="harness_code_") as workdir:
        Path(workdir, "program.py").write_text(program, encoding="utf-8")
        marker_r, marker_w = os.pipe()
        settings = _settings(workdir, timeout, marker_w)
        try:
            proc = subprocess.Popen([*_INTERPRETER, json.dumps(settings)], cwd=workdir,
                                    env=_environment(workdir), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, pass_fds=(marker_w,), start_new_session=True)
        finally:
            os.close(marker_w)
        try:
            with proc.stdin:
                proc.stdin.write(nonce)
        except BrokenPipeError:
            pass
        stderr, uid = proc.stderr.fileno(), settings["uid"]
        # In a PID namespace, the end of its init (before the end of this process) ended everything else.
        on_exit = functools.partial(_end, proc, None if protections()["pid_namespace"] else uid)
        try:
            tails, timed_out = _read_bounded(proc, {marker_r: len(nonce) + 1, stderr: _STDERR_CAP}, timeout, on_exit)
        finally:
            if proc.returncode is None:  # timed out: the namespace's init may have left the session
                _end(proc, uid)
            os.close(marker_r)
            proc.stderr.close()
    if tails[marker_r] == nonce:
        return True, "passed"
    if timed_out:
        return False, "timed out"
    lines = [line for line in tails[stderr].decode("utf-8", "replace").splitlines() if line.strip()]
    return False, "failed: " + (lines[-1].strip() if lines else f"exit code {proc.returncode} before its tests ended")


def run_programs(programs: Sequence[str], timeout: float = 10.0) -> list[tuple[bool, str]]:
    """``run_program`` over many programs, a few at a time (each in a sandbox of its own)."""
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return list(pool.map(lambda p: run_program(p, timeout), programs))


def pass_at_1(
    references: Sequence[str] | str,
    predictions: Sequence[Sequence[str]] | Sequence[str] | str,
    timeout: float = 10.0,
) -> float:
    """lm-eval metric: mean over problems of the fraction of candidates passing ``candidate + tests``."""
    require_code_opt_in()
    refs = [references] if isinstance(references, str) else list(references)
    preds = [predictions] if isinstance(predictions, str) else list(predictions)
    candidates = [[p] if isinstance(p, str) else list(p) for p in preds]
    if len(refs) != len(candidates):
        raise ValueError(f"{len(refs)} references but {len(candidates)} predictions")
    if not refs:
        return 0.0
    jobs = [(i, cand + "\n" + ref) for i, (ref, cands) in enumerate(zip(refs, candidates)) for cand in cands]
    outcomes = run_programs([program for _, program in jobs], timeout)
    passed = [0] * len(refs)
    for (i, _), (ok, _) in zip(jobs, outcomes):
        passed[i] += ok
    return sum(p / len(c) for p, c in zip(passed, candidates) if c) / len(refs)


def humaneval_program(doc: dict[str, Any], completion: str) -> str:
    """HumanEval's check program: prompt + completion, then its tests run on the entry point."""
    return doc["prompt"] + completion + "\n" + doc["test"] + f"\ncheck({doc['entry_point']})"


def mbpp_program(doc: dict[str, Any], code: str) -> str:
    """MBPP's check program: the candidate, the task's setup code, then its asserts.

    The setup goes after the candidate because it may use the candidate's names (task 367 builds
    trees from the solution's own ``Node`` class).
    """
    return "\n".join([code, doc.get("test_setup_code") or "", *doc["test_list"]]) + "\n"
