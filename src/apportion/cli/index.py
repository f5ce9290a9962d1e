"""`apportion index`: put documents into the retrieval store, search it, inspect it."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from apportion.cli.common import LoggedProgress, err, fail, out
from apportion.config import Settings
from apportion.errors import ApportionError

if TYPE_CHECKING:
    from apportion.tools.store.base import DocumentStore

index_app = typer.Typer(
    help=(
        "Index documents for retrieval-augmented answers (the rag strategy), and search them.\n\n"
        "Start with:  apportion index add ./docs   then   apportion index search 'a question'"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="APPORTION_STORE",
        help=(
            "Where the index lives: a SQLite file path (default $APPORTION_HOME/store.sqlite), "
            "milvus-lite:DIR, or http(s)://HOST:19530 for a Milvus server."
        ),
        show_default=False,
    ),
]


def default_store_uri() -> str:
    return str(Settings.load().store_path)


@contextmanager
def opened(uri: str | None) -> Iterator[DocumentStore]:
    """The store at `uri`, closed afterwards; errors as one line and a hint; store warnings
    (such as a fallback to BM25) as one line each."""
    from apportion.tools.store import open_store

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = open_store(uri or default_store_uri())
            try:
                yield store
            finally:
                store.close()
                for w in caught:
                    err.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False)
    except ApportionError as e:
        fail(e)


@index_app.command("add")
def add(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Files (.txt, .md, .jsonl) or folders, read recursively.", show_default=False
        ),
    ],
    store: StoreOption = None,
    chunk_words: Annotated[
        int, typer.Option("--chunk-words", min=1, help="Words per chunk.")
    ] = 200,
    overlap: Annotated[
        int, typer.Option("--overlap", min=0, help="Words shared by neighbouring chunks.")
    ] = 40,
) -> None:
    """Index documents. Unchanged documents are skipped; changed ones are replaced whole."""
    from apportion.tools.store.chunking import ChunkSpec
    from apportion.tools.store.ingest import find_files, ingest

    try:
        # Check the arguments before the store is created and the progress bar drawn.
        spec = ChunkSpec(words=chunk_words, overlap=overlap)
        files = find_files(paths)
    except ApportionError as e:
        fail(e)
    with opened(store) as db:
        progress = LoggedProgress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("documents"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        task = progress.add_task("indexing", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            with progress:
                report = ingest(db, files, spec=spec, progress=on_progress)
        except ApportionError as e:
            fail(e)
        out.print(
            f"indexed {report.written} document(s), {report.chunks} chunk(s) in "
            f"{report.seconds:.1f} s ({report.chunks_per_second:.3g} chunks/s); "
            f"{report.skipped} unchanged; the store now holds {db.count()} chunk(s)",
            highlight=False,
            soft_wrap=True,
        )


@index_app.command("search")
def search(
    text: Annotated[str, typer.Argument(help="What to look for.", show_default=False)],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="How many hits.")] = 5,
    mode: Annotated[
        str, typer.Option("--mode", help="hybrid (keywords + meaning), bm25 or dense.")
    ] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as a JSON list.")] = False,
    store: StoreOption = None,
) -> None:
    """Search the index, best hits first."""
    with opened(store) as db:
        try:
            hits = db.search(text, k=k, mode=mode)
        except ApportionError as e:
            fail(e)
        if as_json:
            rows = [
                {
                    "doc_id": h.doc_id,
                    "chunk_id": h.chunk_id,
                    "score": h.score,
                    "text": h.text,
                    "title": h.title,
                    "dense": h.dense,
                }
                for h in hits
            ]
            sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
            return
        if not hits:
            out.print("no matches")
            return
        table = Table(show_lines=True)
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("chunk")
        table.add_column("text", overflow="fold")
        for i, h in enumerate(hits, start=1):
            snippet = h.text if len(h.text) <= 300 else h.text[:300] + " ..."
            table.add_row(str(i), f"{h.score:.4g}", escape(h.chunk_id), escape(snippet))
        out.print(table)


@index_app.command("stats")
def stats(
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """What the index holds: documents, chunks, embedding model, size."""
    with opened(store) as db:
        try:
            info = db.stats()
        except ApportionError as e:
            fail(e)
        if as_json:
            sys.stdout.write(json.dumps(info, indent=2) + "\n")
            return
        for key, value in info.items():
            out.print(f"{key:>20}: {value}", highlight=False)


@index_app.command("delete")
def delete(
    doc_ids: Annotated[
        list[str],
        typer.Argument(
            help="Document ids (a file's resolved path, or a .jsonl id).", show_default=False
        ),
    ],
    store: StoreOption = None,
) -> None:
    """Remove documents and all their chunks."""
    with opened(store) as db:
        try:
            removed = db.delete(doc_ids)
        except ApportionError as e:
            fail(e)
        out.print(
            f"deleted {removed} of {len(set(doc_ids))} document(s); "
            f"the store now holds {db.count()} chunk(s)",
            highlight=False,
            soft_wrap=True,
        )
