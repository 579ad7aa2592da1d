"""Static gate of TorchScript archives: their code and pickles read, never run, against an allowlist."""

from __future__ import annotations

import ast
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stabaudit.errors import UntrustedModelError

MAX_CODE_BYTES = 64 * 1024**2  # the code tables and pickles read by the gate, all entries together
TRUST_HINT = "--trust-torchscript loads an archive you vouch for"

# ---- the allowlist ---------------------------------------------------------------------------------
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Operators the archive's code may call as torch.<name>, ops.aten.<name> or a method of a value.
# Besides the translated operators (ts_ops, `stabaudit ops`): the scalar, list, dict and string
# builtins TorchScript code is made of, shape queries, and pure tensor operators the translators do
# not handle yet (those pass the gate and are listed as unsupported [SA901] by the loader). Each one
# computes values from its arguments: none reads or writes files, prints, or reaches a process.
_BUILTINS = _words("""
    __and__ __contains__ __derive_index __getitem__ __interpolate __is__ __isnot__ __lshift__ __not__
    __or__ __range_length __round_to_zero_floordiv __rshift__ __xor__ _set_item _unwrap_optional
    Bool Complex Float Int ScalarImplicit abs add append ceil clear copy count device dict dim div
    divmod endswith eq extend find floor floordiv format ge get gt index insert is_floating_point
    isdigit islower isupper items join keys le len list lower lt lstrip max min mul
    ne neg numel pop pow remainder remove replace reverse rstrip setdefault size sort split
    splitlines startswith str strip sub sym_numel sym_size tolist update upper values warn
""")
_PURE_TENSOR_OPS = _words("""
    acos acosh adaptive_avg_pool1d addbmm addcdiv addcmul addmv amax amin any all arange argmax
    argmin asin asinh atan atan2 atanh baddbmm bitwise_and bitwise_not bitwise_or
    bitwise_xor bmm broadcast_tensors broadcast_to celu channel_shuffle chunk copy_ cos cosh
    cumprod cumsum diag diagonal dot einsum embedding empty empty_like erf erfc erfinv exp exp2
    expm1 eye fill_ flip float_power floor_divide fmod frac full full_like gather glu group_norm
    hardshrink index_select instance_norm is_nonzero isfinite isinf isnan item layer_norm lerp
    linspace log log10 log1p log2 log_sigmoid log_softmax logical_and logical_not logical_or
    logical_xor logsumexp masked_fill maximum minimum mish movedim mv narrow new_empty new_full
    new_ones new_zeros norm normal ones ones_like outer pixel_shuffle pixel_unshuffle prod rand
    rand_like randint randn randn_like reciprocal repeat repeat_interleave roll round rrelu rsqrt
    scalar_tensor scaled_dot_product_attention select selu sign sin sinh slice softshrink softsign
    split_with_sizes sqrt square std sum swapaxes swapdims tan tanhshrink tensor threshold tile
    topk trunc unbind upsample_bilinear2d upsample_nearest2d var where zero_ zeros zeros_like
    _native_multi_head_attention _transformer_encoder_layer_fwd _upsample_bicubic2d_aa
    _upsample_bilinear2d_aa _upsample_lanczos2d_aa _upsample_nearest_exact1d _upsample_nearest_exact2d
    _upsample_nearest_exact3d upsample_bicubic2d upsample_linear1d upsample_nearest1d upsample_nearest3d
    upsample_trilinear3d bilinear col2im im2col cosine_similarity pairwise_distance cdist pdist
    embedding_bag gru gru_cell lstm lstm_cell rnn_tanh rnn_tanh_cell rnn_relu rnn_relu_cell rms_norm
    is_grad_enabled is_autocast_enabled is_autocast_cpu_enabled grid_sampler affine_grid_generator
    unfold reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d replication_pad2d
    replication_pad3d _pad_circular _pad_enum max_unpool2d max_unpool3d fractional_max_pool2d
    fractional_max_pool3d one_hot normalize softmin native_layer_norm native_batch_norm
    _batch_norm_impl_index native_group_norm
""")
# ops.prim.<name>: TorchScript's own primitives that compute values (prim::Print is not here).
_PRIM = _words("""
    NumToTensor RaiseException TupleIndex Uninitialized abs data device dtype is_cuda is_nested layout
    max min requires_grad shape tolist type unchecked_cast unchecked_unwrap_optional
""")
# Functions TorchScript code calls by a bare name: annotations, casts and iteration helpers.
_NAMES = _words("""
    annotate unchecked_cast uninitialized getattr hasattr isinstance range enumerate zip int float
    bool str len list tuple dict min max abs
""")
_DOTTED = frozenset({"torch.jit._unwrap_optional", "torch.jit.annotate"})
_MATH_CONSTANTS = frozenset({"pi", "e", "inf", "nan", "tau"})
# Global names TorchScript resolves to its builtins (torch and math: ATen; ops: every namespace).
_GLOBAL_ROOTS = frozenset({"torch", "math", "ops", "__torch__", "CONSTANTS"})
# The globals a pickle of a TorchScript archive may name besides the archive's own __torch__
# classes: torch's tensor-rebuild functions, its storage types, and TorchScript's list builders.
_PICKLE_GLOBALS = frozenset({
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor", "torch.jit._pickle.build_intlist",
    "torch.jit._pickle.build_tensorlist", "torch.jit._pickle.build_doublelist",
    "torch.jit._pickle.build_boollist", "torch.jit._pickle.build_tensor_from_id",
    "torch.jit._pickle.restore_type_tag", "collections.OrderedDict", "builtins.complex",
})
_STORAGE = re.compile(r"torch\.[A-Za-z0-9]*Storage")
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                         "BINSTRING", "STRING"})


