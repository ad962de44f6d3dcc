#!/usr/bin/env python3
"""Checks the Secret Manager test double with Google's official Python
clients: `google-cloud-secret-manager` (REST transport) and `google-auth`
(service account JWT grant, workload identity federation's STS exchange, the
metadata server). If the double drifts from what Google's clients expect,
this fails.

Run by the gcp suite (tests/tests/gcp.rs), which seeds the double and passes
what it seeded as one JSON argument. Prints `ok <check>` per check; exits 1
with the failed check's name and reason at the first failure.
"""

import json
import os
import sys

import google.auth.credentials
import google.auth.transport.requests
from google.api_core import exceptions
from google.auth import compute_engine, identity_pool
from google.auth.exceptions import OAuthError, RefreshError
from google.cloud import secretmanager
from google.oauth2 import credentials as oauth2_credentials
from google.oauth2 import service_account

SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class BadToken(google.auth.credentials.Credentials):
    """A token Google never issued, which "refreshes" to itself (the
    transport refreshes once on a 401 before it reports it)."""

    def __init__(self):
        super().__init__()
        self.token = "ya29.not-a-token"

    def refresh(self, request):
        self.token = "ya29.not-a-token"


def main():
    spec = json.loads(sys.argv[1])
    endpoint = spec["endpoint"]
    project, number = spec["project"], spec["number"]
    request = google.auth.transport.requests.Request()

    def client(creds):
        return secretmanager.SecretManagerServiceClient(
            credentials=creds, transport="rest", client_options={"api_endpoint": endpoint})

    def name(secret, version="latest", location=None):
        where = f"locations/{location}/" if location else ""
        return f"projects/{project}/{where}secrets/{secret}/versions/{version}"

    def access(c, full_name):
        # retry=None: one attempt, so that an error is seen as answered.
        return c.access_secret_version(name=full_name, retry=None, timeout=10)

    def expect_error(kind, call, needle, status=None):
        try:
            call()
        except kind as err:
            text = str(err)
            assert needle in text, f"expected {needle!r} in {text!r}"
            if status is not None:
                # Google's error body: {"error": {"code", "message", "status"}}.
                body = err.response.json()["error"]
                assert body["status"] == status, body
                assert body["code"] == err.code, body
            return err
        raise AssertionError(f"expected {kind}")

    checks = []

    def check(label):
        def wrap(fn):
            checks.append((label, fn))
            return fn
        return wrap

    state = {}

    @check("jwt_grant")
    def _():
        # google-auth's service account credentials, as a token: the
        # JWT-bearer grant at the key file's token_uri.
        creds = service_account.Credentials.from_service_account_file(spec["key_file"], scopes=[SCOPE])
        creds.refresh(request)
        assert creds.token and creds.expiry, "no token or expiry"
        state["token"] = creds.token

    @check("jwt_grant_refused")
    def _():
        creds = service_account.Credentials.from_service_account_file(spec["wrong_key_file"], scopes=[SCOPE])
        expect_error(RefreshError, lambda: creds.refresh(request), "invalid_grant")

    @check("access_with_oauth_token")
    def _():
        c = client(oauth2_credentials.Credentials(state["token"]))
        response = access(c, name(spec["text"]))
        assert response.payload.data == spec["text_value"].encode(), "wrong value"
        assert response.name == f"projects/{number}/secrets/{spec['text']}/versions/1", response.name
        try:
            import google_crc32c
        except ImportError:
            google_crc32c = None
        if google_crc32c is not None:
            assert response.payload.data_crc32c == google_crc32c.value(response.payload.data), "crc32c"

    @check("access_with_self_signed_jwt")
    def _():
        # The generated client gives service accounts self-signed JWTs.
        creds = service_account.Credentials.from_service_account_file(spec["key_file"])
        response = access(client(creds), name(spec["text"]))
        assert response.payload.data == spec["text_value"].encode(), "wrong value"

    @check("versions_and_alias")
    def _():
        c = client(oauth2_credentials.Credentials(state["token"]))
        assert access(c, name(spec["versioned"], "1")).payload.data == spec["older"].encode()
        assert access(c, name(spec["versioned"])).payload.data == spec["latest"].encode()
        assert access(c, name(spec["versioned"], spec["alias"])).payload.data == spec["older"].encode()
        assert access(c, name(spec["binary"])).payload.data == bytes.fromhex(spec["binary_hex"])

    @check("regional")
    def _():
        c = client(oauth2_credentials.Credentials(state["token"]))
        response = access(c, name(spec["regional"], location=spec["location"]))
        assert response.payload.data == spec["regional_value"].encode()
        assert f"/locations/{spec['location']}/" in response.name, response.name

    @check("errors")
    def _():
        c = client(oauth2_credentials.Credentials(state["token"]))
        # Over REST, api_core raises the HTTP status's exception class (the
        # gRPC-named classes are their subclasses); the status word is in the body.
        expect_error(exceptions.NotFound, lambda: access(c, name(spec["missing"])), "not found",
                     "NOT_FOUND")
        expect_error(exceptions.NotFound, lambda: access(c, name(spec["versioned"], "9")), "not found",
                     "NOT_FOUND")
        expect_error(exceptions.Forbidden, lambda: access(c, name(spec["denied"])),
                     "secretmanager.versions.access", "PERMISSION_DENIED")
        expect_error(exceptions.BadRequest, lambda: access(c, name(spec["disabled"])),
                     "DISABLED state", "FAILED_PRECONDITION")
        expect_error(exceptions.BadRequest, lambda: access(c, name(spec["destroyed"], "1")),
                     "DESTROYED state", "FAILED_PRECONDITION")
        expect_error(exceptions.TooManyRequests, lambda: access(c, name(spec["throttled"])), "Quota",
                     "RESOURCE_EXHAUSTED")
        expect_error(exceptions.ServiceUnavailable, lambda: access(c, name(spec["unavailable"])),
                     "unavailable", "UNAVAILABLE")
        bad = client(BadToken())
        expect_error(exceptions.Unauthorized, lambda: access(bad, name(spec["text"])),
                     "invalid authentication credentials", "UNAUTHENTICATED")

    @check("sts_exchange")
    def _():
        info = json.load(open(spec["external_account_file"]))
        creds = identity_pool.Credentials.from_info(info, scopes=[SCOPE])
        creds.refresh(request)
        response = access(client(creds), name(spec["federated"]))
        assert response.payload.data == spec["federated_value"].encode()

    @check("sts_exchange_refused")
    def _():
        info = json.load(open(spec["external_account_file"]))
        info["credential_source"] = {"file": spec["wrong_subject_token_file"]}
        creds = identity_pool.Credentials.from_info(info, scopes=[SCOPE])
        # google-auth reports STS's OAuth error as OAuthError.
        expect_error((RefreshError, OAuthError), lambda: creds.refresh(request), "invalid_grant")

    @check("metadata_server")
    def _():
        # GCE_METADATA_HOST, which google-auth reads at import, is set by the caller.
        assert os.environ.get("GCE_METADATA_HOST") == spec["metadata_host"], "GCE_METADATA_HOST"
        creds = compute_engine.Credentials()
        creds.refresh(request)
        assert creds.service_account_email == spec["metadata_email"], creds.service_account_email
        response = access(client(creds), name(spec["metadata_secret"]))
        assert response.payload.data == spec["metadata_value"].encode()

    for label, fn in checks:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - report any failure with its check
            print(f"FAIL {label}: {type(err).__name__}: {err}", flush=True)
            sys.exit(1)
        print(f"ok {label}", flush=True)


if __name__ == "__main__":
    main()
