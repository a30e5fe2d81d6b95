"""Synthetic tasks for the embedded default model: word-level text, deterministic generators, checkable answers.

Each task draws problems from a seeded `random.Random` and scores an answer by checking it, not by exact
match, so tasks with several valid answers (any-order lists, commutative code) are fair to every decoder.
Those are the tasks where committing tokens in parallel costs accuracy: each position alone is uncertain
between valid choices, and only sequential decoding keeps them consistent.
"""
from __future__ import annotations

import ast
import json
import operator
import random
import re
from dataclasses import dataclass
from pathlib import Path

NAMES = ["ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal", "ivy", "jon", "kim", "lee"]
COLORS = ["red", "blue", "green", "black", "white", "pink", "gray", "brown"]
OBJECTS = ["ball", "cup", "hat", "book", "box", "pen", "bag", "kite", "lamp", "shoe"]
ITEMS = ["apples", "cards", "coins", "eggs", "stamps", "shells", "beads", "rocks"]
GAIN = ["buys", "finds", "gets", "wins"]
LOSS = ["gives away", "loses", "eats", "sells"]
CODE_VARS = ["x", "y", "z"]


@dataclass(frozen=True)
class Problem:
    task: str
    prompt: str
    answer: str  # one valid answer (the training target)
    meta: dict  # what the scorer needs

    def to_json(self) -> str:
        return json.dumps({"task": self.task, "prompt": self.prompt, "answer": self.answer, "meta": self.meta})


class Task:
    name: str
    dependent: bool = False  # several valid answers whose tokens depend on each other

    def sample(self, rng: random.Random) -> Problem:
        raise NotImplementedError

    def score(self, problem: dict, output: str) -> bool:
        raise NotImplementedError


class Arith(Task):
    """Math: a GSM8K-style word problem with one or two steps, a short chain of thought and `#### N`."""

    name = "arith"

    def sample(self, rng):
        who, item = rng.choice(NAMES), rng.choice(ITEMS)
        value = rng.randint(2, 20)
        sentences, steps = [f"{who} has {value} {item} ."], []
        for _ in range(rng.randint(1, 2)):
            amount = rng.randint(1, 9)
            if rng.random() < 0.5 or amount > value:
                sentences.append(f"{who} {rng.choice(GAIN)} {amount} more .")
                steps.append(f"{value} + {amount} = {value + amount} .")
                value += amount
            else:
                sentences.append(f"{who} {rng.choice(LOSS)} {amount} .")
                steps.append(f"{value} - {amount} = {value - amount} .")
                value -= amount
        prompt = f"math : {' '.join(sentences)} how many {item} does {who} have ?"
        return Problem(self.name, prompt, f"{' '.join(steps)} #### {value}", {"target": value})

    def score(self, problem, output):
        found = re.findall(r"####\s*(\d+)", output)
        return bool(found) and int(found[-1]) == problem["meta"]["target"]


class Facts(Task):
    """QA: answer a question about a short generated context of who owns what."""

    name = "facts"

    def sample(self, rng):
        people = rng.sample(NAMES, 3)
        owned = [(p, rng.choice(COLORS), o) for p, o in zip(people, rng.sample(OBJECTS, 3))]
        context = " ".join(f"{p} has a {c} {o} ." for p, c, o in owned)
        who, color, obj = rng.choice(owned)
        kind = rng.randrange(3)
        if kind == 0:
            question, answer = f"what color is the {obj} of {who} ?", color
        elif kind == 1:
            question, answer = f"who has the {obj} ?", who
        else:
            question, answer = f"what does {who} have ?", f"a {color} {obj}"
        return Problem(self.name, f"qa : {context} {question}", answer, {"target": answer})

    def score(self, problem, output):
        return output.split() == problem["meta"]["target"].split()


