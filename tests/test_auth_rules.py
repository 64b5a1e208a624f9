"""The restriction model (htsget-rs's JSON) and signed /data urls, without HTTP."""

from __future__ import annotations

import pytest

from htsgetr.auth.rules import covered, decide, hint, parse_restrictions
from htsgetr.auth.signing import UrlSigner
from htsgetr.protocol import (
    Class,
    Endpoint,
    Format,
    PermissionDenied,
    Query,
    Region,
)

DOC = {
    "version": 1,
    "htsgetAuth": [
        {
            "location": {"id": "cohort/NA1"},
            "rules": [
                {"referenceName": "chr1", "format": "BAM", "start": 1000, "end": 2000},
                {"referenceName": "chr1", "start": 1500, "end": 3000},
                {"referenceName": "chr2"},
            ],
        },
        {"location": {"prefix": "open/"}},
        {"location": {"regex": "^vcf/[^/]+$"}, "rules": [{"format": "VCF", "start": 0,
                                                          "end": 500}]},
    ],
}


def q(id: str, *regions: Region, fmt: Format = Format.BAM, klass: Class | None = None) -> Query:
    ep = Endpoint.VARIANTS if fmt in (Format.VCF, Format.BCF) else Endpoint.READS
    return Query(ep, id, fmt, klass, tuple(regions) if regions else None)


GRANTS = parse_restrictions(DOC)


@pytest.mark.parametrize(
    "query",
    [
        q("cohort/NA1", Region("chr1", 1000, 2000)),
        q("cohort/NA1", Region("chr1", 1200, 3000)),  # the union of two rules
        q("cohort/NA1", Region("chr2")),
        q("cohort/NA1", Region("chr2", 5, 10), Region("chr1", 2500, 2600)),
        q("cohort/NA1", klass=Class.HEADER),  # the header wherever the ID is allowed
        q("vcf/x", Region("chr9", 100, 200), fmt=Format.VCF),
    ],
)
def test_inside_the_rules_is_allowed_and_restricted(query: Query) -> None:
    decision = decide(query, GRANTS)
    if query.klass is Class.HEADER:
        assert not decision.restricted and decision.query == query
    else:
        assert decision.restricted and decision.query.allowed
        assert decision.query.regions == query.regions


@pytest.mark.parametrize(
    "query, message",
    [
        (q("cohort/NA2", Region("chr1", 1000, 2000)), "not authorized for ID"),
        (q("cohort/NA1", Region("chr1", 999, 2000)), "chr1:999-2000"),
        (q("cohort/NA1", Region("chr1", 1000, 3001)), "chr1:1000-3001"),
        (q("cohort/NA1", Region("chr1")), "reference 'chr1'"),
        (q("cohort/NA1", Region("chr3", 0, 1)), "chr3:0-1"),
        (q("cohort/NA1", Region("*")), "reference '*'"),
        (q("cohort/NA1"), "whole of"),
        # the BAM-only rule does not open CRAM: only 1500-3000 is left
        (q("cohort/NA1", Region("chr1", 1000, 2000), fmt=Format.CRAM), "chr1:1000-2000"),
        (q("vcf/x", Region("chr9", 100, 200), fmt=Format.BCF), "chr9:100-200"),
        (q("vcf/x/y", Region("chr9", 100, 200), fmt=Format.VCF), "not authorized for ID"),
    ],
)
def test_outside_the_rules_is_denied(query: Query, message: str) -> None:
    with pytest.raises(PermissionDenied, match=message):
        decide(query, GRANTS)


def test_a_rule_without_rules_opens_everything() -> None:
    decision = decide(q("open/anything"), GRANTS)
    assert not decision.restricted and decision.query.allowed is None


def test_suppress_errors_gives_the_allowed_part_and_the_hint() -> None:
    decision = decide(q("cohort/NA1", Region("chr1", 500, 1500)), GRANTS, suppress_errors=True)
    assert decision.restricted
    assert decision.query.regions == (Region("chr1", 500, 1500),)  # the engine intersects
    assert Region("chr1", 1000, 2000) in (decision.query.allowed or ())
    assert hint(decision) == [DOC["htsgetAuth"][0]]
    whole = decide(q("cohort/NA1"), GRANTS, suppress_errors=True)
    assert whole.restricted and whole.query.regions is None
    with pytest.raises(PermissionDenied):  # an ID outside the rules is still refused
        decide(q("cohort/NA9"), GRANTS, suppress_errors=True)


