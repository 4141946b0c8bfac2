"""Milvus as a search backend: the index's vectors copied into a Milvus collection, searched there.

The index directory stays what it is (manifest, `vectors.npy`, item table, model copy); the collection is
a second copy of the vectors, with the item table's fields beside them:

    id (INT64 primary key = item id), vector (FLOAT_VECTOR, dim), path, label, sha256 (VARCHAR)

Metric IP on the L2-normalised vectors (cosine, like faiss). The URI is either a local `.db` path, Milvus
Lite embedded in this process (a relative name lies inside the index directory, so it is written, copied
and swapped in with the rest of the folder), or the http(s) address of a Milvus server or cluster. The
collection carries the model checksum and dimension as properties: opening it checks them against the
manifest (the model check) and its row count against the item table.

pymilvus is imported here only, and only when a milvus index is built or opened.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hebb.errors import UserError
from retrieval.index.manifest import Manifest

MILVUS_MISSING = "pymilvus is not installed: install it with pip install 'hebbir[milvus]'"
LITE_MISSING = "milvus-lite is not installed (a local .db URI needs it): install it with pip install 'hebbir[milvus]'"
DEFAULT_URI = "milvus.db"
INDEX_TYPES = ("auto", "FLAT", "HNSW", "IVF_FLAT")
#: Below this many vectors "auto" keeps the exact FLAT index; above it, HNSW.
FLAT_LIMIT = 100_000
HNSW_BUILD = {"M": 32, "efConstruction": 200}
DEFAULT_EF, DEFAULT_NPROBE = 64, 16
MODEL_PROPERTY, DIM_PROPERTY = "hebbir.model_checksum", "hebbir.dimension"
INSERT_BATCH, QUERY_BATCH = 5000, 1024
#: Milvus answers at most this many neighbours per query.
MAX_TOPK = 16384
CONNECT_TIMEOUT_S = 10.0
TOKEN_ENV = "HEBBIR_MILVUS_TOKEN"
PATH_MAX, LABEL_MAX = 4096, 512


def require_pymilvus():
    """The pymilvus module, or a `UserError` saying how to install it."""
    try:
        import pymilvus
    except ImportError:
        raise UserError(MILVUS_MISSING) from None
    return pymilvus


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://"))


def local_db_name(manifest: Manifest) -> str | None:
    """The name of the Milvus Lite database inside the index directory, or None (a server, or a db elsewhere)."""
    uri = (manifest.milvus or {}).get("uri", "")
    if manifest.backend != "milvus" or is_server(uri) or os.path.isabs(uri):
        return None
    return uri


def check_uri(uri: str) -> None:
    """`UserError` for a URI that is neither an http(s) address nor a `.db` file name."""
    if is_server(uri):
        return
    if not uri.endswith(".db"):
        raise UserError(f"--milvus-uri {uri}: give a local file ending in .db (Milvus Lite) or an http(s):// "
                        f"address of a Milvus server")
    if not os.path.isabs(uri) and (os.sep in uri or uri.startswith(".")):
        raise UserError(f"--milvus-uri {uri}: a relative file name is taken inside the index directory, so it "
                        f"must be a plain name (e.g. {DEFAULT_URI}); give an absolute path for a file elsewhere")


def resolve_uri(uri: str, index_dir: Path) -> str:
    """What to connect to: a server address as it is, a relative .db name inside `index_dir`."""
    if is_server(uri) or os.path.isabs(uri):
        return uri
    return str(Path(index_dir).resolve() / uri)


def default_collection(index_name: str) -> str:
    """A valid collection name for an index folder name (letters, digits, underscores)."""
    return "hebbir_" + re.sub(r"[^0-9A-Za-z_]", "_", index_name)[:200]


def choose_index(n_vectors: int, index_type: str = "auto") -> tuple[str, dict]:
    """(Milvus index type, build params): "auto" is exact FLAT below FLAT_LIMIT vectors, HNSW above."""
    if index_type not in INDEX_TYPES:
        raise UserError(f"unknown Milvus index type '{index_type}' (choose from {', '.join(INDEX_TYPES)})")
    if index_type == "auto":
        index_type = "FLAT" if n_vectors < FLAT_LIMIT else "HNSW"
    if index_type == "HNSW":
        return "HNSW", dict(HNSW_BUILD)
    if index_type == "IVF_FLAT":
        return "IVF_FLAT", {"nlist": int(min(65536, max(1, 4 * round(np.sqrt(max(n_vectors, 1))))))}
    return "FLAT", {}


# ----------------------------------------------------------------------------------------------- connections

# Milvus Lite runs in this process, one server per .db folder, holding an exclusive lock on it until released.
# Clients on the same folder share the server, so it is released when the last of them closes. A server stays
# bound to the folder it opened: when an add or sync swaps a new folder in under the same path, the next
# connection stops the old server, so that it reads the new one.
_lite_servers: dict[str, dict] = {}  # path -> {"users": n, "inode": inode of the folder it serves}
_lite_lock = threading.Lock()


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _locked_by_another_process(path: str) -> bool:
    lock = Path(path) / "LOCK"
    if not lock.is_file():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _prepare_lite(uri: str) -> None:
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        raise UserError(LITE_MISSING) from None
    if not Path(uri).parent.is_dir():
        raise UserError(f"{uri}: the folder of the Milvus Lite database does not exist")
    with _lite_lock:
        server = _lite_servers.get(uri)
        stale = server is not None and server["inode"] != _inode(uri)
        if stale:
            del _lite_servers[uri]
    if stale:
        server_manager_instance.release_server(uri)
    running = uri in getattr(server_manager_instance, "_servers", {})
    if not running and _locked_by_another_process(uri):
        raise UserError(f"{uri}: the Milvus Lite database is open in another process (Milvus Lite serves one "
                        f"process at a time); close it there, or use a Milvus server")


def connect(uri: str):
    """A `MilvusClient` on `uri` (resolved already), with a one-line `UserError` when that fails. A server's
    token (user:password, or an API key) comes from $HEBBIR_MILVUS_TOKEN, never from the manifest."""
    pymilvus = require_pymilvus()
    local = not is_server(uri)
    if local:
        _prepare_lite(uri)
    token = os.environ.get(TOKEN_ENV) if not local else None
    kwargs = {"token": token} if token else {}
    try:
        client = pymilvus.MilvusClient(uri=uri, timeout=CONNECT_TIMEOUT_S, **kwargs)
    except pymilvus.MilvusException as exc:
        why = getattr(exc, "message", "") or str(exc)
        raise UserError(f"cannot reach Milvus at {uri}: {why.splitlines()[0] if why else type(exc).__name__}") from None
    if local:
        with _lite_lock:
            server = _lite_servers.setdefault(uri, {"users": 0, "inode": _inode(uri)})
            server["users"] += 1
        client._hebbir_lite_server = server
    return client


def disconnect(client, uri: str) -> None:
    """Close `client`; the last user of a Milvus Lite database stops its server (flushing it, freeing the lock)."""
    try:
        client.close()
    except Exception:  # a client whose server is gone cannot fail to close in any way that matters
        pass
    server = getattr(client, "_hebbir_lite_server", None)
    if server is None:
        return
    with _lite_lock:
        server["users"] -= 1
        last = server["users"] <= 0 and _lite_servers.get(uri) is server  # not a server already replaced
        if last:
            del _lite_servers[uri]
    if last:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(uri)


def _call(what: str, uri: str, fn, *args, **kwargs):
    """Run a client call; a Milvus error becomes a one-line `UserError` saying what failed."""
    pymilvus = require_pymilvus()
    try:
        return fn(*args, **kwargs)
    except pymilvus.MilvusException as exc:
        why = (getattr(exc, "message", "") or str(exc)).strip().splitlines()
        raise UserError(f"Milvus at {uri}: {what} failed ({why[0] if why else type(exc).__name__})") from None


# ----------------------------------------------------------------------------------------------- writing


def new_config(out: Path, uri: str | None, collection: str | None, index_type: str = "auto",
               force: bool = False) -> dict:
    """The manifest's `milvus` entry for a build at `out`, checked before any work: pymilvus (and milvus-lite
    for a local file) installed, a server reachable and not holding the collection already (unless `force`)."""
    uri = uri or DEFAULT_URI
    check_uri(uri)
    name = collection or default_collection(out.name)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", name):
        raise UserError(f"--milvus-collection {name}: use letters, digits and underscores, starting with a letter")
    choose_index(0, index_type)
    require_pymilvus()
    if not is_server(uri):
        try:
            import milvus_lite  # noqa: F401
        except ImportError:
            raise UserError(LITE_MISSING) from None
    if is_server(uri) or os.path.isabs(uri):
        client = connect(uri)
        try:
            if not force and _call("list collections", uri, client.has_collection, name):
                raise UserError(f"Milvus at {uri}: a collection '{name}' already exists (another index?); use "
                                f"--force to replace it, or --milvus-collection to choose another name")
        finally:
            disconnect(client, uri)
    return {"uri": uri, "collection": name, "index_type": index_type}



def _schema(pymilvus, dim: int):
    DataType = pymilvus.DataType
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("path", DataType.VARCHAR, max_length=PATH_MAX)
    schema.add_field("label", DataType.VARCHAR, max_length=LABEL_MAX, nullable=True)
    schema.add_field("sha256", DataType.VARCHAR, max_length=64)
    return schema


def _rows(ids: Sequence[int], vectors: np.ndarray, items: Sequence[tuple]) -> Iterable[dict]:
    for item_id, vector, (path, label, sha256) in zip(ids, vectors, items):
        yield {"id": int(item_id), "vector": np.asarray(vector, dtype=np.float32), "path": str(path)[:PATH_MAX],
               "label": None if label is None else str(label)[:LABEL_MAX], "sha256": sha256}


def _upsert(client, uri: str, name: str, ids, vectors, items, upsert: bool) -> None:
    write = client.upsert if upsert else client.insert
    for s in range(0, len(ids), INSERT_BATCH):
        part = slice(s, s + INSERT_BATCH)
        _call("insert", uri, write, name, list(_rows(ids[part], vectors[part], items[part])))


def create_collection(index_dir: Path, config: dict, dim: int, model_checksum: str, ids: Sequence[int],
                      vectors: np.ndarray, items: Sequence[tuple], force: bool = False) -> dict:
    """Create the collection `config["collection"]` at `config["uri"]` (a local name inside `index_dir`) and
    fill it with `vectors` under `ids`, `items` = (path, label, sha256) per row. An existing collection of
    that name is replaced only with `force`. Returns `config` with the index type and params filled in."""
    pymilvus = require_pymilvus()
    uri = resolve_uri(config["uri"], index_dir)
    name = config["collection"]
    index_type, params = choose_index(len(ids), config.get("index_type", "auto"))
    client = connect(uri)
    try:
        if _call("list collections", uri, client.has_collection, name):
            if not force:
                raise UserError(f"Milvus at {uri}: a collection '{name}' already exists (another index?); use "
                                f"--force to replace it, or --milvus-collection to choose another name")
            _call("drop collection", uri, client.drop_collection, name)
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=params)
        # The index is built after the inserts: one build of the whole collection, not one per segment.
        _call("create collection", uri, client.create_collection, name, schema=_schema(pymilvus, dim),
              properties={MODEL_PROPERTY: model_checksum, DIM_PROPERTY: str(dim)})
        _upsert(client, uri, name, list(ids), vectors, list(items), upsert=False)
        _call("flush", uri, client.flush, name)
        _call("create index", uri, client.create_index, name, index_params)
        _call("load collection", uri, client.load_collection, name)
    finally:
        disconnect(client, uri)
    out = dict(config)
    out.update(index_type=index_type, index_params=params, metric_type="IP",
               pymilvus_version=getattr(pymilvus, "__version__", None))
    return out


def update_collection(index_dir: Path, manifest: Manifest, delete: Sequence[int] = (), upsert_ids: Sequence[int] = (),
                      vectors: np.ndarray | None = None, items: Sequence[tuple] = ()) -> None:
    """Delete ids from, and insert or replace rows in, the collection of the index at `index_dir`.

    Rows with ids at or past `manifest.rows` that an interrupted earlier write left on a server are removed
    first, so the collection again holds exactly the item table's ids.
    """
    config = manifest.milvus or {}
    uri = resolve_uri(config["uri"], index_dir)
    client = connect(uri)
    try:
        _check_collection(client, uri, config["collection"], manifest, index_dir)
        name = config["collection"]
        _call("delete", uri, client.delete, name, filter=f"id >= {int(manifest.rows)}")
        if len(delete):
            _call("delete", uri, client.delete, name, ids=[int(i) for i in delete])
        if len(upsert_ids):
            _upsert(client, uri, name, list(upsert_ids), vectors, list(items), upsert=True)
        _call("flush", uri, client.flush, name)
    finally:
        disconnect(client, uri)


def drop_collection(uri: str, name: str) -> None:
    """Remove a collection (a test and clean-up helper); nothing happens when it does not exist."""
    client = connect(uri)
    try:
        if client.has_collection(name):
            client.drop_collection(name)
    finally:
        disconnect(client, uri)


# ----------------------------------------------------------------------------------------------- reading


def _count(client, uri: str, name: str) -> int:
    res = _call("count", uri, client.query, name, filter="", output_fields=["count(*)"])
    return int(res[0]["count(*)"])


def _check_collection(client, uri: str, name: str, manifest: Manifest, index_dir: Path) -> None:
    """The model check against the collection: it exists, holds this model's vectors of this dimension."""
    if not _call("list collections", uri, client.has_collection, name):
        raise UserError(f"Milvus at {uri}: the index's collection '{name}' does not exist; recreate it from "
                        f"vectors.npy with: hebbir index repair --index {index_dir}")
    props = _call("describe collection", uri, client.describe_collection, name).get("properties") or {}
    checksum = props.get(MODEL_PROPERTY)
    if checksum != manifest.model_checksum:
        raise UserError(f"Milvus at {uri}: collection '{name}' holds vectors of another model (checksum "
                        f"{str(checksum)[:12]}, the index's model is {manifest.model_checksum[:12]}); rebuild the "
                        f"index or give it its own --milvus-collection")
    if str(props.get(DIM_PROPERTY)) != str(manifest.dimension):
        raise UserError(f"Milvus at {uri}: collection '{name}' holds {props.get(DIM_PROPERTY)}-d vectors, the "
                        f"index {manifest.dimension}-d ones; rebuild the index")


