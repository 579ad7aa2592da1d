"""stabaudit.limits: sizes, memory pre-checks before allocation, and the per-model timeout."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stabaudit import limits
from stabaudit.errors import ModelLoadError, ResourceError, StabauditError, UsageError
from stabaudit.ir import ops as O
from stabaudit.ir.graph import Graph, Node, TensorSpec
from stabaudit.limits import (
    AuditTimeoutError,
    check_analysis_memory,
    check_deadline,
    check_model_memory,
    default_memory_budget,
    estimate_analysis_memory,
    estimate_model_memory,
    parse_size,
    run_with_timeout,
    use_limits,
)

GIB = 2**30


# ---- sizes -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4G", 4 * GIB),
        ("512M", 512 * 2**20),
        ("1.5GiB", int(1.5 * GIB)),
        ("2 gb", 2 * GIB),
        ("64k", 64 * 1024),
        ("1T", 2**40),
        ("1048576", 2**20),
        (123456, 123456),
        ("1e3", 1000),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_percentage_of_ram():
    assert parse_size("50%") == pytest.approx(limits.physical_memory() / 2, rel=1e-9)


@pytest.mark.parametrize(
    "text", ["", "lots", "4X", "-1G", "0", "0.5", "G", "1e400", "150%", "0%", "nan", True]
)
def test_parse_size_rejects_bad_text(text):
    with pytest.raises(UsageError, match="--max-memory"):
        parse_size(text)


def test_default_budget_is_half_the_ram_and_overridable(monkeypatch):
    monkeypatch.delenv(limits.MEMORY_ENV, raising=False)
    assert default_memory_budget() == limits.physical_memory() // 2
    assert default_memory_budget(0.25) == limits.physical_memory() // 4
    monkeypatch.setenv(limits.MEMORY_ENV, "3G")
    assert default_memory_budget() == 3 * GIB
    monkeypatch.setenv(limits.MEMORY_ENV, "bogus")
    with pytest.raises(UsageError):
        default_memory_budget()


# ---- the model's tensors -----------------------------------------------------------------------
def _relu_mlp(widths: tuple[int, ...]) -> onnx.ModelProto:
    """x [1, w0] -> (MatMul -> Relu)* -> MatMul with seeded weights."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        inits.append(numpy_helper.from_array(rng.normal(size=(a, b)).astype(np.float32), f"w{k}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{k}"], [f"z{k}"]))
        prev = f"z{k}"
        if k < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{k}"]))
            prev = f"r{k}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, widths[0]])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _gemm_model(weight_dims: tuple[int, int], *, external: str | None = None) -> onnx.ModelProto:
    """x [1, in] -> Gemm(W [out, in]); W inline (small) or declared with external data."""
    out, n_in = weight_dims
    if external is None:
        w = numpy_helper.from_array(np.ones((out, n_in), np.float32), "W")
    else:
        w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[out, n_in])
        w.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", external),
            ("offset", "0"),
            ("length", str(out * n_in * 4)),
        ):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_declared_sizes_are_counted_from_dims_and_dtype():
    model = _gemm_model((1000, 1000), external="w.bin")  # 4 MB declared, no data anywhere
    needed = estimate_model_memory(model)
    elements = 10**6
    assert needed == elements * 4 * limits.RAW_COPIES + elements * (
        8 * limits.F64_COPIES + 4 * limits.F32_COPIES
    )
    check_model_memory(model, 10 * needed)
    with pytest.raises(ResourceError) as info:
        check_model_memory(model, needed // 2)
    message = str(info.value)
    assert (
        "for its tensors" in message
        and "memory budget of" in message
        and "(--max-memory)" in message
    )
    assert limits.format_size(needed // 2) in message


def test_loader_refuses_before_reading_external_data(tmp_path):
    # 64 Gi float32 entries declared in a file that does not exist: the budget check must come
    # first (else the loader would report the missing file, or try to read 256 GiB)
    path = tmp_path / "huge.onnx"
    onnx.save(_gemm_model((1 << 18, 1 << 18), external="huge.bin"), path)
    from stabaudit.loaders import load_model

    with (
        use_limits(max_memory=GIB),
        pytest.raises(ResourceError, match=r"memory budget of 1 GiB \(--max-memory\)") as info,
    ):
        load_model(path)
    assert info.value.exit_code == 2 and info.value.path == str(path)
    with use_limits(max_memory=2**50), pytest.raises(ModelLoadError, match="missing"):
        load_model(path)  # within a (huge) budget the loader goes on and finds the file missing


def test_default_budget_applies_without_use_limits(tmp_path, monkeypatch):
    path = tmp_path / "huge.onnx"
    onnx.save(_gemm_model((1 << 18, 1 << 18), external="huge.bin"), path)
    monkeypatch.setenv(limits.MEMORY_ENV, "1G")
    from stabaudit.loaders import load_model

    with pytest.raises(ResourceError, match="1 GiB"):
        load_model(path)


def test_onnx_path_uses_the_file_size(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_gemm_model((64, 64)), path)
    size = path.stat().st_size
    assert estimate_model_memory(path) >= size * limits.RAW_COPIES
    check_model_memory(path, GIB)
    with pytest.raises(ResourceError, match="memory budget of 1 KiB") as info:
        check_model_memory(path, 1024)
    assert info.value.path == str(path)
    assert estimate_model_memory(tmp_path / "absent.onnx") == 0  # the loader reports missing files


def test_torchscript_archive_uses_its_record_sizes(tmp_path):
    import torch

    module = torch.jit.script(torch.nn.Linear(256, 128))
    path = tmp_path / "lin.pt"
    torch.jit.save(module, str(path))
    needed = estimate_model_memory(path)
    params = 256 * 128 + 128
    assert (
        params * 4 * limits.RAW_COPIES
        <= needed
        <= 2 * params * (4 * limits.RAW_COPIES + 8 * limits.F64_COPIES + 4)
    )
    check_model_memory(path, GIB)
    with pytest.raises(ResourceError):
        check_model_memory(path, needed - 1)


# ---- the analyses ------------------------------------------------------------------------------
def _linear_graph(n: int, m: int) -> Graph:
    from stabaudit.ir.executor import with_shapes

    w = np.ones((m, n))
    return with_shapes(
        Graph(
            inputs=(TensorSpec(name="x", shape=(1, n)),),
            outputs=("y",),
            nodes=(Node(name="fc", op=O.Linear(weight=w), inputs=("x",), output="y"),),
        )
    )


def test_analysis_estimate_grows_with_the_jacobian():
    small, wide = _linear_graph(8, 8), _linear_graph(4096, 4096)
    a, b = estimate_analysis_memory(small), estimate_analysis_memory(wide)
    assert 0 < a < b
    # the weights' float64 copies alone: 4096^2 x 8 bytes x F64_COPIES
    assert b >= 4096 * 4096 * 8 * limits.F64_COPIES
    check_analysis_memory(wide, 64 * GIB)
    with pytest.raises(
        ResourceError, match=r"analyses need ~.*memory budget of 256 MiB \(--max-memory\)"
    ):
        check_analysis_memory(wide, 256 * 2**20)


def test_analysis_budget_from_use_limits():
    g = _linear_graph(64, 64)
    with use_limits(max_memory=1024), pytest.raises(ResourceError):
        check_analysis_memory(g)
    with use_limits(max_memory=64 * GIB):
        check_analysis_memory(g)


# ---- time --------------------------------------------------------------------------------------
def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_timeout_stops_a_long_call_and_restores_the_signal_state():
    before = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    with pytest.raises(AuditTimeoutError, match=r"^timed out after 0\.2 s \(--timeout\)$") as info:
        run_with_timeout(lambda: _spin(5.0), 0.2, path="m.onnx")
    elapsed = time.monotonic() - start
    assert elapsed < 2.0
    assert (
        isinstance(info.value, ResourceError)
        and info.value.exit_code == 2
        and info.value.path == "m.onnx"
    )
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_timeout_returns_results_in_time_and_accepts_none():
    assert run_with_timeout(lambda: 42, 5.0) == 42
    assert run_with_timeout(lambda: 7, None) == 7
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_bad_timeouts_are_usage_errors(bad):
    with pytest.raises(UsageError, match="--timeout"):
        run_with_timeout(lambda: None, bad)


def test_an_alarm_swallowed_by_a_broad_except_fires_again():
    def fallback_then_work() -> None:
        for _ in range(3):
            # the kind of fallback the code base has (e.g. vmap -> loop)
            with contextlib.suppress(Exception):
                _spin(0.2)
        _spin(5.0)

    start = time.monotonic()
    with pytest.raises(AuditTimeoutError):
        run_with_timeout(fallback_then_work, 0.1)
    assert time.monotonic() - start < 3.0


def test_a_call_that_swallows_every_alarm_still_times_out_when_it_returns():
    def stubborn() -> int:
        for _ in range(10):
            with contextlib.suppress(Exception):
                _spin(0.05)
        return 1

    with pytest.raises(AuditTimeoutError):
        run_with_timeout(stubborn, 0.1)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_alarms_are_deferred_while_importing(tmp_path, monkeypatch):
    module = tmp_path / "slow_module_for_limits.py"
    module.write_text(
        "import time\nend = time.monotonic() + 0.6\nwhile time.monotonic() < end:\n    pass\nVALUE = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    def load() -> None:
        importlib.import_module("slow_module_for_limits")
        _spin(5.0)

    with pytest.raises(AuditTimeoutError):
        run_with_timeout(load, 0.1)
    assert sys.modules["slow_module_for_limits"].VALUE == 1  # the import completed
    del sys.modules["slow_module_for_limits"]


def test_an_alarm_turned_into_another_error_is_reported_as_the_timeout():
    def converts() -> None:
        try:
            _spin(5.0)
        except Exception as exc:
            raise ModelLoadError(f"not an ONNX model ({exc})") from exc

    with pytest.raises(AuditTimeoutError) as info:
        run_with_timeout(converts, 0.1)
    assert isinstance(info.value.__cause__, ModelLoadError)


def test_errors_before_the_deadline_pass_through():
    def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_with_timeout(fails, 5.0)


def test_nested_timeouts_restore_the_outer_timer():
    def inner() -> int:
        return run_with_timeout(lambda: 1, 0.5)

    def outer() -> None:
        inner()
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0.0 < remaining <= 0.3
        _spin(5.0)

    with pytest.raises(AuditTimeoutError, match="0.3 s"):
        run_with_timeout(outer, 0.3)


def test_cooperative_deadline_outside_the_main_thread():
    outcome: dict[str, object] = {}

    def worker() -> None:
        def loop() -> None:
            for _ in range(10_000):
                check_deadline()
                time.sleep(0.005)

        try:
            run_with_timeout(loop, 0.1)
        except StabauditError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=20)
    assert isinstance(outcome.get("error"), AuditTimeoutError)
    check_deadline()  # no deadline is active here


def test_torch_state_survives_an_interrupted_computation():
    import torch

    x = torch.randn(256, 256, dtype=torch.float64)

    def work() -> None:
        with torch.no_grad():
            for _ in range(10**6):
                x @ x

    with pytest.raises(AuditTimeoutError):
        run_with_timeout(work, 0.2)
    assert torch.is_grad_enabled()
    y = torch.ones(3, requires_grad=True)
    (y * 2).sum().backward()
    assert torch.equal(y.grad, torch.full((3,), 2.0))


def test_timeout_inside_a_bound_rule_keeps_its_class():
    from stabaudit.bounds import bound_node
    from stabaudit.bounds.base import RuleContext

    node = Node(name="fc", op=O.Linear(weight=np.ones((2, 2))), inputs=("x",), output="y")
    ctx = RuleContext(input_shapes=((1, 2),), output_shape=(1, 2))

    def slow() -> None:
        import stabaudit.bounds.linear as linear_rules

        original = linear_rules.scaled_spectral_norm

        def stalling(w: np.ndarray) -> tuple[float, float | None]:
            _spin(5.0)
            return original(w)

        linear_rules.scaled_spectral_norm = stalling
        try:
            bound_node(node, ctx)
        finally:
            linear_rules.scaled_spectral_norm = original

    with pytest.raises(AuditTimeoutError, match=r"node 'fc' \(Linear\): timed out after 0.1 s"):
        run_with_timeout(slow, 0.1)


def test_timeout_of_a_whole_audit_then_a_normal_audit(tmp_path):
    from stabaudit.engine import AuditRequest, audit

    path = tmp_path / "relu.onnx"
    onnx.save(_relu_mlp((12, 48, 48, 6)), path)
    # the exact branch and bound and the lower search planned for a minute each: work that
    # cannot finish within the 1 s timeout on any machine
    request = AuditRequest(path=path, lower_budget_s=60.0, budget_s=60.0, method="exact")
    start = time.monotonic()
    with pytest.raises(AuditTimeoutError, match=r"timed out after 1 s \(--timeout\)"):
        run_with_timeout(lambda: audit(request), 1.0, path=str(path))
    assert time.monotonic() - start < 10.0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    report = audit(AuditRequest(path=path, lower_budget_s=0.1, budget_s=0.1))  # nothing left behind
    assert report.lipschitz.upper is not None and report.lipschitz.lower is not None


def test_one_thread_pins_torch_and_restores_it():
    import threading

    import torch

    from stabaudit.limits import one_thread

    before = torch.get_num_threads()
    seen: list[int] = []
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with one_thread():
            entered.set()
            release.wait(10)
            seen.append(torch.get_num_threads())

    t = threading.Thread(target=other)
    t.start()
    entered.wait(10)
    with one_thread():
        seen.append(torch.get_num_threads())
    # this audit left first: the other one still runs on one thread
    release.set()
    t.join(10)
    assert seen == [1, 1]
    assert torch.get_num_threads() == before


# ---- kernel threads -----------------------------------------------------------------------------------
def test_kernel_threads_default_and_override(monkeypatch):
    monkeypatch.delenv(limits.THREADS_ENV, raising=False)
    assert 1 <= limits.kernel_threads() <= 2
    monkeypatch.setenv(limits.THREADS_ENV, "3")
    assert limits.kernel_threads() == 3
    monkeypatch.setenv(limits.THREADS_ENV, "0")
    assert limits.kernel_threads() == 1
    monkeypatch.setenv(limits.THREADS_ENV, "two")
    with pytest.raises(UsageError, match="STABAUDIT_THREADS='two' is not a whole number"):
        limits.kernel_threads()


@pytest.mark.parametrize("threads", ["1", "2"])
def test_thread_map_keeps_order_context_and_errors(monkeypatch, threads):
    import contextvars

    monkeypatch.setenv(limits.THREADS_ENV, threads)
    assert limits.thread_map(lambda x: x * x, list(range(7))) == [0, 1, 4, 9, 16, 25, 36]
    var: contextvars.ContextVar[str] = contextvars.ContextVar("probe", default="unset")
    var.set("caller")
    assert limits.thread_map(lambda _: var.get(), [1, 2, 3]) == ["caller"] * 3

    def boom(x: int) -> int:
        if x == 2:
            raise ValueError("piece 2 failed")
        return x

    with pytest.raises(ValueError, match="piece 2 failed"):
        limits.thread_map(boom, [1, 2, 3])


def test_thread_map_inside_a_piece_runs_serially(monkeypatch):
    # a piece that maps again must not wait on its own pool (two workers, both waiting: deadlock)
    monkeypatch.setenv(limits.THREADS_ENV, "2")
    inner = lambda x: limits.thread_map(lambda y: (x, y, threading.current_thread().name), [0, 1])  # noqa: E731
    results = limits.thread_map(inner, [0, 1, 2, 3])
    for x, pieces in enumerate(results):
        assert [p[:2] for p in pieces] == [(x, 0), (x, 1)]
        assert len({p[2] for p in pieces}) == 1  # both inner pieces on the outer piece's thread


def test_a_timeout_restores_numpys_error_state():
    # numpy's linalg sets its error callback around each call; an alarm in between would leave
    # it set (0 * inf then raises "SVD did not converge" far from any SVD): the timeout restores it
    before_err, before_call = np.geterr(), np.geterrcall()

    def interrupted_inside_errstate():
        np.seterrcall(lambda *_: None)
        np.seterr(invalid="call")  # as numpy's errstate.__enter__ leaves it, the alarm arriving now
        time.sleep(5.0)

    with pytest.raises(AuditTimeoutError):
        run_with_timeout(interrupted_inside_errstate, 0.2)
    assert np.geterrcall() is before_call and np.geterr() == before_err
