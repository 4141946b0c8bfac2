"""The manifest of an index directory (`manifest.json`) as a typed object.

Format version 1 is the flat JSON object hebbir has always written; `Manifest.from_dict` reads it and checks
the keys a search needs, `Manifest.to_dict` writes it back the same way. Format 2 is the same object for an
index whose ids have holes: `hebbir index sync` removed items, and `vectors.npy` / `index.faiss` keep a zero
row for each (`deleted_rows`), so that every other id stays its row number; only a sync writes format 2.
Keys this version does not know (for example the quickstart's `quickstart_limit`) are kept in `extra` and
written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
#: An index with deleted rows (see the module docstring).
HOLES_VERSION = 2
#: Versions this hebbir reads.
SUPPORTED_VERSIONS = (1, 2)
METRIC = "inner_product"
#: Where an index's vectors are searched (`Manifest.backend`).
BACKENDS = ("faiss", "milvus")


class ManifestError(ValueError):
    """A manifest that is not a hebbir manifest, or lacks what a search needs (the message says what)."""


@dataclass
class Manifest:
    """What an index directory holds and how it was built; see docs/ARCHITECTURE.md for the fields."""

    model_file: str
    model_checksum: str
    architecture: str
    features: dict
    dimension: int
    item_count: int
    format_version: int = FORMAT_VERSION
    model_source: str = ""
    model_meta: dict = field(default_factory=dict)
    layer: int | None = None
    pooling: str | None = None
    projection: str | None = None
    description: str = ""
    metric: str = METRIC
    factory: str = "Flat"
    faiss_version: str | None = None
    has_faiss_file: bool | None = None
    source: str = ""
    files_seen: int | None = None
    created: str | None = None
    updated: str | None = None
    build_time_s: float | None = None
    fit_time_s: float | None = None
    device: str | None = None
    images_per_s: float | None = None
    skipped: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    additions: list = field(default_factory=list)
    deleted_rows: int = 0
    #: "faiss" (index.faiss / vectors.npy in the folder) or "milvus" (a collection; `milvus` says where).
    backend: str = "faiss"
    milvus: dict | None = None
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ (de)serialisation

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """A `Manifest` from parsed JSON; `ManifestError` when it is not a usable hebbir manifest."""
        if not isinstance(data, dict):
            raise ManifestError(f"not a hebbir manifest (a JSON {type(data).__name__}, not an object)")
        version = data.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise ManifestError(f"index format {version} is not supported (this hebbir reads format "
                                f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ManifestError(f"not a complete hebbir manifest (missing {', '.join(missing)})")
        manifest = cls(**{k: v for k, v in data.items() if k in known},
                       extra={k: v for k, v in data.items() if k not in known})
        manifest.validate()
        return manifest

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if self.backend == "faiss" and self.milvus is None:
            del data["backend"], data["milvus"]  # a faiss index's manifest stays what it always was
        data.update({k: v for k, v in self.extra.items() if k not in data})  # a field always wins
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def rows(self) -> int:
        """Rows of vectors.npy and index.faiss: the items plus the zero rows of deleted ones."""
        return self.item_count + self.deleted_rows

    def validate(self) -> None:
        """Check the types of the fields a search relies on, and that `model_file` stays inside the index."""
        checks = [("model_file", str), ("model_checksum", str), ("architecture", str), ("features", dict),
                  ("dimension", int), ("item_count", int), ("skipped", list), ("duplicates", list),
                  ("additions", list), ("model_meta", dict), ("deleted_rows", int)]
        for name, kind in checks:
            value = getattr(self, name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ManifestError(f"field {name} should be of type {kind.__name__}, not {type(value).__name__}")
        if self.dimension <= 0 or self.item_count < 0 or self.deleted_rows < 0:
            raise ManifestError(f"dimension {self.dimension} / item_count {self.item_count} / deleted_rows "
                                f"{self.deleted_rows} out of range")
        if self.deleted_rows and self.format_version < HOLES_VERSION:
            raise ManifestError(f"deleted_rows needs format {HOLES_VERSION}, the manifest says {self.format_version}")
        check_plain_name(self.model_file)
        if self.backend not in BACKENDS:
            raise ManifestError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "milvus" and not (isinstance(self.milvus, dict) and isinstance(self.milvus.get("uri"), str)
                                             and isinstance(self.milvus.get("collection"), str)):
            raise ManifestError("a milvus index needs a field milvus with its uri and collection")
        if self.backend == "milvus":
            uri = self.milvus["uri"]
            relative = not uri.startswith(("http://", "https://", "tcp://", "/"))
            if relative and ("/" in uri or "\\" in uri or uri.startswith(".")):
                raise ManifestError(f"milvus uri {uri!r}: a relative name must be a plain file name inside the index")

    # ------------------------------------------------------------------ dict-style reading

    # Readers written against the dict manifest (the page, older scripts) keep working: manifest["layer"],
    # manifest.get("dimension"), "created" in manifest.
    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        if key != "extra" and key in self.__dataclass_fields__:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key in self.extra or (key != "extra" and key in self.__dataclass_fields__)


def check_plain_name(name: str) -> None:
    """`ManifestError` unless `name` is a plain file name (no folder part, not `..`)."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or name.startswith("~")):
        raise ManifestError(f"model_file {name!r} must be a plain file name inside the index folder")
