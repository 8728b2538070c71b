"""A manifest (CSV, JSONL or Parquet with `path` and `labels` columns) -> shards.

The escape hatch for any dataset the dedicated converters do not know: write a
table of image paths and label lists, plus a class list."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pyarrow.parquet as pq

from .errors import ConversionError, MissingInputError
from .plan import Item, sanitize_key
from .writer import convert

_SEP = re.compile(r"[|;,]")


def read_classes(spec) -> list[str]:
    """Class names from a file (one per line, or one comma-separated line) or
    from a comma-separated list given directly."""
    path = Path(spec)
    if path.is_file():
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        names = [n.strip() for n in lines[0].split(",")] if len(lines) == 1 else lines
    elif "," in str(spec):
        names = [n.strip() for n in str(spec).split(",")]
    else:
        raise MissingInputError(f"class list {spec} not found; pass a file with one class name "
                                "per line, or a comma-separated list")
    if not all(names) or len(set(names)) != len(names):
        raise ConversionError(f"class list {spec}: names must be non-empty and unique")
    return names


def read_rows(path: Path) -> list[dict]:
    """Rows of a .csv, .jsonl/.ndjson or .parquet manifest as dicts."""
    if not path.is_file():
        raise MissingInputError(f"manifest {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConversionError(f"{path} line {n}: not JSON ({exc})") from None
        return rows
    if suffix in (".parquet", ".pq"):
        return pq.read_table(path).to_pylist()
    raise ConversionError(f"manifest {path}: unknown type {suffix!r}; use .csv, .jsonl or .parquet")


def _tokens(raw) -> list:
    """Split one `labels` cell: a list, or "a|b|c" / "a;b" / "[0, 3]" / a single value."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return []
    if isinstance(raw, (list, tuple)):
        return list(raw)
    if isinstance(raw, int):
        return [raw]
    text = str(raw).strip()
    if text.startswith("["):
        return json.loads(text)  # a JSON list written into a CSV cell
    return [t.strip() for t in _SEP.split(text) if t.strip()]


def parse_labels(raw, classes: list[str], where: str) -> tuple[int, ...]:
    """Class indices of one cell. A token is a class name first, else an index."""
    lookup = {name: i for i, name in enumerate(classes)}
    out = set()
    try:
        tokens = _tokens(raw)
    except json.JSONDecodeError:
        raise ConversionError(f"{where}: cannot read labels {raw!r}") from None
    for tok in tokens:
        if isinstance(tok, str) and tok in lookup:
            out.add(lookup[tok])
        elif isinstance(tok, int) or (isinstance(tok, str) and tok.isdigit()):
            if not 0 <= int(tok) < len(classes):
                raise ConversionError(f"{where}: class index {tok} outside 0..{len(classes) - 1}")
            out.add(int(tok))
        else:
            raise ConversionError(f"{where}: unknown class {tok!r}; add it to the class list "
                                  "or fix the manifest")
    return tuple(sorted(out))


def manifest_items(file, classes: list[str], role: str = "id") -> list[Item]:
    """Items with paths resolved against the manifest's folder; OE/OOD rows need no labels."""
    path = Path(file)
    rows = read_rows(path)
    need = ["path", "labels"] if role == "id" else ["path"]
    missing = [c for c in need if rows and c not in rows[0]]
    if missing:
        raise ConversionError(f"manifest {path} lacks column(s) {missing}; "
                              f"found {sorted(rows[0])}")
    items = []
    for n, row in enumerate(rows, 1):
        rel = str(row["path"]).strip()
        labels = parse_labels(row["labels"], classes, f"{path} row {n}") if role == "id" else ()
        key = sanitize_key(rel.replace("\\", "/").rsplit(".", 1)[0])
        items.append(Item(key=key, source=str(path.parent / rel), labels=labels))
    return items


def convert_manifest(file, classes, out_dir, *, role: str = "id", name: str | None = None,
                     **options) -> dict:
    """Convert a manifest. `classes` is a list of names or a path/spec for `read_classes`."""
    if role == "id":
        classes = list(classes) if isinstance(classes, (list, tuple)) else read_classes(classes)
    else:
        classes = []
    items = manifest_items(file, classes, role)
    source = {"kind": "manifest", "file": str(file)}
    return convert(items, out_dir, name=name or sanitize_key(Path(file).stem), role=role,
                   classes=classes, source=source, where=f"manifest {file}", **options)
