#!/usr/bin/env python
"""Rebuild the shipped intent classifier (src/apportion/router/intent_model.npz).

    python scripts/build_intent_model.py [--data-dir ../shared/data] [--out PATH] [--report F]

Builds the labelled queries (apportion.bench.intent_data), fits a multinomial logistic
regression on the training split with scikit-learn (a dev dependency; inference needs only
NumPy), and prints held-out accuracy, per-source accuracy, the confusion matrix and the
latency of one prediction. The fit is deterministic: the same data gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.linear_model import LogisticRegression

from apportion.bench.intent_data import LabelledQuery, labelled_queries
from apportion.router.intent import DIM, MODEL_FILE, IntentClassifier, hashed_features
from apportion.tools.math_extract import extract_math
from apportion.types import INTENTS


def matrix(queries: list[LabelledQuery]) -> csr_matrix:
    rows, cols, vals = [], [], []
    for r, q in enumerate(queries):
        features = hashed_features(q.text, has_math_expression=extract_math(q.text) is not None)
        rows += [r] * len(features)
        cols += list(features)
        vals += list(features.values())
    return csr_matrix((vals, (rows, cols)), shape=(len(queries), DIM), dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=MODEL_FILE)
    parser.add_argument("--report", type=Path, default=None, help="also write the report as JSON")
    parser.add_argument("--per-source", type=int, default=1200)
    parser.add_argument("--c", type=float, default=20.0, help="inverse L2 strength")
    args = parser.parse_args()

    queries = labelled_queries(args.data_dir, per_source=args.per_source)
    train = [q for q in queries if not q.held_out]
    test = [q for q in queries if q.held_out]
    print(f"{len(train)} training and {len(test)} held-out queries")
    print("training per class:", dict(Counter(q.intent for q in train)))
    classes = [c for c in INTENTS if any(q.intent == c for q in train)]
    fit = LogisticRegression(C=args.c, max_iter=2000, class_weight="balanced")
    fit.fit(matrix(train), [classes.index(q.intent) for q in train])
    model = IntentClassifier(
        fit.coef_.T.astype(np.float32), fit.intercept_.astype(np.float32), tuple(classes)
    )
    model.save(args.out)
    model = IntentClassifier.load(args.out)  # evaluate what ships (float16 weights)

    confusion = {a: dict.fromkeys(classes, 0) for a in classes}
    by_source: dict[str, list[bool]] = {}
    latencies = []
    for q in test:
        started = time.perf_counter()
        predicted = model.predict(q.text, has_math_expression=extract_math(q.text) is not None)
        latencies.append(time.perf_counter() - started)
        confusion[q.intent][predicted] += 1
        by_source.setdefault(q.source, []).append(predicted == q.intent)
    correct = sum(confusion[c][c] for c in classes)
    accuracy = correct / len(test)
    p50 = statistics.median(latencies) * 1000
    p95 = sorted(latencies)[int(0.95 * len(latencies))] * 1000
    print(f"\nheld-out accuracy {accuracy:.3f} ({correct}/{len(test)})")
    print(f"latency per query (features + model, solver probe included): p50 {p50:.2f} ms, "
          f"p95 {p95:.2f} ms")  # fmt: skip
    print("\nconfusion (rows: true, columns: predicted)")
    print(f"{'':>11}" + "".join(f"{c:>11}" for c in classes))
    for a in classes:
        print(f"{a:>11}" + "".join(f"{confusion[a][b]:>11}" for b in classes))
    print("\nper source")
    for source, hits in sorted(by_source.items()):
        print(f"  {source:<44} {sum(hits) / len(hits):6.1%}  ({len(hits)})")
    print(f"\nwrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    if args.report:
        args.report.write_text(json.dumps({
            "accuracy": accuracy, "n_test": len(test), "n_train": len(train),
            "latency_ms": {"p50": p50, "p95": p95}, "confusion": confusion,
            "by_source": {s: sum(h) / len(h) for s, h in by_source.items()},
        }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