def test_covered_is_the_union() -> None:
    allowed = (Region("c", 0, 10), Region("c", 10, 20), Region("", 30, 40))
    assert covered(Region("c", 0, 20), allowed)
    assert not covered(Region("c", 0, 21), allowed)
    assert covered(Region("d", 30, 40), allowed)  # a rule naming no reference
    assert not covered(Region("c", 20, 30), allowed)
    assert not covered(Region("c"), allowed)


@pytest.mark.parametrize(
    "doc, message",
    [
        ([], "expected a JSON object"),
        ({"version": 2, "htsgetAuth": [{"location": {"id": "a"}}]}, "version must be 1"),
        ({"version": 1, "htsgetAuth": []}, "non-empty"),
        ({"version": 1, "htsgetAuth": [{"location": {}}]}, "exactly one of"),
        ({"version": 1, "htsgetAuth": [{"location": {"id": "a", "prefix": "b"}}]},
         "exactly one of"),
        ({"version": 1, "htsgetAuth": [{"location": {"regex": "("}}]}, "regex"),
        ({"version": 1, "htsgetAuth": [{"location": {"id": "a"}, "rules": [{"start": "1"}]}]},
         "start"),
        ({"version": 1, "htsgetAuth": [{"location": {"id": "a"},
                                        "rules": [{"start": 5, "end": 5}]}]}, "less than"),
        ({"version": 1, "htsgetAuth": [{"location": {"id": "a"},
                                        "rules": [{"format": "PNG"}]}]}, "unknown format"),
        ({"version": 1, "htsgetAuth": [{"location": {"id": "a"}, "rules": [{"chr": 1}]}]},
         "unknown key"),
        ({"version": 1, "htsgetAuth": [{"location": {"id": "a"}}], "extra": 1}, "unknown key"),
    ],
)
def test_bad_documents_are_refused_with_the_place(doc: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_restrictions(doc)


# --------------------------------------------------------------------------- signed urls


def test_signed_url_opens_exactly_its_range_until_it_expires() -> None:
    now = [1_000_000.0]
    signer = UrlSigner(["new-secret", "old-secret"], 600, clock=lambda: now[0])
    query = signer.sign("~a/x.bam", "bytes=0-99")
    args = dict(part.split("=", 1) for part in query.split("&"))
    signer.verify("GET", "~a/x.bam", "bytes=0-99", args)
    signer.verify("HEAD", "~a/x.bam", "bytes=0-99", args)
    for method, path, rng, message in [
        ("GET", "~a/y.bam", "bytes=0-99", "does not cover"),
        ("GET", "~a/x.bam", "bytes=0-100", "does not cover"),
        ("GET", "~a/x.bam", "bytes=1-99", "does not cover"),
        ("GET", "~a/x.bam", None, "does not cover"),
        ("POST", "~a/x.bam", "bytes=0-99", "invalid"),
    ]:
        with pytest.raises(PermissionDenied, match=message):
            signer.verify(method, path, rng, args)
    tampered = {**args, "exp": str(int(args["exp"]) + 1)}
    with pytest.raises(PermissionDenied, match="does not cover"):
        signer.verify("GET", "~a/x.bam", "bytes=0-99", tampered)
    for bad in ({}, {"exp": args["exp"]}, {"sig": args["sig"]}, {**args, "exp": "1e9"}):
        with pytest.raises(PermissionDenied):
            signer.verify("GET", "~a/x.bam", "bytes=0-99", bad)
    now[0] += 601
    with pytest.raises(PermissionDenied, match="expired"):
        signer.verify("GET", "~a/x.bam", "bytes=0-99", args)


def test_rotation_old_secret_verifies_but_does_not_sign() -> None:
    old = UrlSigner(["old-secret"], 600)
    args = dict(p.split("=", 1) for p in old.sign("k", "bytes=0-1").split("&"))
    UrlSigner(["new-secret", "old-secret"], 600).verify("GET", "k", "bytes=0-1", args)
    with pytest.raises(PermissionDenied):
        UrlSigner(["new-secret"], 600).verify("GET", "k", "bytes=0-1", args)
    new = UrlSigner(["new-secret", "old-secret"], 600)
    args = dict(p.split("=", 1) for p in new.sign("k", "bytes=0-1").split("&"))
    with pytest.raises(PermissionDenied):
        old.verify("GET", "k", "bytes=0-1", args)
