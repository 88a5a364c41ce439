"""Trust configurations: validation on load with precise errors, CEL compile and evaluation rules."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tessera.federation.cel import MAX_EXPRESSION_CHARS, CelError, compile_expression
from tessera.federation.config import FederationConfigError, parse_trusted_issuer, parse_trusted_issuers
from tessera.settings import SettingsError, load_settings

OWN = "https://tessera.example"
BASE: dict[str, Any] = {
    "name": "k8s",
    "issuer": "https://kubernetes.example/cluster-1",
    "audiences": ["tessera"],
    "bindings": [{"audiences": ["https://api.example"], "scopes": ["read"]}],
}


def cfg(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def refused(raw: Any, **kw: Any) -> str:
    with pytest.raises(FederationConfigError) as e:
        parse_trusted_issuer(raw, own_issuer=OWN, **kw)
    return str(e.value)


def test_minimal_configuration_has_safe_defaults() -> None:
    t = parse_trusted_issuer(cfg(), own_issuer=OWN)
    assert t.algorithms == frozenset({"RS256", "ES256"})
    assert t.subject.source == "assertion.sub"
    assert t.condition is None and not t.shared and not t.jti_replay
    assert t.principal("system:serviceaccount:prod:api") == "k8s/system:serviceaccount:prod:api"
    assert t.bindings[0].audiences == ("https://api.example",)
    assert t.bindings[0].max_lifetime == 900 and not t.bindings[0].may_delegate


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"name": "Bad Name"}, "trusted_issuers", "lowercase"),
        ({"issuer": None}, "k8s.issuer", "required"),
        ({"issuer": "ftp://x.example"}, "k8s.issuer", "absolute http(s) URL"),
        ({"issuer": "http://kubernetes.example"}, "k8s.issuer", "must use https"),
        ({"issuer": "https://x.example/?q=1"}, "k8s.issuer", "without query"),
        ({"issuer": OWN}, "k8s.issuer", "own issuer"),
        ({"audiences": []}, "k8s.audiences", "non-empty"),
        ({"audiences": None}, "k8s.audiences", "non-empty"),
        ({"algorithms": ["HS256"]}, "k8s.algorithms", "never none or HMAC"),
        ({"algorithms": ["none"]}, "k8s.algorithms", "never none or HMAC"),
        ({"condition": "assertion.sub =="}, "k8s.condition", "does not compile"),
        ({"subject": ""}, "k8s.subject", "non-empty"),
        ({"attributes": {"Bad-Name": "assertion.sub"}}, "k8s.attributes", "lowercase"),
        ({"attributes": {"ns": "assertion["}}, "k8s.attributes.ns", "does not compile"),
        ({"bindings": []}, "k8s.bindings", "1..32"),
        ({"bindings": [{"scopes": ["x"]}]}, "k8s.bindings[0].audiences", "required"),
        ({"bindings": [{"audiences": ["a"], "max_lifetime": 0}]}, "k8s.bindings[0].max_lifetime", "1..86400"),
        ({"bindings": [{"audiences": ["a"], "may_delegate": "yes"}]}, "k8s.bindings[0].may_delegate", "true or false"),
        ({"bindings": [{"audiences": ["a"], "scopes": ["a b"]}]}, "k8s.bindings[0].scopes", "scope token"),
        ({"bindings": [{"audiences": ["a"], "when": "1 +"}]}, "k8s.bindings[0].when", "does not compile"),
        ({"bindings": [{"audiences": ["a"], "extra": 1}]}, "k8s.bindings[0]", "unknown field"),
        ({"max_token_lifetime": -1}, "k8s.max_token_lifetime", "integer"),
        ({"leeway": 301}, "k8s.leeway", "integer"),
        ({"jti_replay": 1}, "k8s.jti_replay", "true or false"),
        ({"surprise": True}, "k8s.*", "unknown field"),
        ({"jwks_uri": "https://k.example/jwks", "jwks": {"keys": [{"kty": "EC"}]}}, "k8s.jwks", "one key source"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "k8s.jwks", "public keys only"),
        ({"jwks": {"keys": []}}, "k8s.jwks", "at least one key"),
        ({"trust_domain": "example.org"}, "k8s.trust_domain", "only applies"),
        ({"spiffe_bundle_uri": "https://b.example/bundle"}, "k8s.trust_domain", "required"),
    ],
)
def test_invalid_configuration_names_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    message = refused(cfg(**changes))
    assert message.startswith(f"trusted_issuers.{field}") or field in message, message
    assert words in message, message


def test_shared_issuers_need_a_condition() -> None:
    for issuer in ("https://token.actions.githubusercontent.com", "https://gitlab.com"):
        assert "condition: is required" in refused(cfg(issuer=issuer))
        t = parse_trusted_issuer(cfg(issuer=issuer, condition="assertion.repository_owner_id == '1'"), own_issuer=OWN)
        assert t.shared
    assert "condition: is required" in refused(cfg(shared=True))


def test_http_issuers_only_on_loopback_or_in_dev_mode() -> None:
    parse_trusted_issuer(cfg(issuer="http://127.0.0.1:8081"), own_issuer=OWN)
    parse_trusted_issuer(cfg(issuer="http://idp.internal"), own_issuer=OWN, allow_http=True)
    assert "https" in refused(cfg(issuer="http://idp.internal"))


def test_names_and_issuers_are_unique_across_configurations() -> None:
    with pytest.raises(FederationConfigError, match="used twice"):
        parse_trusted_issuers([cfg(), cfg(issuer="https://other.example")], own_issuer=OWN)
    with pytest.raises(FederationConfigError, match="already trusted"):
        parse_trusted_issuers([cfg(), cfg(name="k8s-2")], own_issuer=OWN)


def test_spiffe_configuration() -> None:
    bundle = {"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y", "use": "jwt-svid"}]}
    t = parse_trusted_issuer(
        cfg(name="mesh", issuer="spiffe://example.org", spiffe_bundle=bundle, trust_domain="example.org"),
        own_issuer=OWN,
    )
    assert t.spiffe and t.trust_domain == "example.org"


def test_settings_refuse_an_invalid_trust_configuration_at_load() -> None:
    import json

    with pytest.raises(SettingsError, match=r"trusted_issuers\.k8s\.condition"):
        load_settings({"TESSERA_TRUSTED_ISSUERS": json.dumps([cfg(condition="nope(")])})
    s = load_settings({"TESSERA_TRUSTED_ISSUERS": json.dumps([cfg()])})
    assert list(s.federation()) == ["k8s"]


def test_outbound_signing_alg_defaults_to_rs256_when_configured() -> None:
    assert load_settings({"TESSERA_SIGNING_ALGS": "ES256,RS256"}).outbound_signing_alg == "RS256"
    assert load_settings({}).outbound_signing_alg == "ES256"
    with pytest.raises(SettingsError, match="outbound_signing_alg"):
        load_settings({"TESSERA_OUTBOUND_SIGNING_ALG": "RS256"})


# -- CEL ------------------------------------------------------------------------------------------------


CLAIMS = {
    "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
    "repository_owner_id": "1234567",
    "ref": "refs/heads/main",
    "kubernetes.io": {"namespace": "prod"},
    "groups": ["a", "b"],
    "n": 3,
}


def evaluate(source: str) -> Any:
    return compile_expression(source).evaluate({"assertion": CLAIMS})


def test_cel_maps_claims_to_plain_values() -> None:
    assert evaluate("assertion.repository_owner_id == '1234567' && assertion.ref.startsWith('refs/heads/')") is True
    assert evaluate("'gh:' + assertion.ref") == "gh:refs/heads/main"
    assert evaluate("assertion.sub.matches('^repo:octo-org/')") is True
    assert evaluate('assertion["kubernetes.io"].namespace') == "prod"
    assert evaluate("assertion.groups.map(g, g + '!')") == ["a!", "b!"]
    assert evaluate("assertion.n * 2") == 6
    assert evaluate("has(assertion.missing) ? assertion.missing : 'default'") == "default"


@pytest.mark.parametrize(
    "source",
    [
        "assertion.missing == 'x'",  # a missing claim is an error, never false or null
        "assertion.n / 0",
        "int(assertion.sub) > 0",
        "assertion.n + 'x'",
        "assertion.groups[5]",
    ],
)
def test_cel_evaluation_errors_are_errors(source: str) -> None:
    with pytest.raises(CelError):
        evaluate(source)


def test_cel_condition_must_be_boolean() -> None:
    with pytest.raises(CelError, match="not a boolean"):
        compile_expression("assertion.sub").evaluate_bool({"assertion": CLAIMS})
    assert compile_expression("true").evaluate_bool({}) is True


def test_cel_caps() -> None:
    with pytest.raises(CelError, match="at most"):
        compile_expression("a" * (MAX_EXPRESSION_CHARS + 1))
    big = {"sub": "x" * 3000}
    with pytest.raises(CelError, match="larger than"):
        compile_expression("assertion.sub").evaluate({"assertion": big})


@pytest.mark.parametrize(
    ("sources", "expected"),
    [
        (["assertion.sub"], {"sub"}),
        (["assertion['kubernetes.io'].namespace == 'prod'", "assertion.sub.startsWith('x')"], {"kubernetes.io", "sub"}),
        (["has(assertion.x) ? assertion.x : 'd'"], {"x"}),
        (["assertion . ref"], {"ref"}),
        (["assertion.exists(k, k == 'a')"], None),  # a macro over the map reads every key
        (["assertion.exists_one(k, true)"], None),
        (["size(assertion)"], None),
        (["'assertion' + assertion.sub"], None),  # the word inside a literal: not sure, so everything
        (["assertion[attributes.key]"], None),
    ],
)
def test_claims_given_to_cel_are_those_the_expressions_can_read(sources, expected) -> None:
    from tessera.federation.cel import claims_used

    assert claims_used(sources) == (frozenset(expected) if expected is not None else None)


def test_only_read_claims_are_converted_and_results_are_unchanged() -> None:
    t = parse_trusted_issuer(
        cfg(
            condition="assertion['kubernetes.io'].namespace == 'prod' && !has(assertion.nope)",
            attributes={"first": "assertion.groups[0]"},
        ),
        own_issuer=OWN,
    )
    assert t.claims_used == frozenset({"kubernetes.io", "nope", "groups", "sub"})
    from tessera.federation.validator import IssuerRegistry

    identity = IssuerRegistry._map(t, dict(CLAIMS))
    assert identity.subject == CLAIMS["sub"] and identity.attributes == {"first": "a"}
    assert identity.claims == CLAIMS  # the identity keeps every verified claim
