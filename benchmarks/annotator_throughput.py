"""Annotator throughput: captions/s of the embedded annotator, alone and through the service.

    python benchmarks/annotator_throughput.py
    python benchmarks/annotator_throughput.py --captions 4000 --batch-sizes 1,32,256

1. alone:   `EmbeddedAnnotator.annotate` on batches of each size (one warm-up batch first, which
            loads the encoder), over `--captions` distinct captions;
2. service: `AnnotationService` with the labeller in a thread and in a child process, on a fresh
            SQLite store in a temporary directory: submit every caption, wait until all are
            labelled; the time includes the store's queue, claims and label writes, and in
            process mode the child's loading of the encoder (about a second), so use a few
            thousand captions.

Captions are distinct NetHack-style messages generated from templates (every one is new to the
annotator, as the messages of a fresh run are). Prints one JSON line. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from autotelic.feedback.annotators import EmbeddedAnnotator
from autotelic.feedback.service import AnnotationService

MONSTERS = ("newt", "jackal", "grid bug", "sewer rat", "kobold", "gnome lord", "lichen", "fox")
VERBS = ("You kill the {}!", "The {} bites!", "You miss the {}.", "You hit the {}.")
ITEMS = ("gold pieces", "daggers", "food rations", "scrolls", "potions", "arrows", "gems")


def captions(count: int) -> list[str]:
    """`count` distinct messages in NetHack's voice."""
    out = []
    for n in itertools.count(1):
        for monster, verb in itertools.product(MONSTERS, VERBS):
            out.append(f"{verb.format(monster)} ({n})")
        for item in ITEMS:
            out.append(f"You see here {n} {item}.")
        if len(out) >= count:
            return out[:count]
    raise AssertionError("unreachable")


def alone(texts: list[str], batch: int) -> float:
    annotator = EmbeddedAnnotator()
    try:
        annotator.annotate(["You see here a dagger."])  # loads the encoder
        tick = time.perf_counter()
        for start in range(0, len(texts), batch):
            annotator.annotate(texts[start : start + batch])
        return len(texts) / (time.perf_counter() - tick)
    finally:
        annotator.close()


def through_service(texts: list[str], mode: str) -> float:
    with tempfile.TemporaryDirectory(prefix="annotator-throughput-") as tmp:
        annotator = EmbeddedAnnotator()
        annotator.annotate(["You see here a dagger."])
        service = AnnotationService(Path(tmp) / "labels.sqlite", annotator, mode=mode)
        try:
            service.start()
            tick = time.perf_counter()
            service.submit(texts)
            if not service.wait_idle(600):
                raise SystemExit(f"service ({mode}) did not finish within 600 s")
            seconds = time.perf_counter() - tick
            labelled = len(service.lookup(texts))
        finally:
            service.stop()
        if labelled != len(texts):
            raise SystemExit(f"service ({mode}) labelled {labelled} of {len(texts)} captions")
        return len(texts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=int, default=3000)
    parser.add_argument("--batch-sizes", default="1,32,256")
    args = parser.parse_args()
    texts = captions(args.captions)
    result = {
        "captions": len(texts),
        "alone_captions_per_second": {
            int(b): round(alone(texts, int(b)), 1) for b in args.batch_sizes.split(",")
        },
        "service_captions_per_second": {
            mode: round(through_service(texts, mode), 1) for mode in ("thread", "process")
        },
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
