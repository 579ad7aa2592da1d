"""Mutations of a TorchScript archive's code tables (code/__torch__/*.py) and constants.pkl, for
fuzzing the static gate and the loader behind it. Hostile calls aim at a sentinel file: if one ever
ran, the file would appear. The archives are only ever opened by the loader."""

from __future__ import annotations

import ast
import io
import pickle
import random
import re
import tokenize
import warnings
from collections.abc import Callable

from tests.fuzz.ts_seeds import SAMPLES, Entries, entries, pack

SEEDS = ("mlp.pt", "cnn.pt", "resnet.pt")
SENTINEL = "{sentinel}"  # in the pools below: replaced by the sentinel path of the run

# Statements injected into a method: calls the gate must refuse (hostile, each aimed at the
# sentinel), and plain TorchScript that it must let through (the gate is not a blanket refusal).
HOSTILE = (
    "_s = torch.from_file(\"{sentinel}\", True, 64)",
    "_s = ops.aten.from_file(\"{sentinel}\", True, 64)",
    "torch.save(input, \"{sentinel}\")",
    "print(\"{sentinel}\")",
    "ops.prim.Print(\"{sentinel}\")",
    "_s = open(\"{sentinel}\", \"w\")",
    "_s = __import__(\"os\").system(\"touch {sentinel}\")",
    "_s = torch.load(\"{sentinel}\")",
    "_s = ops.my_ns.write_file(\"{sentinel}\")",
    "_s = torch.classes.my_ns.Writer(\"{sentinel}\")",
    "_s = getattr(torch, \"from_file\")(\"{sentinel}\", True, 64)",
    "_s = eval(\"open('{sentinel}', 'w')\")",
)
BENIGN = (
    "_b = torch.add(1, 2)",
    "_b = annotate(List[int], [])",
    "_b = torch.relu(torch.zeros([2]))",
    "_b = [1, 2, 3]",
    "_b = torch.len([1])",
    "_b = \"text\"",
    "for _i in range(2):\n  _b = _i",
    "if True:\n  pass",
)
CALLEES = ("torch.relu", "torch.sigmoid", "torch.tanh", "torch.neg", "torch.from_file", "torch.save",
           "print", "ops.aten.save", "ops.prim.Print", "ops.evil.op", "open", "torch.classes.ns.C",
           "__torch__.Missing", "torch.linear", "torch.conv2d", "torch.flatten", "torch.exp")
TOKENS = ("0", "-1", "1e308", "9223372036854775807", "2**63", "None", "True", "\"{sentinel}\"", "self",
          "input", "torch", "ops", "__torch__", "(", ")", "[", "]", ",", ":", "=", ".", "lambda", "import",
          "\\", "#", "\"", "'''", "\x00", "\t", "é")


def _code_index(items: Entries, rng: random.Random) -> int:
    code = [i for i, (name, _) in enumerate(items) if name.endswith(".py") and "/code/" in name]
    return rng.choice(code)


def _lines(items: Entries, i: int) -> list[str]:
    return items[i][1].decode("utf-8", "replace").split("\n")


def _set(items: Entries, i: int, lines: list[str]) -> None:
    items[i] = (items[i][0], "\n".join(lines).encode("utf-8", "surrogatepass"))


def _body_lines(lines: list[str]) -> list[int]:
    """Indices of the lines inside a method body (indented under a def), where a statement may go."""
    inside, out = False, []
    for k, line in enumerate(lines):
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if stripped.startswith("def "):
            inside = True
        elif inside and indent >= 4 and stripped and not stripped.startswith(("input", "self", ")")):
            out.append(k)
        elif indent < 4 and stripped:
            inside = False
    return out


def _indented(statement: str, indent: str) -> list[str]:
    return [indent + part for part in statement.split("\n")]