class Code(Task):
    """Code: complete `return ...` for a described function; checked by running it on test inputs. Sums and
    products may be written in any order, so the answer's tokens must agree with each other."""

    name = "code"
    dependent = True

    def sample(self, rng):
        def term():
            return rng.choice(CODE_VARS) if rng.random() < 0.7 else str(rng.randint(1, 9))
        shape = rng.randrange(3)
        if shape == 0:
            terms = [term() for _ in range(rng.randint(2, 3))]
            spec, expr = "the sum of " + " and ".join(terms), " + ".join(rng.sample(terms, len(terms)))
        elif shape == 1:
            a, b = term(), term()
            spec, expr = f"the product of {a} and {b}", " * ".join(rng.sample([a, b], 2))
        else:
            a, b, c = term(), term(), term()
            product = " * ".join(rng.sample([a, b], 2))
            spec = f"the product of {a} and {b} plus {c}"
            expr = " + ".join(rng.sample([product, c], 2))
        prompt = f"code : def f ( x , y , z ) : return {spec}"
        return Problem(self.name, prompt, f"return {expr}", {"reference": f"return {expr}"})

    def score(self, problem, output):
        return code_agrees(problem["meta"]["reference"], output)


class Perm(Task):
    """Any-order list: write the given numbers in any order. Each position alone is a coin flip between the
    numbers not yet written."""

    name = "perm"
    dependent = True

    def sample(self, rng):
        numbers = rng.sample(range(100), rng.randint(2, 4))
        shuffled = rng.sample(numbers, len(numbers))
        return Problem(self.name, "perm : " + " ".join(map(str, numbers)), " ".join(map(str, shuffled)),
                       {"numbers": numbers})

    def score(self, problem, output):
        return sorted(output.split()) == sorted(map(str, problem["meta"]["numbers"]))


# Bounds of the `code` checker: any answer the tasks ask for is a few characters long and evaluates far below
# 2**64, so anything beyond is wrong, and nothing an answer writes can make the check slow (`9**9**9`).
CODE_MAX_CHARS = 256
CODE_MAX_BITS = 64
CODE_INPUTS = [(2, 3, 5), (7, 11, 13), (0, 1, 4)]
_CODE_OPERATORS = {ast.Add: operator.add, ast.Mult: operator.mul, ast.Pow: operator.pow}


