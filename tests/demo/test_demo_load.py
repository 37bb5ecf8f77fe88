"""A small run of bench/demo_load.py against the session's demo: several users at once, identical searches, and
pathological uploads while someone searches; every request must succeed and every file must decode."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]' (or '.[dev]')")
pytest.importorskip("gradio_client", reason="the demo's load test needs gradio_client: pip install -e '.[dev]'")


PATH = Path(__file__).resolve().parents[2] / "bench" / "demo_load.py"
spec = importlib.util.spec_from_file_location("demo_load", PATH)
demo_load = importlib.util.module_from_spec(spec)
sys.modules["demo_load"] = demo_load  # its dataclasses look their module up while it loads
spec.loader.exec_module(demo_load)

pytestmark = [
    pytest.mark.slow,  # about 30 s on 2 CPU cores with the default weights
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*"),
]


def _no_errors(outcomes) -> None:
    assert [f"{o.endpoint}: {o.error}" for o in outcomes if o.error is not None] == []


def test_users_at_once_over_every_tab_all_get_their_answers(demo_server) -> None:
    inputs = demo_load.Inputs.from_cache(demo_server.cache_dir)
    # Four users starting on different tabs: together they call each of the six endpoints at least once.
    outcomes = demo_load.mixed(demo_server.url, inputs, users=4, requests=3)
    assert {outcome.endpoint for outcome in outcomes} == set(demo_load.TABS)
    _no_errors(outcomes)


def test_identical_searches_at_once_all_get_whole_files(demo_server) -> None:
    outcomes = demo_load.identical(demo_server.url, demo_load.Inputs.from_cache(demo_server.cache_dir), 6, 2)
    assert len(outcomes) == 12
    _no_errors(outcomes)
    # Whole answers: every user got the same captions (the same hits), each in files of its own.
    assert len({tuple(item["caption"] for item in outcome.result) for outcome in outcomes}) == 1


def test_pathological_uploads_get_a_message_while_searches_go_on(demo_server, tmp_path) -> None:
    strip = tmp_path / "strip.png"
    Image.new("RGB", (10000, 20), "white").save(strip)
    uploads = {"strip 10000×20": strip, "bomb 30000×30000": demo_load.bomb_png(tmp_path / "bomb.png")}
    _, reports = demo_load.pathological(demo_server.url, demo_load.Inputs.from_cache(demo_server.cache_dir), uploads, 1)
    messages = {report.name: report.message for report in reports}
    assert "strip.png is 10000×20 pixels" in messages["strip 10000×20"]
    assert "bomb.png has too many pixels to open safely" in messages["bomb 30000×30000"]
    assert all(report.searches >= 1 and report.search_errors == 0 for report in reports)