@lru_cache(maxsize=1)
def allowed_operators() -> frozenset[str]:
    """The operator names (without namespace) the gate lets code call, in-place variants included."""
    from stabaudit.loaders.torchscript import supported_operators

    translated = {name.split("::", 1)[1] for name in supported_operators()}
    base = translated | _BUILTINS | _PURE_TENSOR_OPS
    return frozenset(base | {f"{name}_" for name in translated | _PURE_TENSOR_OPS if not name.endswith("_")})


@lru_cache(maxsize=1)
def _registered_operators() -> frozenset[str]:
    """The names of every operator registered with TorchScript, any namespace (a method call on a
    tensor resolves to one of these: ``(x).save(f)`` is aten::save)."""
    import torch

    return frozenset(schema.name.split("::", 1)[1] for schema in torch._C._jit_get_all_schemas())


# ---- what the gate found ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Finding:
    """One refused reference: the archive entry, its line (0 for a pickle) and what it does."""

    entry: str
    line: int
    what: str
    at_load: bool = False  # code that torch.jit.load itself runs (__setstate__): reported first

    def text(self) -> str:
        where = f"{self.entry}:{self.line}" if self.line else self.entry
        return f"{where} {self.what}"


@dataclass(frozen=True, kw_only=True)
class _Code:
    entry: str
    module: str  # the qualified prefix of its definitions, e.g. "__torch__.torch.nn.modules.linear"
    tree: ast.Module


def check_archive_code(file: Path, where: str) -> None:
    """Refuse an archive whose code tables or pickles reach outside the allowlist, before
    torch.jit.load compiles or unpickles anything (UntrustedModelError, exit 2). Nothing of the
    archive is executed or unpickled: code is parsed with ``ast``, pickles read with
    ``pickletools.genops``."""
    findings = sorted(_findings(file, where), key=lambda f: (not f.at_load, f.entry, f.line))
    if findings:
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        raise UntrustedModelError(
            f"refused before loading: {findings[0].text()}{more}; {TRUST_HINT}", path=where
        )


def _findings(file: Path, where: str) -> Iterator[Finding]:
    codes: list[_Code] = []
    pickles: list[tuple[str, bytes]] = []
    total = 0
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                name = info.filename
                parts = name.split("/")
                is_code = name.endswith(".py") and "code" in parts[:-1]  # <root>/code/...: TorchScript's sources
                if not (is_code or name.endswith(".pkl")):
                    continue  # tensor data, extra files, .debug_pkl source ranges
                total += info.file_size
                if total > MAX_CODE_BYTES:
                    raise UntrustedModelError(
                        f"refused before loading: the code tables and pickles exceed {MAX_CODE_BYTES} bytes, the "
                        f"limit of the static gate; {TRUST_HINT}", path=where)
                data = archive.read(info)
                if is_code:
                    code = _parse(name, data, where)
                    if isinstance(code, Finding):
                        yield code
                    else:
                        codes.append(code)
                else:
                    pickles.append((name, data))
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError, EOFError, RuntimeError) as exc:
        raise UntrustedModelError(f"refused before loading: a damaged zip the gate cannot read ({exc})",
                                  path=where) from exc
    defined, methods = _definitions(codes)
    for code in codes:
        yield from _CodeVisitor(code, defined, methods).run()
    for name, data in pickles:
        yield from _pickle_findings(name, data, defined)


