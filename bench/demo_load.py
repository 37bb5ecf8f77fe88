"""`dino demo` under load: several users at once over every tab, identical searches, and pathological uploads.

Starts `dino demo` as a user does (a separate process on a free 127.0.0.1 port), or uses a running one (`--url`),
then runs three bounded scenarios through the public API with gradio_client, every user a client of its own:

1. mixed: `--users` users each send `--requests` requests, cycling over the tabs (attention, search, copy check,
   copy search, first frame, video) from a different starting tab each;
2. identical: `--same-users` users send the same search `--same-requests` times each, all at once;
3. pathological: one user sends a 10000×20 strip, an 8000×6000 photo and a decompression bomb (a PNG whose header
   claims 30000×30000) to Attention while another user searches in a loop; the searches' latencies are compared
   with the same searches on an idle server.

A request counts as an error when it raises (a server error, a client timeout, a broken connection) or when one
of its output files does not decode completely (an image PIL cannot load, a video without frames). Prints the
error counts and latency percentiles, and writes them as JSON with `--json`.

    python bench/demo_load.py --weights default --json bench/results/demo_load.json
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

STARTUP_TIMEOUT_S = 600  # loading, sample files and the two gallery indexes on a loaded 2-core machine
# Bounds, so that a stuck server fails the run instead of hanging it.
REQUEST_TIMEOUT_S = 600
TABS = ("attention", "search", "copy_check", "copy_search", "first_frame", "video")
SCENARIOS = ("mixed", "identical", "pathological")


@dataclass
class Outcome:
    """One request: its endpoint, how long it took (upload, queue, work and downloads) and its error, if any."""

    endpoint: str
    seconds: float
    error: str | None = None
    result: Any = field(default=None, repr=False)


@dataclass
class Summary:
    """Error count and latency percentiles of a scenario's requests."""

    requests: int
    errors: int
    p50_s: float
    p90_s: float
    max_s: float
    error_messages: list[str]


def summarise(outcomes: Sequence[Outcome]) -> Summary:
    times = sorted(outcome.seconds for outcome in outcomes)
    errors = [f"{o.endpoint}: {o.error}" for o in outcomes if o.error is not None]
    return Summary(len(outcomes), len(errors), _percentile(times, 50), _percentile(times, 90), times[-1], errors)


def _percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    rank = max(1, int(np.ceil(percent / 100 * len(values))))
    return values[rank - 1]


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Inputs:
    """The files requests send: a photo, a second one, the sample copy pair, the sample clip and its mask."""

    photo: Path
    other: Path
    copy: Path
    video: Path
    mask: Path

    @classmethod
    def from_cache(cls, cache_dir: str | os.PathLike[str]) -> Inputs:
        from demo.gallery import sample_copy, sample_video

        pair, clip = sample_copy(cache_dir), sample_video(cache_dir)
        return cls(pair.original, pair.other, pair.copy, clip.video, clip.first_mask)


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid 1×1 PNG whose header claims width×height pixels (70 bytes; PIL refuses it at open)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR payload: after the signature (8), length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def pathological_uploads(folder: Path) -> dict[str, Path]:
    """A 10000×20 strip, an 8000×6000 photo (smooth colours and noise, JPEG) and a decompression bomb."""
    folder.mkdir(parents=True, exist_ok=True)
    strip = folder / "strip-10000x20.png"
    Image.new("RGB", (10000, 20), "white").save(strip)
    photo = folder / "photo-8000x6000.jpg"
    rows, cols = np.mgrid[0:6000, 0:8000].astype(np.float32)
    noise = np.random.default_rng(0).integers(0, 24, (6000, 8000), dtype=np.uint8)
    channels = [(rows / 6000 * 200), (cols / 8000 * 200), ((rows + cols) / 14000 * 200)]
    pixels = np.stack([(c + noise).clip(0, 255).astype(np.uint8) for c in channels], axis=-1)
    Image.fromarray(pixels).save(photo, quality=85)
    return {"strip 10000×20": strip, "photo 8000×6000": photo, "bomb 30000×30000": bomb_png(folder / "bomb.png")}


# ---------------------------------------------------------------------------- requests
def _arguments(tab: str, inputs: Inputs) -> tuple[Any, ...]:
    from gradio_client import handle_file

    photo = handle_file(str(inputs.photo))
    return {
        "attention": (photo, 0.6, 480, True),
        "search": (photo, 8),
        "copy_check": (photo, handle_file(str(inputs.copy))),
        "copy_search": (handle_file(str(inputs.other)),),
        "first_frame": (handle_file(str(inputs.video)),),
        "video": (handle_file(str(inputs.video)), handle_file(str(inputs.mask)), None),
    }[tab]


