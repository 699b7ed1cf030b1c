"""The manifest parser fuzzed with JSON structures shaped like manifests (tests/manifest_strategies.py), not
with random bytes, which never got past JSON decoding. Whatever the document: a Manifest or a RegistryError,
never another exception; it accepts exactly what the spec-derived oracle accepts; and most examples reach
the checks after decoding, which the run counts by stage."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, event, given, settings

from domain.digest import Digest
from domain.errors import ManifestInvalid, RegistryError, Unsupported
from domain.manifest import INDEX_TYPES, MANIFEST_TYPES, Manifest, media_type_of, parse_manifest, parse_stored
from tests.manifest_strategies import ManifestCase, expected_media_type, manifest_cases

EXAMPLES = 600


def stage(case: ManifestCase) -> str:
    """Where the parser stopped: `parsed`, `not JSON`, or the check that refused it."""
    try:
        parse_manifest(case.raw, case.content_type)
    except Unsupported:
        return "refused: unsupported (schema 1)"
    except ManifestInvalid as e:
        if e.message.startswith("manifest is not valid JSON"):
            return "not JSON"
        if "schemaVersion" in e.message or "must be a JSON object" in e.message:
            return "refused: top level (object, schemaVersion)"
        if e.message.startswith(("config", "layers[", "manifests[", "subject")):
            return "refused: a descriptor"
        return "refused: manifest fields (mediaType, lists, kind)"
    return "parsed"


def check(case: ManifestCase) -> str:
    """The properties of one case; returns its stage."""
    expected = expected_media_type(case)
    try:
        manifest = parse_manifest(case.raw, case.content_type)
    except RegistryError as e:
        assert expected is None, f"refused ({e.code}: {e.message}) but the spec accepts it as {expected}"
        assert e.code in ("MANIFEST_INVALID", "UNSUPPORTED"), e.code
    else:
        assert expected == manifest.media_type, f"accepted as {manifest.media_type}; the oracle says {expected}"
        _check_manifest(manifest, case.raw)
    # The stored-manifest reader (collection, repository deletion) and the serving path never crash either.
    try:
        _check_manifest(parse_stored(case.raw), case.raw)
    except ManifestInvalid:
        pass
    assert isinstance(media_type_of(case.raw), str)
    return stage(case)


def _check_manifest(manifest: Manifest, raw: bytes) -> None:
    assert manifest.raw is raw and manifest.digest == Digest.of(raw)
    descriptors = [*manifest.layers, *manifest.manifests, *([manifest.config] if manifest.config else [])]
    if manifest.media_type in MANIFEST_TYPES:
        assert manifest.is_index == (manifest.media_type in INDEX_TYPES)
        assert not (manifest.is_index and (manifest.config or manifest.layers))
    for d in descriptors + ([manifest.subject] if manifest.subject else []):
        assert Digest.parse(str(d.digest)) == d.digest and type(d.size) is int and d.size >= 0
    assert set(manifest.required_blobs()) <= {d.digest for d in descriptors}


def test_manifest_structures_never_crash_and_mostly_pass_json_decoding():
    stages: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(manifest_cases())
    def fuzz(case: ManifestCase) -> None:
        where = check(case)
        event(where)
        stages[where] += 1

    fuzz()
    total = sum(stages.values())
    print(f"\nmanifest fuzz, {total} examples: " + ", ".join(
        f"{name} {100 * n / total:.0f}%" for name, n in stages.most_common()))
    # The point of fuzzing structures: most examples reach the checks after decoding, and every stage is
    # visited (a generator that drifts into always-valid or always-broken documents fails here).
    assert stages["not JSON"] < 0.2 * total, stages
    assert stages["parsed"] > 0.1 * total, stages
    assert stages["refused: a descriptor"] > 0.1 * total, stages
    assert stages["refused: manifest fields (mediaType, lists, kind)"] > 0.05 * total, stages
    assert all(stages[name] for name in ("not JSON", "refused: top level (object, schemaVersion)",
                                         "refused: unsupported (schema 1)")), stages