def _parse(entry: str, data: bytes, where: str) -> _Code | Finding:
    try:
        text = data.decode("utf-8")
        # the compiler's SyntaxWarnings (`1if`, "\d") would print lines of the archive's choosing
        # on stderr: the gate reads the code, it reports through its findings only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text, filename=entry)
    except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return Finding(entry=entry, line=getattr(exc, "lineno", 0) or 0,
                       what=f"is code the gate cannot read ({type(exc).__name__})")
    # "<root>/code/__torch__/a/b.py" defines "__torch__.a.b.<name>"
    parts = entry[: -len(".py")].split("/")
    tail = parts[parts.index("code") + 1:] if "code" in parts[:-1] else parts[-1:]
    return _Code(entry=entry, module=".".join(tail), tree=tree)


def _definitions(codes: Iterable[_Code]) -> tuple[frozenset[str], frozenset[str]]:
    """The qualified names of the archive's classes and functions, and its method names."""
    defined: set[str] = set()
    methods: set[str] = set()
    for code in codes:
        for node in code.tree.body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                defined.add(f"{code.module}.{node.name}")
            if isinstance(node, ast.ClassDef):
                methods.update(item.name for item in node.body if isinstance(item, ast.FunctionDef))
    return frozenset(defined), frozenset(methods)


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for an attribute chain rooted at a plain name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _custom_class(name: str) -> bool:
    return name.startswith(("torch.classes.", "__torch__.torch.classes.")) or name == "torch.classes"


