"""FAISS index scaling for image search: build time, query latency and throughput, recall@10 against exact search.

Synthetic descriptors: Gaussian with a power-law spectrum (the variance of the i-th axis ∝ 1/i, the slow
eigenvalue decay of real image descriptors; isotropic noise would be the worst case for every approximate
index, and well-separated clusters a trivial one), L2-normalised, float32; queries are fresh draws.
Indexes are built with ``dino.search.index.create_faiss_index`` (inner product, trained on the collection,
FAISS subsampling its k-means training set) exactly as ``dino search index --factory`` does.

Configurations run from cheapest to dearest and stop at a time budget; a configuration whose predicted
build time or memory does not fit is recorded as skipped, with the reason. Results are rewritten (atomically)
to the JSON after every configuration, so an interrupted run keeps what it measured.

    python bench/index_scale.py --out bench/results/index_scale.json            # 100k and 1M, 384-d and 1536-d
    python bench/index_scale.py --sizes 20000 --dims 384 --queries 100          # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dino.atomic import atomic_write_json  # noqa: E402
from dino.search.index import create_faiss_index  # noqa: E402

K = 10
# Standard deviation of axis i (1-based) is i^-SPECTRUM_DECAY.
SPECTRUM_DECAY = 0.5
# Approximate indexes are measured at a few search settings: (factory parameter, values).
SEARCH_SETTINGS = {"IVF": ("nprobe", (8, 32)), "HNSW": ("efSearch", (32, 128))}
LATENCY_QUERIES = 100
# Flat and HNSW,Flat store the vectors once more than the generated array: predicted peak ≈ 2.2 × n·d·4 bytes.
MEMORY_FACTOR = 2.2


def factory_string(kind: str, size: int) -> str:
    """Flat; IVF with √n lists (the FAISS guideline's low end, to keep k-means affordable on a small CPU); HNSW32."""
    if kind == "IVF":
        return f"IVF{int(math.sqrt(size))},Flat"
    return {"Flat": "Flat", "HNSW": "HNSW32"}[kind]


def synthetic_vectors(count: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """`count` L2-normalised draws of a zero-mean Gaussian with a power-law spectrum, generated in chunks."""
    rng = np.random.default_rng(seed)
    scales = np.arange(1, dim + 1, dtype=np.float32) ** -SPECTRUM_DECAY
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        block = rng.standard_normal((min(chunk, count - start), dim), dtype=np.float32) * scales
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def measure_search(index: faiss.Index, queries: np.ndarray, exact_ids: np.ndarray) -> dict:
    """Batch throughput (queries/s), single-query latency (median and p95 ms) and recall@K."""
    start = time.perf_counter()
    _, ids = index.search(queries, K)
    batch_seconds = time.perf_counter() - start
    latencies = []
    for query in queries[:LATENCY_QUERIES]:
        start = time.perf_counter()
        index.search(query[None], K)
        latencies.append(1000 * (time.perf_counter() - start))
    return {
        "throughput_qps": round(len(queries) / batch_seconds, 1),
        "latency_ms_median": round(float(np.median(latencies)), 3),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 3),
        "recall_at_10": round(recall_at_k(ids, exact_ids), 4),
    }


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "load_average_at_start": os.getloadavg(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[384, 1536])
    parser.add_argument("--factories", nargs="+", default=["Flat", "IVF", "HNSW"], choices=["Flat", "IVF", "HNSW"])
    parser.add_argument("--queries", type=int, default=500, help="query count for throughput and recall")
    parser.add_argument("--budget", type=float, default=900, help="seconds; later configurations are skipped")
    parser.add_argument("--max-memory-gb", type=float, default=6.0, help="skip configurations predicted above this")
    parser.add_argument("--threads", type=int, help="FAISS OpenMP threads (default: FAISS's, one per core)")
    parser.add_argument("--out", default="bench/results/index_scale.json")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    began = time.perf_counter()
    report: dict = {"command": " ".join(sys.argv), "machine": machine(), "k": K, "runs": [], "skipped": []}
    build_rate: dict[str, float] = {}  # seconds per vector and per dimension of the last build of each kind

    def save() -> None:
        report["total_seconds"] = round(time.perf_counter() - began, 1)
        atomic_write_json(args.out, report)

    def skip(size: int, dim: int, kind: str, reason: str) -> None:
        report["skipped"].append({"n": size, "dim": dim, "index": kind, "reason": reason})
        print(f"skip n={size} d={dim} {kind}: {reason}", flush=True)
        save()

    for size in sorted(args.sizes):
        for dim in sorted(args.dims):
            gigabytes = MEMORY_FACTOR * size * dim * 4 / 2**30
            if gigabytes > args.max_memory_gb:
                for kind in args.factories:
                    skip(size, dim, kind, f"needs ~{gigabytes:.1f} GiB, over --max-memory-gb {args.max_memory_gb}")
                continue
            database = synthetic_vectors(size, dim, seed=1)
            queries = synthetic_vectors(args.queries, dim, seed=2)
            start = time.perf_counter()
            exact_ids = faiss.knn(queries, database, K, metric=faiss.METRIC_INNER_PRODUCT)[1]
            print(f"n={size} d={dim}: data ready, exact top-{K} in {time.perf_counter() - start:.1f} s", flush=True)
            for kind in args.factories:
                left = args.budget - (time.perf_counter() - began)
                predicted = build_rate.get(kind, 0.0) * size * dim
                if left <= 0 or predicted > left:
                    skip(size, dim, kind, f"predicted build {predicted:.0f} s, {max(left, 0):.0f} s of budget left")
                    continue
                factory = factory_string(kind, size)
                start = time.perf_counter()
                index = create_faiss_index(database, factory)
                build_seconds = time.perf_counter() - start
                build_rate[kind] = build_seconds / (size * dim)
                settings = [(None, None)]
                if kind in SEARCH_SETTINGS:
                    name, values = SEARCH_SETTINGS[kind]
                    settings = [(name, value) for value in values]
                for name, value in settings:
                    if name is not None:
                        faiss.ParameterSpace().set_index_parameter(index, name, value)
                    result = measure_search(index, queries, exact_ids)
                    run = {"n": size, "dim": dim, "index": factory, "build_s": round(build_seconds, 2)}
                    run.update({"search_param": f"{name}={value}" if name else None, **result})
                    report["runs"].append(run)
                    print(json.dumps(run), flush=True)
                    save()
                del index
            del database
    save()
    print(f"wrote {args.out} ({report['total_seconds']} s)")


if __name__ == "__main__":
    main()
