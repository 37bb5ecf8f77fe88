"""How long a person waits in `dino demo`: start-up, then each tab's request, through the real HTTP API.

Builds the demo as `dino demo` does (sample gallery, both indexes), serves it on a free 127.0.0.1 port, and
times each tab's endpoint with gradio_client, several times, after one warm-up call. Also times N users asking
for attention masks at once, which the queue serves one after another (concurrency 1).

    python bench/demo_latency.py --weights default --repeats 3 --users 4
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="default", help="as `dino demo --weights` (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per endpoint after one warm-up")
    parser.add_argument("--users", type=int, default=4, help="simultaneous attention requests")
    args = parser.parse_args()

    from gradio_client import Client, handle_file

    from demo.app import build_demo, launch_demo
    from demo.gallery import sample_copy, sample_gallery, sample_video

    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        page = build_demo(args.weights, cache_dir=cache, device="cpu")
        url = launch_demo(page, port=_free_port(), prevent_thread_lock=True, quiet=True)
        print(f"start-up (load, samples, two indexes, serve): {time.perf_counter() - start:.1f} s")
        try:
            client = Client(url, verbose=False)
            photo = handle_file(str(next(p for p in sample_gallery(cache) if p.stem == "skimage-chelsea")))
            pair, clip = sample_copy(cache), sample_video(Path(cache))
            calls = {
                "attention (480, better mask)": ((photo, 0.6, 480, True), "/attention"),
                "search (k=8)": ((photo, 8), "/search"),
                "copy check (pair)": ((handle_file(str(pair.original)), handle_file(str(pair.copy))), "/copy_check"),
                "copy search (index)": ((photo,), "/copy_search"),
                "video (24 frames, 320x240)": (
                    (handle_file(str(clip.video)), handle_file(str(clip.first_mask)), None),
                    "/video",
                ),
            }
            print("| request | median s | min s |\n|---|---|---|")
            for name, (inputs, endpoint) in calls.items():
                client.predict(*inputs, api_name=endpoint)
                times = []
                for _ in range(args.repeats):
                    tic = time.perf_counter()
                    client.predict(*inputs, api_name=endpoint)
                    times.append(time.perf_counter() - tic)
                print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} |")

            def one_user(_: int) -> float:
                tic = time.perf_counter()
                Client(url, verbose=False).predict(photo, 0.6, 480, True, api_name="/attention")
                return time.perf_counter() - tic

            with ThreadPoolExecutor(args.users) as pool:
                waits = sorted(pool.map(one_user, range(args.users)))
            print(f"{args.users} users at once, attention: " + ", ".join(f"{w:.1f}" for w in waits) + " s")
        finally:
            page.close()


if __name__ == "__main__":
    main()