def _inject(items: Entries, rng: random.Random, pool: tuple[str, ...], sentinel: str) -> None:
    i = _code_index(items, rng)
    lines = _lines(items, i)
    body = _body_lines(lines)
    if not body:
        return
    k = rng.choice(body)
    indent = lines[k][: len(lines[k]) - len(lines[k].lstrip(" "))]
    lines[k:k] = _indented(rng.choice(pool).replace(SENTINEL, sentinel), indent)
    _set(items, i, lines)


def inject_hostile(items: Entries, rng: random.Random, sentinel: str) -> None:
    """A hostile statement inserted before a statement of a method (forward and the others)."""
    _inject(items, rng, HOSTILE, sentinel)


def inject_benign(items: Entries, rng: random.Random, sentinel: str) -> None:
    _inject(items, rng, BENIGN, sentinel)


def add_setstate(items: Entries, rng: random.Random, sentinel: str) -> None:
    """A __setstate__ (run by torch.jit.load itself) in one class, hostile or plain."""
    i = _code_index(items, rng)
    lines = _lines(items, i)
    classes = [k for k, line in enumerate(lines) if line.startswith("class ")]
    if not classes:
        return
    k = rng.choice(classes) + 1
    body = rng.choice([*HOSTILE, "self.training = state[0]", "pass", "_x = 1 + 2"])
    method = ["  def __setstate__(self: __torch__.X,", "    state: Tuple[bool]) -> NoneType:",
              *_indented(body.replace(SENTINEL, sentinel), "    "), "    return None"]
    lines[k:k] = method
    _set(items, i, lines)


def swap_callee(items: Entries, rng: random.Random, sentinel: str) -> None:
    """One call's function replaced: torch.relu(x) -> torch.from_file(x), print(x), ops.evil.op(x)..."""
    i = _code_index(items, rng)
    text = items[i][1].decode("utf-8", "replace")
    calls = list(re.finditer(r"(?<![\w.])(?:torch|ops\.\w+|__torch__(?:\.\w+)*)\.\w+(?=\()", text))
    if not calls:
        return
    m = rng.choice(calls)
    items[i] = (items[i][0], (text[: m.start()] + rng.choice(CALLEES) + text[m.end():]).encode())


def edit_token(items: Entries, rng: random.Random, sentinel: str) -> None:
    """One Python token of a code table replaced by another token (or a hostile literal)."""
    i = _code_index(items, rng)
    text = items[i][1].decode("utf-8", "replace")
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type in (tokenize.NAME, tokenize.NUMBER, tokenize.STRING, tokenize.OP)]
    except (tokenize.TokenError, SyntaxError):
        toks = []
    if not toks:
        return
    tok = rng.choice(toks)
    new = rng.choice([*TOKENS, rng.choice(toks).string]).replace(SENTINEL, sentinel)
    lines = text.split("\n")
    row = tok.start[0] - 1
    if tok.start[0] != tok.end[0] or row >= len(lines):
        return
    line = lines[row]
    lines[row] = line[: tok.start[1]] + new + line[tok.end[1]:]
    items[i] = (items[i][0], "\n".join(lines).encode("utf-8", "surrogatepass"))


def shuffle_lines(items: Entries, rng: random.Random, sentinel: str) -> None:
    """A line deleted, duplicated, moved or re-indented."""
    i = _code_index(items, rng)
    lines = _lines(items, i)
    if len(lines) < 2:
        return
    k = rng.randrange(len(lines))
    match rng.randrange(4):
        case 0:
            del lines[k]
        case 1:
            lines.insert(rng.randrange(len(lines)), lines[k])
        case 2:
            lines.insert(rng.randrange(len(lines)), lines.pop(k))
        case _:
            lines[k] = " " * rng.choice([0, 1, 3, 8, 200]) + lines[k].lstrip(" ")
    _set(items, i, lines)