class _CodeVisitor:
    """Every reference of one code table checked: calls, operator names, __setstate__ bodies."""

    def __init__(self, code: _Code, defined: frozenset[str], methods: frozenset[str]) -> None:
        self.code = code
        self.defined = defined
        self.methods = methods
        self.findings: list[Finding] = []

    def refuse(self, node: ast.AST, what: str, *, at_load: bool = False) -> None:
        self.findings.append(
            Finding(entry=self.code.entry, line=getattr(node, "lineno", 0), what=what, at_load=at_load)
        )

    def run(self) -> list[Finding]:
        tree = self.code.tree
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom | ast.Global | ast.Nonlocal | ast.Lambda):
                self.refuse(node, f"holds a {type(node).__name__} statement, which TorchScript code never does")
        self._scope(tree.body, tree)
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
                if fn.name in ("__setstate__", "__getstate__"):
                    self._plain_state_method(cls.name, fn)
        return self.findings

    def _scope(self, body: list[ast.stmt], root: ast.AST) -> None:
        """Check every function, then the module level and class bodies outside them."""
        for fn in (n for n in ast.walk(root) if isinstance(n, ast.FunctionDef)):
            self._function(fn)
        outside = _outside_functions(body)
        _, names = self._bindings(outside)
        for node in outside:
            self._check(node, callable_locals=frozenset(), local_names=names)

    def _bindings(self, body: list[ast.AST]) -> tuple[frozenset[str], frozenset[str]]:
        """The names of ``body`` bound only ever to the archive's own functions (``_0 =
        __torch__.f``: they may be called), and every name it binds."""
        bound: dict[str, bool] = {}
        for node in (sub for stmt in body for sub in ast.walk(stmt)):
            if isinstance(node, ast.Assign):
                own = self._own(node.value)
                for target in node.targets:
                    for name in _names(target):
                        bound[name] = bound.get(name, True) and own
            elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.comprehension | ast.NamedExpr):
                for name in _names(node.target):
                    bound[name] = False
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                for name in _names(node.optional_vars):
                    bound[name] = False
        return frozenset(name for name, own in bound.items() if own), frozenset(bound)

    def _function(self, fn: ast.FunctionDef) -> None:
        body = _outside_functions(fn.body)
        callable_locals, assigned = self._bindings(body)
        arguments = fn.args
        params = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
        params |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
        extra: list[ast.AST] = [d for d in [*arguments.defaults, *arguments.kw_defaults] if d is not None]
        for node in [*extra, *fn.decorator_list, *body]:
            self._check(node, callable_locals=callable_locals, local_names=assigned | params)

    def _own(self, value: ast.expr) -> bool:
        name = _dotted(value)
        return name is not None and name.startswith("__torch__.") and self._defined(name)

    def _defined(self, name: str) -> bool:
        if _custom_class(name):
            return False
        parts = name.split(".")
        return any(".".join(parts[:i]) in self.defined for i in range(2, len(parts) + 1))

    def _check(self, node: ast.AST, *, callable_locals: frozenset[str], local_names: frozenset[str]) -> None:
        """Calls and references of ``node`` and below; an attribute chain (torch.jit.annotate) is
        checked once, as a whole."""
        stack = [node]
        while stack:
            sub = stack.pop()
            if isinstance(sub, ast.Call):
                self._call(sub, callable_locals)
            if isinstance(sub, ast.Attribute) and _dotted(sub) is not None:
                self._reference(sub, local_names)
                continue  # its inner links (torch.jit of torch.jit.annotate) are no references
            stack.extend(ast.iter_child_nodes(sub))

    def _reference(self, node: ast.Attribute, local_names: frozenset[str]) -> None:
        """An attribute chain, called or not: torch.<op> and math.<op> (TorchScript resolves both to
        aten::<op>), ops.<namespace>.<op>, the archive's __torch__ names, or an attribute of a
        local value (self.fc1). A chain rooted at any other global name is refused."""
        name = _dotted(node) or ""
        root, _, rest = name.partition(".")
        if _custom_class(name):
            self.refuse(node, f"uses the custom class {name} (code outside the archive)")
        elif root in local_names or root in ("__torch__", "CONSTANTS") or (root == "math" and rest in _MATH_CONSTANTS):
            return
        elif root in ("torch", "math"):
            self._torch(node, name, rest.split("."))
        elif root == "ops":
            self._ops(node, rest.split("."))
        else:
            self.refuse(node, f"uses the global name {root!r} ({name}), which TorchScript code never needs")

    def _torch(self, node: ast.AST, name: str, parts: list[str]) -> None:
        if parts[0] == "ops":
            self._ops(node, parts[1:])
        elif len(parts) == 1:
            if parts[0] not in allowed_operators():
                self.refuse(node, f"calls {name}, outside the tensor operators stabaudit allows")
        elif name not in _DOTTED:
            self.refuse(node, f"calls {name}, outside the tensor operators stabaudit allows")

    def _ops(self, node: ast.AST, parts: list[str]) -> None:
        """ops.<namespace>[.<op>[.<overload>]]: ATen's allowed operators and TorchScript's own
        value primitives; no other namespace (custom operators are code outside the archive)."""
        namespace, op = parts[0], parts[1] if len(parts) > 1 else ""
        shown = "torch.ops." + ".".join(parts)
        if namespace not in ("aten", "prim"):
            self.refuse(node, f"calls {shown} (operator namespace {namespace!r} is not allowed)")
        elif op and not ((namespace == "aten" and op in allowed_operators() and len(parts) <= 3)
                         or (namespace == "prim" and op in _PRIM and len(parts) == 2)):
            self.refuse(node, f"calls {shown}, outside the tensor operators stabaudit allows")

    def _call(self, node: ast.Call, callable_locals: frozenset[str]) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id not in _NAMES and func.id not in callable_locals:
                self.refuse(node, f"calls {func.id}(), outside the functions stabaudit allows")
            elif func.id in ("getattr", "hasattr") and node.args:
                # getattr(torch, "from_file") is aten::from_file: only values' attributes
                target = (_dotted(node.args[0]) or "").split(".", 1)[0]
                if target in _GLOBAL_ROOTS:
                    self.refuse(node, f"calls {func.id}() on {target}, outside the functions stabaudit allows")
            return
        if not isinstance(func, ast.Attribute):
            self.refuse(node, "calls the result of an expression, which the gate cannot resolve")
            return
        name = _dotted(func)
        root = name.split(".", 1)[0] if name is not None else ""
        if root in ("torch", "math", "ops"):
            return  # checked as a reference (_reference)
        if root == "__torch__":
            if not self._defined(name or ""):
                what = "the custom class" if _custom_class(name or "") else "a class or function not defined in the archive:"
                self.refuse(node, f"calls {what} {name}")
            return
        # (value).method(...): a method of one of the archive's classes, or an operator on a
        # value (a tensor's method resolves to the operator of that name: (x).save(f) is aten::save)
        method = func.attr
        if method in allowed_operators():
            return
        if method in self.methods and method not in _registered_operators():
            return
        self.refuse(node, f"calls the method {method}(), outside the tensor operators stabaudit allows")

    def _plain_state_method(self, cls: str, fn: ast.FunctionDef) -> None:
        """__setstate__ runs inside torch.jit.load and __getstate__ on saving: each may only move
        attributes to and from the state (no calls but annotations, no loops, no allocation)."""
        qualified = f"{self.code.module}.{cls}.{fn.name}"
        for stmt in fn.body:
            problem = _plain_statement(stmt, fn.name)
            if problem:
                self.refuse(stmt, f"defines {qualified}, which does more than assign attributes from its state "
                                  f"({problem})", at_load=fn.name == "__setstate__")
                return


