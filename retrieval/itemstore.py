"""The item table of an index directory: SQLite rows (id, path, label, sha256 of the file bytes).

Item ids are the row numbers of the vectors in the index (0..N-1), so the FAISS file needs no id map. The
content hash is unique: the same bytes are never indexed twice.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

ITEMS_FILE = "items.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id     INTEGER PRIMARY KEY,
    path   TEXT NOT NULL,
    label  TEXT,
    sha256 TEXT NOT NULL UNIQUE
)
"""


@dataclass(frozen=True)
class Item:
    id: int
    path: str
    label: str | None
    sha256: str


class ItemStore:
    """Read and append items of one SQLite file. Open read-only unless `writable`."""

    def __init__(self, path: Path | str, writable: bool = False):
        self.path = Path(path)
        if writable:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute(_SCHEMA)
        else:
            # check_same_thread=False: Streamlit serves one handle from several threads (read-only use).
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ItemStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def add(self, rows: Iterable[tuple[int, str, str | None, str]]) -> None:
        """Insert (id, path, label, sha256) rows in one transaction."""
        with self._db:
            self._db.executemany("INSERT INTO items (id, path, label, sha256) VALUES (?, ?, ?, ?)", rows)

    def get(self, item_id: int) -> Item | None:
        row = self._db.execute("SELECT id, path, label, sha256 FROM items WHERE id = ?", (int(item_id),)).fetchone()
        return Item(*row) if row else None

    def get_many(self, ids: Sequence[int]) -> dict[int, Item]:
        """Items by id (unknown ids are absent from the result)."""
        out: dict[int, Item] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), 900):  # SQLite caps the number of bound parameters
            part = ids[start:start + 900]
            marks = ",".join("?" * len(part))
            for row in self._db.execute(f"SELECT id, path, label, sha256 FROM items WHERE id IN ({marks})", part):
                out[row[0]] = Item(*row)
        return out

    def all(self) -> list[Item]:
        """Every item, in id order."""
        return [Item(*row) for row in self._db.execute("SELECT id, path, label, sha256 FROM items ORDER BY id")]

    def known_hashes(self) -> dict[str, int]:
        """sha256 -> id of every item."""
        return {h: i for i, h in self._db.execute("SELECT id, sha256 FROM items")}

    def labels(self) -> list[str | None]:
        """Labels in id order."""
        return [r[0] for r in self._db.execute("SELECT label FROM items ORDER BY id")]

    def next_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM items").fetchone()
        return 0 if row[0] is None else row[0] + 1


def write_items(path: Path | str, rows: Iterable[tuple[int, str, str | None, str]]) -> None:
    """Create (or extend) the item table at `path` with (id, path, label, sha256) rows."""
    with closing(ItemStore(path, writable=True)) as store:
        store.add(rows)
