"""decide_login as a table: what is known of a RegistryLogin -> whether the registry is asked, and its status."""
import base64
import dataclasses
import datetime
import json

import pytest

from kiln.build.logins import LoginFacts, Refused, decide_login
from kiln.spec import reasons
from kiln.spec.parse import InvalidSpec, parse_registry_login
from kiln.spec.settings import Settings

NOW = datetime.datetime(2026, 12, 5, 10, 0, 0, tzinfo=datetime.UTC)
PASSWORD = "s3cret-Password"


def login(**spec) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "RegistryLogin",
            "metadata": {"name": "reg", "namespace": "team", "generation": 1},
            "spec": {"server": "r.example", "secretRef": {"name": "reg-creds"}, **spec}}


SECRET = {"metadata": {"name": "reg-creds", "resourceVersion": "7", "annotations": {"kiln.dev/registry-logins": "reg"}},
          "type": "kubernetes.io/basic-auth",
          "data": {"username": base64.b64encode(b"alice").decode(), "password": base64.b64encode(PASSWORD.encode()).decode()}}


def facts(obj: dict, secret: dict | None = SECRET, answer=None) -> LoginFacts:
    try:
        spec, problem = parse_registry_login(obj), None
    except InvalidSpec as exc:
        spec, problem = None, str(exc)
    return LoginFacts(obj, spec, problem, secret, None, Settings(), NOW, answer)


def ready(decision) -> tuple[str, str]:
    condition = decision.status["conditions"][0]
    return condition["status"], condition["reason"]


VERIFIED_RECENTLY = {"observedGeneration": 1, "secretVersion": "7", "lastVerifiedTime": "2026-12-05T09:59:00Z",
                     "conditions": [{"type": "Ready", "status": "True", "reason": reasons.VERIFIED}]}
REFUSED_61S_AGO = {"observedGeneration": 1, "secretVersion": "7", "lastVerifiedTime": "2026-12-05T09:58:59Z",
                   "conditions": [{"type": "Ready", "status": "False", "reason": reasons.AUTHENTICATION_FAILED}]}


@pytest.mark.parametrize(("obj", "secret", "answer", "asks", "expected"), [
    (login(server="not a host"), SECRET, None, False, ("False", reasons.INVALID_SPEC)),
    (login(), None, None, False, ("False", reasons.SECRET_NOT_FOUND)),
    (login(), {**SECRET, "metadata": {"name": "reg-creds", "resourceVersion": "7"}}, None, False,
     ("False", reasons.SECRET_NOT_OPTED_IN)),  # never sent anywhere
    (login(), SECRET, None, True, None),  # the registry is asked first
    (login(), SECRET, "Basic", False, ("True", reasons.VERIFIED)),
    (login(), SECRET, Refused(reasons.AUTHENTICATION_FAILED, "r.example refused alice"), False,
     ("False", reasons.AUTHENTICATION_FAILED)),
    (login(verify=False), SECRET, None, False, ("True", reasons.NOT_VERIFIED)),
    ({**login(), "status": VERIFIED_RECENTLY}, SECRET, None, False, None),  # not due: nothing to do
    ({**login(), "status": VERIFIED_RECENTLY}, {**SECRET, "metadata": {**SECRET["metadata"], "resourceVersion": "8"}},
     None, True, None),  # the Secret changed: asked again
    ({**login(), "status": REFUSED_61S_AGO}, SECRET, None, True, None),  # not Ready: asked again after a minute
], ids=["invalid-spec", "no-secret", "not-opted-in", "asks", "verified", "refused", "not-verified", "not-due", "secret-changed",
        "retry-after-a-minute"])
def test_a_login_is_checked_when_due_and_its_status_says_what_the_registry_said(obj, secret, answer, asks, expected):
    decision = decide_login(facts(obj, secret, answer))
    assert (decision.ask is not None) == asks
    assert (ready(decision) if decision.status else None) == expected
    if answer is not None:
        assert decision.verified and decision.status["lastVerifiedTime"] == "2026-12-05T10:00:00Z"
    if decision.ask:
        assert decision.ask.credentials.username == "alice" and PASSWORD not in repr(decision.ask)
    assert PASSWORD not in json.dumps(decision.status)


def test_the_registrys_answer_is_decided_with_the_facts_it_was_asked_for():
    asked = decide_login(facts(login()))
    answered = decide_login(dataclasses.replace(facts(login()), answer="Bearer"))
    assert asked.status is None and answered.status["authScheme"] == "Bearer"
    assert answered.status["username"] == "alice" and answered.status["secretVersion"] == "7"


def test_a_secret_that_has_not_opted_in_shows_nothing_of_itself_in_the_status():
    unlabelled = {**SECRET, "metadata": {"name": "reg-creds", "resourceVersion": "7"}}
    decision = decide_login(facts(login(), unlabelled))
    assert decision.ask is None and "alice" not in json.dumps(decision.status)
    assert "kiln.dev/registry-logins=reg" in decision.status["conditions"][0]["message"]
