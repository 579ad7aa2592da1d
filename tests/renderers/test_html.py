"""The HTML page: self-contained, escaped, one bar per layer on a log scale, the checks table."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from stabaudit.renderers import BATCH_RENDERERS, RENDERERS, OutputFormat
from stabaudit.report.model import LayerLipschitz, ProfileStep, Report, Waiver
from tests.report_factory import make_batch_report, make_report


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text of the page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str, css: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and (css is None or css in (a.get("class") or "").split())]


def _html(report: Report) -> str:
    return RENDERERS.get(OutputFormat.HTML)(report)


def _with_layer_values(*pairs: tuple[float | None, float | None]) -> Report:
    report = make_report()
    template = report.layers[0]
    layers = tuple(
        replace(template, name=f"l{i}", lipschitz=LayerLipschitz(upper=u, lower=lo, method="svd", certified=True))
        for i, (u, lo) in enumerate(pairs)
    )
    return replace(report, layers=layers)


def _bar_widths(page: str) -> list[float]:
    return [float(a["width"] or "nan") for a in _Elements(page).all("rect")]


@pytest.mark.parametrize("page", [_html(make_report()), BATCH_RENDERERS.get(OutputFormat.HTML)(make_batch_report())])
def test_page_is_self_contained(page):
    lowered = page.lower()
    for needle in ("<script", "<link", "src=", "url(", "@import", "://", "xmlns"):
        assert needle not in lowered, needle
    assert lowered.startswith("<!doctype html>") and "<style>" in lowered and lowered.endswith("</html>\n")


def test_summary_chart_and_checks():
    page = _html(make_report())
    doc = _Elements(page)
    text = " ".join(doc.text)
    for expected in ("m.onnx", "onnx", "ab" * 32, "PASS", "[1.5, 3.125]", "product (certified)", "search"):
        assert expected in text, expected
    rects = doc.all("rect")
    assert [r["class"] for r in rects] == ["certified", "certified", "certified"]
    assert len(doc.all("svg", "layers")) == 1 and len(doc.all("svg", "profile")) == 1
    assert len(doc.all("line", "lower")) == 3
    assert len(doc.all("circle")) == 2 and len(doc.all("polyline")) == 1
    rows = re.findall(r"<tr><td>(SA\d+)</td><td>([^<]*)</td><td class=\"status-(\w+)\">", page)
    assert rows == [("SA101", "lipschitz.global", "warn"), ("SA402", "weights.finite", "pass")]
    assert "0 failing checks, 1 warning (warnings do not gate at --fail-on error)" in page
    assert "lower=1.5, upper=3.125" in text


def test_bars_are_on_a_log_scale():
    # Decades 0.01 .. 100 over the 520 px bar area (the smallest value, 0.1, sits on a decade, so the
    # axis starts one decade lower): 1 half way, 10 at three quarters, 100 at the end.
    widths = _bar_widths(_html(_with_layer_values((1.0, 1.0), (10.0, None), (100.0, 0.1))))
    assert widths == pytest.approx([260.0, 390.0, 520.0], abs=0.01)
    widths = _bar_widths(_html(_with_layer_values((2.0, None), (20.0, None))))
    # The axis always holds 1, here on its lowest decade, so it starts at 0.1: decades 0.1 .. 100.
    assert widths == pytest.approx([520 * (1 + math.log10(2)) / 3, 520 * (2 + math.log10(2)) / 3], abs=0.01)


@pytest.mark.parametrize(
    "pairs",
    [
        ((None, None), (math.inf, 2.0), (0.0, 0.0), (1.0, 1.0), (math.nan, math.nan)),
        ((1.0, 1.0),),
        ((0.0, None),),
        ((1e-300, 1e-300), (1e300, 1e299)),
    ],
)
def test_degenerate_values_render(pairs):
    page = _html(_with_layer_values(*pairs))
    widths = _bar_widths(page)
    assert len(widths) == len(pairs)
    assert all(0.0 <= w <= 520.0 for w in widths)  # finite, within the bar area
    geometry = ("x", "y", "x1", "x2", "y1", "y2", "width", "height", "cx", "cy")
    for _, attrs in _Elements(page).tags:
        for key in geometry:
            if attrs.get(key) is not None:
                assert math.isfinite(float(attrs[key] or "nan")), (key, attrs)
    for (upper, _), width, css in zip(pairs, widths, [a["class"] for a in _Elements(page).all("rect")], strict=True):
        if upper is None or not math.isfinite(upper):
            assert css == "unbounded" and width == 520.0
        elif upper == 1.0:
            assert width > 0  # a non-expansive layer still shows a bar up to the dashed line at 1


def test_profile_breaks_at_missing_bounds():
    report = make_report()
    profile = (
        ProfileStep(layer="a", upper=2.0),
        ProfileStep(layer="b", upper=4.0),
        ProfileStep(layer="c", upper=math.inf),
        ProfileStep(layer="d", upper=None),
        ProfileStep(layer="e", upper=8.0),
        ProfileStep(layer="f", upper=16.0),
    )
    doc = _Elements(_html(replace(report, profile=profile)))
    assert len(doc.all("polyline")) == 2
    assert len(doc.all("circle", "unbounded")) == 2 and len(doc.all("circle")) == 6
    empty = _html(replace(report, profile=(), layers=()))
    assert "No depth profile." in empty and "<svg" not in empty


def test_user_text_is_escaped():
    report = make_report()
    evil = '<script>alert("x")</script>&'
    layer = replace(report.layers[0], name=evil)
    sa101 = replace(report.checks[0], message=evil, waiver=Waiver(check="SA101", reason=evil))
    report = replace(
        report,
        model=replace(report.model, path=evil),
        layers=(layer, *report.layers[1:]),
        checks=(sa101, report.checks[1]),
        profile=(ProfileStep(layer=evil, upper=2.0),),
    )
    page = _html(report)
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    text = " ".join(_Elements(page).text)
    assert evil in text and f"waived: {evil} (no expiry)" in text


def test_waived_status():
    report = make_report()
    waiver = Waiver(check="SA101", reason="accepted", expires="2026-12-31")
    page = _html(replace(report, checks=(replace(report.checks[0], waiver=waiver), report.checks[1])))
    assert '<td class="status-waived">waived</td>' in page
    assert "waived: accepted (expires 2026-12-31)" in page


def test_batch_page_has_summary_sections_and_errors():
    page = BATCH_RENDERERS.get(OutputFormat.HTML)(make_batch_report())
    doc = _Elements(page)
    assert [a["id"] for a in doc.all("section")] == ["model-1", "model-2", "model-3"]
    assert [a["href"] for a in doc.all("a")] == ["#model-1", "#model-2", "#model-3"]
    # Each audited model's section is the single-report page's content: 3 layer bars each.
    assert len(doc.all("svg", "layers")) == 2 and len(doc.all("rect")) == 6
    assert len(doc.all("table", "checks")) == 2
    text = " ".join(doc.text)
    assert "Could not be audited (exit code 2): not an ONNX model or TorchScript archive" in text
    assert "SA101 (waived)" in text and "SA402, SA101 (warn)" in text
    assert '<span class="verdict-error">ERROR</span>, 3 models, exit code 2;' in page


def test_wide_ranges_keep_few_ticks_and_the_line_at_one():
    # 61 decades: labelled every 7th, plus the dashed line at 1 (no profile chart on this page).
    page = _html(replace(_with_layer_values((1e-30, None), (1e30, None)), profile=()))
    doc = _Elements(page)
    assert len(doc.all("line", "one")) == 1
    assert 2 <= len(doc.all("line", "grid")) <= 11
    assert "no finite upper bound" not in page
    unbounded = _html(_with_layer_values((math.inf, 2.0)))
    assert "[2, inf] svd (no finite upper bound)" in unbounded
