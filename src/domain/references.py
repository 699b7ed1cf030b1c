"""What stored manifests reference, in the compact form the removal paths keep in memory (a collection
holds one per manifest of the registry), and the order in which removals keep readers whole."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .digest import Digest
from .errors import ManifestInvalid
from .manifest import parse_stored


@dataclass(frozen=True, slots=True)
class References:
    children: tuple[Digest, ...]  # manifests an index lists
    blobs: tuple[Digest, ...]  # config and layers the registry holds
    subject: Digest | None  # the manifest this one refers to (OCI referrers)


def references_of(raw: bytes) -> References | None:
    """What the stored manifest references; None when it cannot be read (keep all it might use)."""
    try:
        manifest = parse_stored(raw)
    except ManifestInvalid:
        return None
    return References(tuple(d.digest for d in manifest.manifests), tuple(manifest.required_blobs()),
                      manifest.subject.digest if manifest.subject else None)


def parents_first(doomed: Iterable[Digest], refs: Mapping[Digest, References | None]) -> list[Digest]:
    """`doomed` ordered so that each manifest comes before those it references among them (an index
    before its children, a referrer before its subject). Removing in this order, a crash at any point
    leaves no remaining manifest pointing at a removed one."""
    doomed = list(doomed)
    pending = set(doomed)
    order: list[Digest] = []  # post-order: referenced ones first; reversed at the end
    done: set[Digest] = set()
    for root in doomed:
        if root in done:
            continue
        stack: list[tuple[Digest, int]] = [(root, 0)]
        done.add(root)
        while stack:  # iterative depth-first search: indexes may be deep, recursion may not
            digest, i = stack.pop()
            ref = refs.get(digest)
            targets = () if ref is None else (*ref.children, *((ref.subject,) if ref.subject else ()))
            if i < len(targets):
                stack.append((digest, i + 1))
                target = targets[i]
                if target in pending and target not in done:
                    done.add(target)
                    stack.append((target, 0))
            else:
                order.append(digest)
    order.reverse()
    return order