def _evaluate(node: ast.AST, variables: dict[str, int]) -> int:
    """The value of an expression of integers, x/y/z, +, * and **; ValueError for anything else or too big."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        value = node.value
    elif isinstance(node, ast.Name) and node.id in variables:
        value = variables[node.id]
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
        value = _evaluate(node.operand, variables)
    elif isinstance(node, ast.BinOp) and type(node.op) in _CODE_OPERATORS:
        left, right = _evaluate(node.left, variables), _evaluate(node.right, variables)
        if isinstance(node.op, ast.Pow) and not 0 <= right * max(left.bit_length(), 1) <= CODE_MAX_BITS:
            raise ValueError("power out of bounds")  # checked before computing it
        value = _CODE_OPERATORS[type(node.op)](left, right)
    else:
        raise ValueError(f"not allowed: {type(node).__name__}")
    if value.bit_length() > CODE_MAX_BITS:
        raise ValueError("value out of bounds")
    return value


def code_agrees(reference: str, candidate: str) -> bool:
    """Whether both `return ...` bodies give f(x, y, z) the same values on test inputs.

    The answer is parsed, never run: a bounded evaluator of integer arithmetic cannot be escaped or blown up,
    and costs microseconds (a sandboxed process per answer would cost ~0.1 s, hundreds of times per cell)."""
    expressions = []
    for body in (reference, candidate.strip()):
        if len(body) > CODE_MAX_CHARS or not re.fullmatch(r"return [xyz0-9+* ]+", body):
            return False
        try:
            expressions.append(ast.parse(body.removeprefix("return "), mode="eval").body)
        except SyntaxError:
            return False
    try:
        reference_values, candidate_values = (
            [_evaluate(expression, dict(zip("xyz", args))) for args in CODE_INPUTS] for expression in expressions)
    except ValueError:
        return False
    return reference_values == candidate_values


class Lookup(Task):
    """Training drill (not benchmarked): read one name's colour off a bare context. `facts` needs this
    lookup, and the tiny model learns it from `facts` alone only very slowly: drilled on its own it clicks
    after ~8,000 steps."""

    name = "kv"

    def sample(self, rng):
        people = rng.sample(NAMES, 3)
        colors = [rng.choice(COLORS) for _ in people]
        i = rng.randrange(3)
        context = " ".join(f"{p} {c} ." for p, c in zip(people, colors))
        return Problem(self.name, f"qa : {context} {people[i]} ?", colors[i], {"target": colors[i]})

    def score(self, problem, output):
        return output.split() == [problem["meta"]["target"]]


class ReverseLookup(Lookup):
    """Training drill: who owns an object (the name sits before the key, unlike `kv`)."""

    name = "kvrev"

    def sample(self, rng):
        people, objects = rng.sample(NAMES, 3), rng.sample(OBJECTS, 3)
        i = rng.randrange(3)
        context = " ".join(f"{p} {o} ." for p, o in zip(people, objects))
        return Problem(self.name, f"qa : {context} who {objects[i]} ?", people[i], {"target": people[i]})


TASKS: dict[str, Task] = {t.name: t for t in (Arith(), Facts(), Code(), Perm())}
DRILLS: dict[str, Task] = {t.name: t for t in (Lookup(), ReverseLookup())}  # trained on, never benchmarked


def get_task(name: str) -> Task:
    """A benchmark task or a training drill, by name."""
    return TASKS[name] if name in TASKS else DRILLS[name]


SPLIT_SIZES = {"validation": 200, "test": 500, "train": 2000}


def held_out(task: Task, seed: int = 1234) -> dict[str, list[Problem]]:
    """Validation and test problems (distinct prompts, seeded); training must avoid these prompts."""
    rng = random.Random(f"{task.name}-{seed}")
    splits, seen = {}, set()
    for split in ("validation", "test"):
        problems = []
        while len(problems) < SPLIT_SIZES[split]:
            p = task.sample(rng)
            if p.prompt not in seen:
                seen.add(p.prompt)
                problems.append(p)
        splits[split] = problems
    return splits


def training_stream(task: Task, exclude: set[str], seed: int):
    """Endless training problems whose prompts never occur in the held-out splits."""
    rng = random.Random(f"{task.name}-train-{seed}")
    while True:
        p = task.sample(rng)
        if p.prompt not in exclude:
            yield p


def write_splits(folder: str | Path, seed: int = 1234) -> Path:
    """Write `<task>/{train,validation,test}.jsonl` for every task (lm-eval reads these)."""
    folder = Path(folder)
    for task in TASKS.values():
        splits = held_out(task, seed)
        exclude = {p.prompt for ps in splits.values() for p in ps}
        stream = training_stream(task, exclude, seed)
        splits["train"] = [next(stream) for _ in range(SPLIT_SIZES["train"])]
        (folder / task.name).mkdir(parents=True, exist_ok=True)
        for split, problems in splits.items():
            (folder / task.name / f"{split}.jsonl").write_text("".join(p.to_json() + "\n" for p in problems))
    return folder


TEMPLATE_WORDS = ("math : has . more how many does have ? qa a what color is the of who code def f ( x , y z ) "
                  "return sum and product plus perm + * - = ####").split()


def vocabulary() -> list[str]:
    """Every word the tasks can produce; each number 0-99 is one token."""
    words = {str(n) for n in range(100)} | set(TEMPLATE_WORDS) | set(NAMES) | set(COLORS) | set(OBJECTS)
    words |= set(ITEMS) | {w for phrase in GAIN + LOSS for w in phrase.split()}
    return sorted(words, key=lambda w: (not w.isdigit(), int(w) if w.isdigit() else 0, w))