def _local_files(value: Any) -> Iterator[str]:
    """Every downloaded file path in an endpoint's result (strings, gallery items, editor and video dicts)."""
    if isinstance(value, str):
        if os.path.isfile(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _local_files(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _local_files(item)


def check_files(result: Any) -> int:
    """Decode every output file of `result` completely; the number of files checked.

    Raises:
        ValueError: A file that does not decode (a truncated or rewritten download), naming it.
    """
    import cv2

    count = 0
    for path in _local_files(result):
        if path.endswith((".webm", ".mp4")):
            capture = cv2.VideoCapture(path)
            ok, _ = capture.read()
            capture.release()
            if not ok:
                raise ValueError(f"{Path(path).name}: no frame decodes ({os.path.getsize(path)} bytes)")
        else:
            try:
                with Image.open(path) as image:
                    image.load()
            except Exception as error:
                raise ValueError(f"{Path(path).name}: does not decode ({error})") from None
        count += 1
    return count


def timed_call(client: Any, endpoint: str, arguments: Sequence[Any], check: bool = True) -> Outcome:
    """Call `endpoint`, download and decode its files; never raises."""
    start = time.perf_counter()
    try:
        job = client.submit(*arguments, api_name=f"/{endpoint}")
        result = job.result(timeout=REQUEST_TIMEOUT_S)
        if check:
            check_files(result)
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else ""
        return Outcome(endpoint, time.perf_counter() - start, f"{type(error).__name__}: {message}"[:300])
    return Outcome(endpoint, time.perf_counter() - start, result=result)


def new_client(url: str) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False)


# ---------------------------------------------------------------------------- scenarios
def mixed(url: str, inputs: Inputs, users: int, requests: int, tabs: Sequence[str] = TABS) -> list[Outcome]:
    """`users` clients at once, each sending `requests` requests cycling over `tabs` from its own starting tab."""

    def user(number: int) -> list[Outcome]:
        client = new_client(url)
        return [
            timed_call(client, tab, _arguments(tab, inputs))
            for tab in (tabs[(number + step) % len(tabs)] for step in range(requests))
        ]

    with ThreadPoolExecutor(users) as pool:
        return [outcome for outcomes in pool.map(user, range(users)) for outcome in outcomes]


def identical(url: str, inputs: Inputs, users: int, requests: int) -> list[Outcome]:
    """`users` clients sending the same search `requests` times each, released together."""
    start = threading.Barrier(users)

    def user(_: int) -> list[Outcome]:
        client = new_client(url)
        start.wait()
        return [timed_call(client, "search", _arguments("search", inputs)) for _ in range(requests)]

    with ThreadPoolExecutor(users) as pool:
        return [outcome for outcomes in pool.map(user, range(users)) for outcome in outcomes]


@dataclass
class BadUpload:
    """One pathological upload to Attention and what another user's searches did meanwhile."""

    name: str
    seconds: float
    message: str
    searches: int
    search_errors: int
    search_p50_s: float
    search_max_s: float


def pathological(
    url: str, inputs: Inputs, uploads: dict[str, Path], searches: int = 3
) -> tuple[Summary, list[BadUpload]]:
    """Search latency on an idle server, then during each bad upload (searches run until it is answered)."""
    from gradio_client import handle_file

    searcher, sender = new_client(url), new_client(url)
    search_arguments = _arguments("search", inputs)
    idle = summarise([timed_call(searcher, "search", search_arguments) for _ in range(searches)])
    reports = []
    for name, path in uploads.items():
        answered = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            during = pool.submit(_search_until, searcher, search_arguments, answered)
            time.sleep(0.2)  # the search is queued first, as if it had been waiting
            bad = timed_call(sender, "attention", (handle_file(str(path)), 0.6, 480, True))
            answered.set()
            summary = summarise(during.result())
        message = bad.error if bad.error is not None else "answered with a result"
        reports.append(
            BadUpload(name, bad.seconds, message, summary.requests, summary.errors, summary.p50_s, summary.max_s)
        )
    return idle, reports


def _search_until(client: Any, arguments: Sequence[Any], stop: threading.Event) -> list[Outcome]:
    """Searches one after another until `stop` is set (at least one)."""
    outcomes = [timed_call(client, "search", arguments)]
    while not stop.is_set():
        outcomes.append(timed_call(client, "search", arguments))
    return outcomes


# ---------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def demo_process(weights: str, cache_dir: Path, extra: Sequence[str] = ()) -> Iterator[str]:
    """`dino demo` in its own process on a free loopback port; its URL once it answers. Stopped at the end."""
    import httpx

    port = _free_port()
    command = [sys.executable, "-m", "dino.cli", "demo", "--port", str(port), "--weights", weights]
    command += ["--cache-dir", str(cache_dir), "--device", "cpu", *extra]
    log = open(cache_dir / "server.log", "w")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"dino demo exited with code {process.returncode}; see {log.name}")
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dino demo did not answer within {STARTUP_TIMEOUT_S} s; see {log.name}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _print_summary(name: str, summary: Summary) -> None:
    print(
        f"| {name} | {summary.requests} | {summary.errors} | {summary.p50_s:.2f} | {summary.p90_s:.2f} | "
        f"{summary.max_s:.2f} |"
    )