class MilvusBackend:
    """k-NN in a Milvus collection (Milvus Lite or a server); ids are item ids, scores inner products."""

    name = "milvus"

    def __init__(self, index_dir: Path, manifest: Manifest):
        config = manifest.milvus or {}
        self.uri = resolve_uri(config["uri"], index_dir)
        self.collection = config["collection"]
        self.index_type = config.get("index_type", "FLAT")
        self.params: dict = {}
        self.client = connect(self.uri)
        try:
            _check_collection(self.client, self.uri, self.collection, manifest, index_dir)
            _call("load collection", self.uri, self.client.load_collection, self.collection)
            self.count = _count(self.client, self.uri, self.collection)
        except BaseException:
            self.close()
            raise
        if self.count != manifest.item_count:
            self.close()
            raise UserError(f"Milvus at {self.uri}: collection '{self.collection}' holds {self.count} vectors, the "
                            f"item table {manifest.item_count}; reload it with: hebbir index repair --index "
                            f"{index_dir}")

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        if self.client is not None:
            disconnect(self.client, self.uri)
            self.client = None

    def set_params(self, params: str | None) -> None:
        """Search settings in faiss's spelling, "efSearch=128" (HNSW) or "nprobe=32" (IVF)."""
        for part in (params or "").split(","):
            if not part.strip():
                continue
            key, _, value = part.partition("=")
            key = {"efSearch": "ef", "nprobe": "nprobe"}.get(key.strip())
            if key is None or not value.strip().isdigit():
                raise UserError(f"search parameter '{part}' does not apply to a Milvus index (use efSearch=N or "
                                f"nprobe=N)")
            self.params[key] = int(value)

    def _search_params(self, k: int) -> dict:
        params = {}
        if self.index_type == "HNSW":
            params["ef"] = max(self.params.get("ef", DEFAULT_EF), k)  # Milvus refuses ef < k
        elif self.index_type.startswith("IVF"):
            params["nprobe"] = self.params.get("nprobe", DEFAULT_NPROBE)
        return {"metric_type": "IP", "params": params}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, k'): k' = min(k, items); missing places are id -1, score -inf."""
        k = min(k, len(self), MAX_TOPK)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if k == 0:
            return scores, ids
        params = self._search_params(k)
        for s in range(0, len(queries), QUERY_BATCH):
            found = _call("search", self.uri, self.client.search, self.collection, data=queries[s:s + QUERY_BATCH],
                          limit=k, search_params=params, output_fields=[])
            for row, hits in enumerate(found, start=s):
                for j, hit in enumerate(hits[:k]):
                    ids[row, j] = hit["id"]
                    scores[row, j] = hit["distance"]
        return scores, ids
