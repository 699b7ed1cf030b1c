"""Hostile input against the live server: whatever the method, path, query, headers or body, the answer
is never a 5xx, every error is the OCI JSON body, and nothing appears outside STORAGE_ROOT."""

from __future__ import annotations

import json
import os
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.manifest_strategies import ManifestCase, expected_media_type, manifest_cases
from tests.support import make_image, push_image, sha256

GOOD_DIGEST = sha256(b"fuzz")
names = st.sampled_from(["fuzz/repo", "fuzz", "a/b/c", "UPPER", "..", "a/../b", "%2e%2e", "a%2fb", "-x",
                         "a" * 300, "a//b", "_layers", "a/_uploads", "\u00e9", "a b", "%00"])
references = st.sampled_from(["latest", "v1", GOOD_DIGEST, "sha256:short", "md5:abc", "-bad", ".hidden",
                              "sha512:" + "a" * 128, "a" * 200, "%2e%2e", "..", "sha256:" + "A" * 64])
upload_ids = st.sampled_from(["00000000-0000-0000-0000-000000000000", "..", "not-a-uuid", "%2e%2e%2f%2e%2e"])
segments = st.one_of(
    st.tuples(st.just("manifests"), references).map("/".join),
    st.tuples(st.just("blobs"), references).map("/".join),
    st.just("blobs/uploads/"),
    st.tuples(st.just("blobs/uploads"), upload_ids).map("/".join),
    st.just("tags/list"),
    st.tuples(st.just("referrers"), references).map("/".join),
    st.text(alphabet="abc/._-%0", max_size=20),
)
queries = st.dictionaries(st.sampled_from(["digest", "mount", "from", "n", "last", "artifactType"]),
                          st.one_of(references, names, st.sampled_from(["-1", "0", "5", "x", "99999999999"])),
                          max_size=3)
headers = st.dictionaries(
    st.sampled_from(["Content-Range", "Range", "Content-Type", "Accept", "X-Request-ID"]),
    st.sampled_from(["0-3", "5-1", "bytes=0-", "bytes=-1", "bytes=99999-", "bytes=a-b", "garbage", "0-",
                     "application/vnd.oci.image.manifest.v1+json", "application/json", "*/*", "",
                     "application/vnd.docker.distribution.manifest.v1+prettyjws", "x" * 200]),
    max_size=3)
bodies = st.one_of(st.just(b""), st.binary(max_size=200),
                   st.sampled_from([b"{}", b"[]", b'{"schemaVersion":2}', b'{"schemaVersion":2,"manifests":[{}]}',
                                    b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:1","size":1}}']))


def _mutated_manifest(raw: bytes, choice: int) -> bytes:
    doc = json.loads(raw)
    mutations = [
        lambda d: d.pop("config"), lambda d: d.__setitem__("schemaVersion", 1),
        lambda d: d["layers"].append({"mediaType": "x", "digest": GOOD_DIGEST, "size": 4}),
        lambda d: d["config"].__setitem__("size", -5), lambda d: d.__setitem__("layers", {}),
        lambda d: d.__setitem__("subject", {"mediaType": "x", "digest": "sha256:bad", "size": 1}),
        lambda d: d.__setitem__("mediaType", "application/vnd.oci.image.index.v1+json"),
    ]
    mutations[choice % len(mutations)](doc)
    return json.dumps(doc).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS"]),
       name=names, segment=segments, query=queries, header=headers, body=bodies)
def test_no_5xx_and_always_oci_errors(server, fuzz_client, method, name, segment, query, header, body):
    path = f"/v2/{name}/{segment}"
    r = fuzz_client.request(method, path, params=query, headers=header, content=body or None)
    assert r.status_code < 500, (method, path, query, header, r.status_code, r.text[:300])
    if r.status_code >= 400 and method != "HEAD":
        assert r.json()["errors"][0]["code"], r.text


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(choice=st.integers(0, 100), tag=st.sampled_from(["m1", "m2", GOOD_DIGEST]))
def test_mutated_manifests_are_refused_cleanly(server, fuzz_client, fuzz_image, choice, tag):
    raw = _mutated_manifest(fuzz_image.manifest, choice)
    r = fuzz_client.put(f"/v2/fuzz/repo/manifests/{tag}", content=raw,
                        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert 400 <= r.status_code < 500, (choice, r.status_code, r.text)


OCI_CODES = {"BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
             "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED",
             "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"}


def test_manifest_structures_over_http(server, fuzz_client, fuzz_image):
    """JSON structures shaped like manifests (tests/manifest_strategies.py), PUT by tag or digest, some
    referencing the blobs and manifest already in the repository: 201 and served back byte for byte, or a
    4xx with the OCI error body; never a 5xx; never a 201 for what the spec refuses. Most get past JSON
    decoding (counted)."""
    pool = (sha256(fuzz_image.config), *(sha256(layer) for layer in fuzz_image.layers), fuzz_image.digest)
    stages: Counter[str] = Counter()

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=manifest_cases(pool), tag=st.sampled_from(["s1", "s2", None]))
    def fuzz(case: ManifestCase, tag: str | None) -> None:
        headers = {"Content-Type": case.content_type} if case.content_type is not None else {}
        r = fuzz_client.put(f"/v2/fuzz/repo/manifests/{tag or sha256(case.raw)}", content=case.raw, headers=headers)
        assert r.status_code == 201 or 400 <= r.status_code < 500, (r.status_code, r.text[:300], case)
        if r.status_code == 201:
            assert expected_media_type(case) is not None, ("stored what the spec refuses", case)
            stored = fuzz_client.get(f"/v2/fuzz/repo/manifests/{r.headers['Docker-Content-Digest']}")
            assert stored.status_code == 200 and stored.content == case.raw
            where = "stored (201)"
        else:
            error = r.json()["errors"][0]
            assert error["code"] in OCI_CODES and error["message"], r.text[:300]
            if error["message"].startswith("manifest is not valid JSON"):
                where = "not JSON"
            elif error["code"] == "MANIFEST_BLOB_UNKNOWN":
                where = "parsed, references missing"
            else:
                where = f"refused after decoding ({error['code']})"
        event(where)
        stages[where] += 1

    fuzz()
    total = sum(stages.values())
    print(f"\nmanifest PUT fuzz, {total} examples: " + ", ".join(
        f"{name} {100 * n / total:.0f}%" for name, n in stages.most_common()))
    assert stages["not JSON"] < 0.2 * total and stages["stored (201)"] and stages["parsed, references missing"], stages


def test_nothing_outside_the_root(server, fuzz_client):
    parent = os.path.dirname(server.storage_root)
    before = sorted(os.listdir(parent))
    for path in ["/v2/../../../tmp/x/blobs/uploads/", "/v2/%2e%2e/%2e%2e/x/blobs/uploads/",
                 "/v2/x/blobs/uploads/../../../../escape", "/v2/x%00y/blobs/uploads/"]:
        r = fuzz_client.post(path)
        assert r.status_code < 500
    assert sorted(os.listdir(parent)) == before
    root = os.path.realpath(server.storage_root)
    for directory, _dirs, files in os.walk(root):
        for f in files:
            assert os.path.realpath(os.path.join(directory, f)).startswith(root)





@pytest.fixture(scope="module")
def fuzz_client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def fuzz_image(fuzz_client):
    image = make_image("fuzz")
    push_image(fuzz_client, "fuzz/repo", image, "base")
    return image