def _outside_functions(body: list[ast.stmt]) -> list[ast.AST]:
    """The nodes of ``body`` minus nested function definitions (they are checked on their own),
    class bodies included."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.ClassDef):
            stack.extend([*node.body, *node.decorator_list, *node.bases, *node.keywords])
            continue
        out.append(node)
    return out


def _names(target: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


_PLAIN_CALLS = frozenset({"annotate", "unchecked_cast"})


def _plain_expression(node: ast.expr) -> str:
    """'' when ``node`` only reads names, attributes, constants and subscripts; else the reason."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            if isinstance(sub.func, ast.Name) and sub.func.id in _PLAIN_CALLS and not sub.keywords:
                continue
            return f"it calls {ast.unparse(sub.func)}"
        if not isinstance(sub, ast.Name | ast.Constant | ast.Attribute | ast.Subscript | ast.Tuple | ast.List
                          | ast.Load | ast.Store | ast.Slice | ast.UnaryOp | ast.USub):
            return f"it holds {type(sub).__name__}"
    return ""


def _plain_statement(stmt: ast.stmt, method: str) -> str:
    if isinstance(stmt, ast.Pass):
        return ""
    if isinstance(stmt, ast.Expr):
        # a docstring is harmless; any other expression statement is there for its effect
        return "" if isinstance(stmt.value, ast.Constant) else _plain_expression(stmt.value) or "an expression statement"
    if isinstance(stmt, ast.Return):
        return _plain_expression(stmt.value) if stmt.value is not None else ""
    if isinstance(stmt, ast.Assign | ast.AnnAssign):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and not (isinstance(sub.value, ast.Name) and sub.value.id == "self"):
                    return f"it assigns to {ast.unparse(sub)}"
                if not isinstance(sub, ast.Name | ast.Attribute | ast.Tuple | ast.List | ast.Store | ast.Load):
                    return f"it assigns to {ast.unparse(target)}"
        return _plain_expression(stmt.value) if stmt.value is not None else ""
    return f"a {type(stmt).__name__} statement"


# ---- pickles ---------------------------------------------------------------------------------------
def _pickle_findings(entry: str, data: bytes, defined: frozenset[str]) -> Iterator[Finding]:
    """Every global a pickle names (GLOBAL, INST, STACK_GLOBAL), read with pickletools.genops
    (never unpickled): torch's tensor rebuilders and storages, or classes the archive's code defines."""
    memo: dict[int, object] = {}
    recent: list[object] = []  # values of the latest pushes (strings; None for anything else)
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name in _STRING_OPS:
                value = arg.decode("latin-1") if isinstance(arg, bytes) else arg
                recent.append(value)
                continue
            if name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int):
                memo[arg] = recent[-1] if recent else None
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
                continue
            if name in ("GET", "BINGET", "LONG_BINGET") and isinstance(arg, int):
                recent.append(memo.get(arg))
                continue
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                yield from _global(entry, module, attr, defined)
            elif name == "STACK_GLOBAL":
                first, second = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
                if isinstance(first, str) and isinstance(second, str):
                    yield from _global(entry, first, second, defined)
                else:
                    yield Finding(entry=entry, line=0, what="names a global the gate cannot read (STACK_GLOBAL)")
            elif name in ("EXT1", "EXT2", "EXT4"):
                yield Finding(entry=entry, line=0, what="names a global through the extension registry")
            recent.append(None)
    except Exception as exc:  # a malformed pickle: genops stops; torch.jit.load would refuse it too
        yield Finding(entry=entry, line=0, what=f"is a pickle the gate cannot read ({type(exc).__name__})")


def _global(entry: str, module: str, attr: str, defined: frozenset[str]) -> Iterator[Finding]:
    full = f"{module}.{attr}"
    if full in _PICKLE_GLOBALS or _STORAGE.fullmatch(full):
        return
    if module.split(".", 1)[0] == "__torch__" and full in defined and not _custom_class(full):
        return
    kind = "the custom class" if _custom_class(full) else "the global"
    yield Finding(entry=entry, line=0, what=f"references {kind} {full}, outside what the gate allows in a pickle")
