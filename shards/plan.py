"""Driver-side planning: keys, checks and shard boundaries.

Everything that decides *what goes where* happens here, in the driver, before
any task runs; tasks only encode, validate and write. That is what makes the
output deterministic whatever the number of workers or the task finish order.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import ConversionError, MissingInputError

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SHOW = 5  # how many offending files an error message lists


@dataclass(frozen=True)
class Item:
    """One sample to convert.

    `source` is the image path (or, for in-memory `data`, a description used in
    messages); `meta` holds extra fields for the sample's json (e.g. the demo's
    source digit indices)."""

    key: str
    source: str
    labels: tuple[int, ...] = ()
    data: bytes | None = None
    meta: dict = field(default_factory=dict)


def sanitize_key(text: str) -> str:
    """A WebDataset-safe key: WebDataset splits member names at the first dot
    and groups by prefix, so keys may hold only letters, digits, '_' and '-'."""
    key = _UNSAFE.sub("_", text).strip("_")
    if not key:
        raise ConversionError(f"cannot derive a sample key from {text!r}; rename the file")
    return key


def sort_items(items: list[Item]) -> list[Item]:
    """Sort by key (then source) so the input order never changes the output."""
    return sorted(items, key=lambda it: (it.key, it.source))


def check_unique_keys(items: list[Item], where: str) -> None:
    """Two samples with one key would silently merge into one WebDataset sample."""
    seen: dict[str, str] = {}
    clashes = []
    for it in items:
        if it.key in seen:
            clashes.append(f"{seen[it.key]!r} and {it.source!r} -> key {it.key!r}")
        else:
            seen[it.key] = it.source
    if clashes:
        raise ConversionError(
            f"duplicate sample keys in {where} ({len(clashes)}): {'; '.join(clashes[:_SHOW])}; "
            "remove the repeated entries or rename the files so their keys differ")


def check_on_disk(items: list[Item], where: str, skip_missing: bool = False):
    """Fail early (before any task) on listed images that are absent.

    With `skip_missing` they are kept out and returned as skipped entries
    instead, so nothing disappears without being listed."""
    missing = [it for it in items if it.data is None and not os.path.isfile(it.source)]
    if missing and not skip_missing:
        names = ", ".join(it.source for it in missing[:_SHOW])
        more = f" and {len(missing) - _SHOW} more" if len(missing) > _SHOW else ""
        raise MissingInputError(
            f"{len(missing)} image(s) listed in {where} are not on disk: {names}{more}; "
            "check the image folder argument, or pass --skip-missing to list them as skipped")
    gone = {id(it) for it in missing}
    kept = [it for it in items if id(it) not in gone]
    skipped = [{"path": it.source, "reason": "listed but not on disk (--skip-missing)"}
               for it in missing]
    return kept, skipped


def split_shards(items: list[Item], shard_size: int) -> list[list[Item]]:
    """Contiguous ranges of `shard_size` items, fixed before any image is read."""
    if shard_size < 1:
        raise ConversionError(f"--shard-size must be >= 1, got {shard_size}")
    return [items[i:i + shard_size] for i in range(0, len(items), shard_size)]


def check_labels(items: list[Item], role: str, classes: list[str], where: str) -> None:
    """ID samples carry indices into `classes`; OE/OOD samples carry none."""
    if role not in ("id", "oe", "ood"):
        raise ConversionError(f"role must be id, oe or ood, got {role!r}")
    if role != "id":
        if classes or any(it.labels for it in items):
            raise ConversionError(f"{where}: role {role} takes no classes or labels; use role id")
        return
    if not classes:
        raise ConversionError(f"{where}: role id needs a class list")
    for it in items:
        bad = [c for c in it.labels if not 0 <= c < len(classes)]
        if bad:
            raise ConversionError(f"{where}: {it.source!r} has label index {bad[0]} "
                                  f"outside 0..{len(classes) - 1}")
