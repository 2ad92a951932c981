"""`autotelic labels`: look into a label store.

    autotelic labels count  [--store PATH]
    autotelic labels list   [--store PATH] [--annotator A] [--prompt-version V] [--status S]
                            [--limit N] [--pending]
    autotelic labels export OUT.jsonl|OUT.csv [--store PATH] [--format jsonl|csv] [filters]

The store defaults to `$AUTOTELIC_LABEL_STORE`, else ~/.local/share/autotelic/labels.sqlite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .store import EXPORT_FORMATS, STATUSES, LabelStore, default_store_path


def add_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `labels` command (with its subcommands) to `subparsers`; returns its parser."""
    labels = subparsers.add_parser("labels", help="list, count and export caption labels")
    actions = labels.add_subparsers(dest="labels_action", required=True, metavar="ACTION")

    def common(parser: argparse.ArgumentParser, filters: bool = True) -> None:
        parser.add_argument(
            "--store", help=f"label store file (default: {default_store_path()})", metavar="PATH"
        )
        if filters:
            parser.add_argument("--annotator", help="only this annotator")
            parser.add_argument("--prompt-version", help="only this prompt version")
            parser.add_argument("--status", help=f"only this status ({', '.join(STATUSES)})")

    count = actions.add_parser("count", help="labels per annotator and prompt version")
    common(count, filters=False)
    count.set_defaults(func=_cmd_count)

    listing = actions.add_parser("list", help="print labels, oldest first")
    common(listing)
    listing.add_argument("--limit", type=int, help="at most N labels")
    listing.add_argument(
        "--pending", action="store_true", help="list queued captions that have no label yet"
    )
    listing.set_defaults(func=_cmd_list)

    export = actions.add_parser("export", help="write labels to a JSONL or CSV file")
    export.add_argument("out", metavar="OUT", help="output file, *.jsonl or *.csv")
    export.add_argument("--format", help=f"one of {', '.join(EXPORT_FORMATS)} (default: from OUT)")
    common(export)
    export.set_defaults(func=_cmd_export)
    return labels


def _open(args: argparse.Namespace) -> LabelStore:
    return LabelStore(Path(args.store) if args.store else default_store_path(), create=False)


def _check_filters(args: argparse.Namespace) -> None:
    if getattr(args, "status", None) is not None and args.status not in STATUSES:
        raise UserError(f"--status must be one of {', '.join(STATUSES)}, got {args.status!r}.")
    if getattr(args, "limit", None) is not None and args.limit < 0:
        raise UserError(f"--limit must be 0 or more, got {args.limit}.")
    fmt = getattr(args, "format", None)
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}.")


def _cmd_count(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = store.counts()
    if not rows:
        print(f"no labels or pending captions in {args.store or default_store_path()}")
        return 0
    header = ("annotator", "prompt_version", "ok", "helpful", "unparseable", "error", "pending")
    table = [header] + [tuple(str(row[c]) for c in header) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    return 0


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _cmd_list(args: argparse.Namespace) -> int:
    _check_filters(args)
    with _open(args) as store:
        if args.pending:
            if args.status is not None:
                raise UserError("--pending lists captions without a label; drop --status.")
            rows = store.pending(args.annotator, args.prompt_version)
            for row in rows[: args.limit] if args.limit is not None else rows:
                error = f"  last error: {_short(row.last_error)}" if row.last_error else ""
                print(f"pending  attempts={row.attempts}  {row.caption!r}{error}")
            return 0
        for label in store.labels(args.annotator, args.prompt_version, args.status, args.limit):
            value = "-" if label.label is None else str(label.label)
            score = "" if label.score is None else f"  score={label.score:.4f}"
            print(
                f"{label.status:11s} label={value}{score}  {label.caption!r}  "
                f"[{label.annotator} / {label.prompt_version}]  reply: {_short(label.raw_reply)}"
            )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    _check_filters(args)
    with _open(args) as store:
        written = store.export(
            args.out,
            args.format,
            annotator=args.annotator,
            prompt_version=args.prompt_version,
            status=args.status,
        )
    print(f"wrote {written} labels to {args.out}")
    return 0
