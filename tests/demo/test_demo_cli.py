"""`dino demo` as a user starts it: a separate process serving on 127.0.0.1, stopped at the end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]' (or '.[dev]')")
httpx = pytest.importorskip("httpx")

STARTUP_TIMEOUT_S = 240  # loading, sample files and two small indexes on a loaded 2-core machine


def _wait_for_page(url: str, process: subprocess.Popen) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dino demo exited early with code {process.returncode}:\n{process.stdout.read()}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response.text
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"dino demo did not answer on {url} within {STARTUP_TIMEOUT_S} s")


def _outside_address() -> str | None:
    """This machine's address on its network, if it has one besides loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: picks the outgoing interface, sends nothing
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_dino_demo_serves_this_machine_only(tmp_path, port) -> None:
    command = [sys.executable, "-m", "dino.cli", "demo", "--port", str(port), "--weights", "random:vit_tiny/16"]
    command += ["--cache-dir", str(tmp_path), "--device", "cpu"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        page = _wait_for_page(f"http://127.0.0.1:{port}/", process)
        assert "<title>DINO demo</title>" in page or "DINO demo" in page
        outside = _outside_address()
        if outside is not None:
            with pytest.raises(OSError), socket.create_connection((outside, port), timeout=2):
                pass
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