def run(url: str, inputs: Inputs, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    report: dict[str, Any] = {}
    wanted = set(args.scenarios.split(","))
    if wanted - set(SCENARIOS):
        raise SystemExit(f"unknown scenario(s) {', '.join(sorted(wanted - set(SCENARIOS)))}; choose from {SCENARIOS}")
    timed: list[tuple[str, Callable[[], list[Outcome]]]] = []
    if "mixed" in wanted:
        name = f"mixed: {args.users} users × {args.requests}"
        timed.append((name, lambda: mixed(url, inputs, args.users, args.requests)))
    if "identical" in wanted:
        name = f"identical search: {args.same_users} users × {args.same_requests}"
        timed.append((name, lambda: identical(url, inputs, args.same_users, args.same_requests)))
    print("| scenario | requests | errors | p50 s | p90 s | max s |\n|---|---|---|---|---|---|")
    for name, scenario in timed:
        tic = time.perf_counter()
        outcomes = scenario()
        summary = summarise(outcomes)
        _print_summary(name, summary)
        by_endpoint = {
            endpoint: summarise([o for o in outcomes if o.endpoint == endpoint])
            for endpoint in dict.fromkeys(o.endpoint for o in outcomes)
        }
        if len(by_endpoint) > 1:
            for endpoint, part in by_endpoint.items():
                _print_summary(f"  {endpoint}", part)
        report[name] = {
            **asdict(summary),
            "wall_s": round(time.perf_counter() - tic, 1),
            "by_endpoint": {endpoint: asdict(part) for endpoint, part in by_endpoint.items()},
        }
    for message in (m for entry in report.values() for m in entry["error_messages"]):
        print(f"  error: {message}")
    if "pathological" in wanted:
        idle, uploads = pathological(url, inputs, pathological_uploads(scratch / "bad"))
        print(f"\nsearch alone: p50 {idle.p50_s:.2f} s, max {idle.max_s:.2f} s")
        print("| upload to Attention | its answer s | searches meanwhile | errors | p50 s | max s | its message |")
        print("|---|---|---|---|---|---|---|")
        for bad in uploads:
            print(
                f"| {bad.name} | {bad.seconds:.1f} | {bad.searches} | {bad.search_errors} | {bad.search_p50_s:.2f} | "
                f"{bad.search_max_s:.2f} | {bad.message} |"
            )
        report["search alone"] = asdict(idle)
        report["pathological uploads"] = [asdict(bad) for bad in uploads]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running demo to load (default: start `dino demo` for the run)")
    parser.add_argument("--weights", default="default", help="as `dino demo --weights` (default: %(default)s)")
    parser.add_argument("--cache-dir", help="the running demo's --cache-dir, for its sample files (with --url)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10, help="requests per user in the mixed scenario")
    parser.add_argument("--same-users", type=int, default=6)
    parser.add_argument("--same-requests", type=int, default=4)
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, a subset of %(default)s (default: all)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from dino.atomic import atomic_write_json

    with tempfile.TemporaryDirectory(prefix="dino-demo-load-") as scratch:
        scratch_dir = Path(scratch)
        if args.url:
            from demo.gallery import default_cache_dir

            inputs = Inputs.from_cache(args.cache_dir or default_cache_dir())
            report = run(args.url, inputs, args, scratch_dir)
        else:
            with demo_process(args.weights, scratch_dir) as url:
                report = run(url, Inputs.from_cache(scratch_dir), args, scratch_dir)
    # The output file's path is where this machine wrote it, not a setting of the run.
    settings = {key: value for key, value in vars(args).items() if key != "json"}
    report["settings"] = {**settings, "cpus": os.cpu_count()}
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