def rename_qualified(items: Entries, rng: random.Random, sentinel: str) -> None:
    """A qualified name of the archive's own classes pointed elsewhere (a class that does not exist,
    a custom class, another namespace)."""
    i = _code_index(items, rng)
    text = items[i][1].decode("utf-8", "replace")
    names = sorted(set(re.findall(r"__torch__(?:\.\w+)+", text)))
    if not names:
        return
    old = rng.choice(names)
    new = rng.choice(["__torch__.Missing", "torch.classes.ns.Writer", "__torch__.torch.classes.x.Y",
                      "builtins.open", old + ".inner", old.replace("__torch__", "__torch__.__torch__")])
    items[i] = (items[i][0], text.replace(old, new, rng.choice([1, -1])).encode())


def _pickle_with_global(module: str, name: str, *args: str) -> bytes:
    """A protocol-2 pickle calling module.name(*args) on unpickling (written opcode by opcode:
    nothing here is ever unpickled)."""
    body = b"".join(b"X" + len(a.encode()).to_bytes(4, "little") + a.encode() for a in args)
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n(" + body + b"tR."


def constants(items: Entries, rng: random.Random, sentinel: str) -> None:
    """constants.pkl replaced: a global call (aimed at the sentinel), a stack global, an extension
    code, a tensor rebuilder with nonsense arguments, deep nesting, a huge memo index, garbage."""
    choice = rng.randrange(10)
    data: bytes
    if choice == 0:
        data = _pickle_with_global("builtins", "open", sentinel, "w")
    elif choice == 1:
        data = _pickle_with_global("posix", "system", "touch " + sentinel)
    elif choice == 2:  # STACK_GLOBAL with names pushed as strings
        path = sentinel.encode()[:255]
        data = b"\x80\x04\x8c\x08builtins\x94\x8c\x04open\x94\x93\x8c" + bytes([len(path)]) + path + b"\x8c\x01w\x86R."
    elif choice == 3:
        data = b"\x80\x02\x82\x01."  # EXT1 code 1
    elif choice == 4:
        data = _pickle_with_global("torch._utils", "_rebuild_tensor_v2", "x", "y")
    elif choice == 5:
        data = b"\x80\x02" + b"(" * rng.choice([100, 5000]) + b")" + b"t" * 10 + b"."
    elif choice == 6:
        data = b"\x80\x02K\x01r\xff\xff\xff\xffh\xff\x00\x00\x00."  # LONG_BINPUT huge, BINGET missing
    elif choice == 7:
        data = pickle.dumps(tuple(rng.choice([1, 2.5, "s", None, True]) for _ in range(rng.randrange(5))), protocol=2)
    elif choice == 8:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    else:
        data = b"\x80\x02cos\nsystem\n."[: rng.randrange(1, 16)]
    items[:] = [(n, c) for n, c in items if not n.endswith("/constants.pkl")]
    items.append(("archive/constants.pkl", data))


MUTATIONS: dict[str, Callable[[Entries, random.Random, str], None]] = {
    f.__name__: f for f in (
        inject_hostile, inject_benign, add_setstate, swap_callee, edit_token, shuffle_lines, rename_qualified,
        constants,
    )
}


def mutated(seed: str, recipe: list[tuple[str, int]], sentinel: str) -> bytes:
    """The sample archive ``seed`` after the code-table mutations ``recipe`` [(mutation, rng seed)],
    every hostile literal aimed at ``sentinel``."""
    items = entries((SAMPLES / seed).read_bytes())
    for name, value in recipe:
        MUTATIONS[name](items, random.Random(value), sentinel)
    return pack(items)


HOSTILE_CALLS = frozenset({"from_file", "save", "load", "print", "Print", "open", "__import__", "system",
                           "eval", "exec", "write_file", "Writer"})


def hostile_calls(data: bytes) -> list[str]:
    """The hostile calls (by their last name) in the archive's code tables that still parse: the
    gate must refuse every archive where this is not empty."""
    found: list[str] = []
    for name, content in entries(data):
        if not (name.endswith(".py") and "/code/" in name):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(content.decode("utf-8"))
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError):
            continue  # unreadable code is refused as such
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                last = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
                if last in HOSTILE_CALLS:
                    found.append(last)
    return found
