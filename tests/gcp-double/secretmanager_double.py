#!/usr/bin/env python3
"""A test double of Google Cloud Secret Manager's access call and of the
Google token sources a workload uses, for vaultbridge's end-to-end tests.

Google ships no Secret Manager emulator (the gcloud emulators are Bigtable,
Datastore, Firestore, Pub/Sub and Spanner), so this serves the documented
REST behaviours Google's clients rely on, each taken from Google's
documentation (cited as [doc] where it is applied). It is itself checked
with Google's official Python clients (tests/gcp-double/check_double.py,
run by the gcp suite), so it cannot drift from what they expect.

[access]    https://cloud.google.com/secret-manager/docs/reference/rest/v1/projects.secrets.versions/access
            GET /v1/{name=projects/*/secrets/*/versions/*}:access and the
            regional /v1/{name=projects/*/locations/*/secrets/*/versions/*}:access;
            200 AccessSecretVersionResponse {"name", "payload": {"data": base64,
            "dataCrc32c": int64 as a string}}. The name carries the project number.
[versions]  https://cloud.google.com/secret-manager/docs/reference/rest/v1/projects.secrets.versions
            versions are numbered from 1; "latest" is the most recently created
            version; states ENABLED, DISABLED, DESTROYED. Accessing a disabled or
            destroyed version: 400 FAILED_PRECONDITION "Secret Version [...] is in
            DISABLED state." / "... is in DESTROYED state.".
[aliases]   https://cloud.google.com/secret-manager/docs/assign-alias-to-secret-version
            a version may be addressed by an alias instead of its number.
[regional]  https://cloud.google.com/secret-manager/docs/regional-secrets-overview
            regional secrets (projects/P/locations/L/secrets/S) are served by
            https://secretmanager.L.rep.googleapis.com only.
[errors]    https://cloud.google.com/apis/design/errors (HTTP mapping) and
            https://cloud.google.com/secret-manager/docs/troubleshooting:
            {"error": {"code": N, "message": "...", "status": "WORD"}}; 400
            INVALID_ARGUMENT / FAILED_PRECONDITION, 401 UNAUTHENTICATED, 403
            PERMISSION_DENIED ("Permission 'secretmanager.versions.access' denied
            for resource '...' (or it may not exist)."), 404 NOT_FOUND ("Secret
            [...] not found or has no versions." / "Secret Version [...] not
            found."), 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE.
[iam]       https://cloud.google.com/secret-manager/docs/access-control
            secretmanager.versions.access comes with roles/secretmanager.secretAccessor.
[authn]     https://cloud.google.com/docs/authentication/rest
            "Authorization: Bearer <token>"; none or an invalid/expired one: 401
            UNAUTHENTICATED ("Request had invalid authentication credentials.
            Expected OAuth 2 access token, ...") with WWW-Authenticate: Bearer.
[jwt-grant] https://developers.google.com/identity/protocols/oauth2/service-account#httprest
            POST {token_uri} form grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer,
            assertion=<RS256 JWT {iss: client_email, scope, aud: token_uri, iat,
            exp (at most 1 hour later)}>, header kid = private_key_id;
            200 {"access_token", "expires_in", "token_type": "Bearer"}; errors 400
            {"error": "invalid_grant", "error_description": "Invalid JWT Signature." |
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a
            reasonable timeframe. ..." | "Invalid grant: account not found"}.
[jwt-self]  https://developers.google.com/identity/protocols/oauth2/service-account#jwt-auth
            and https://google.aip.dev/auth/4111: a service account may instead
            send its own RS256 JWT as the bearer token, with aud
            "https://<service>/" or a "scope" claim (Google's Rust client does).
[sts]       https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token
            POST https://sts.googleapis.com/v1/token, form (or JSON)
            grant_type=urn:ietf:params:oauth:grant-type:token-exchange, audience
            (//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/Q),
            scope, requested_token_type=urn:ietf:params:oauth:token-type:access_token,
            subject_token, subject_token_type; 200 {"access_token",
            "issued_token_type", "token_type": "Bearer", "expires_in"}; errors 400
            {"error": "invalid_grant" | "invalid_target" | "invalid_request", "error_description"}.
[principal] https://cloud.google.com/iam/docs/principal-identifiers
            a federated workload is principal://iam.googleapis.com/projects/N/
            locations/global/workloadIdentityPools/P/subject/S.
[mds]       https://cloud.google.com/compute/docs/metadata/querying-metadata and
            https://cloud.google.com/compute/docs/access/authenticate-workloads#applications
            GET http://metadata.google.internal/computeMetadata/v1/instance/
            service-accounts/default/token (optional ?scopes=), only with
            "Metadata-Flavor: Google" (else 403); answers carry the same header;
            200 {"access_token", "expires_in", "token_type": "Bearer"};
            .../service-accounts/default/?recursive=true {"email", "scopes", "aliases"},
            .../default/email, /computeMetadata/v1/universe/universe-domain.

Simplifications, all on the side of the identity provider (the system under
test never sees them): a subject token is compared with the one registered
for the pool instead of validating its issuer's signature; a service
account key is registered by its public modulus.

Everything else is deliberately absent. The state is set through a separate
plain-HTTP control listener (127.0.0.1 only, not a Google API):
PUT /projects/{id} {"number"}; PUT /service-accounts/{email} {"n_hex", "e",
"key_id"}; PUT /pools {"audience", "subject_token", "subject"}; PUT /metadata
{"email", "status"}; PUT /secrets {"project", "location", "secret", "value_b64",
"alias", "accessors", "throttle", "retry_after", "unavailable"} -> {"version"};
PUT /state {"project", "location", "secret", "version", "state"}; GET /stats.

One plain-HTTP listener plays Secret Manager (global and regional),
oauth2.googleapis.com/token, sts.googleapis.com/v1/token and the metadata
server, told apart by path (clients are pointed at it by endpoint
overrides). Usage: secretmanager_double.py --ready-file PATH; it writes
{"port", "control_port", "pid"} once both listen, and exits when its stdin
closes (so it never outlives the test process that started it).
"""

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
SUBJECT_TOKEN_TYPES = {"urn:ietf:params:oauth:token-type:jwt",
                       "urn:ietf:params:oauth:token-type:id_token",
                       "urn:ietf:params:oauth:token-type:saml2"}
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# [errors] the HTTP status of each status word.
HTTP_OF = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "UNAUTHENTICATED": 401,
           "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429,
           "INTERNAL": 500, "UNAVAILABLE": 503}
# RFC 8017 9.2: the DER DigestInfo prefix of a SHA-256 hash.
SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")
ACCESS_RE = re.compile(
    r"^/v1/projects/([^/]+)/(?:locations/([^/]+)/)?secrets/([^/]+)/versions/([^/:]+):access$")
SECRET_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")

LOCK = threading.Lock()
STATE = {
    "projects": {},          # id -> number (str)
    "service_accounts": {},  # email -> {"n", "e", "key_id"}
    "pools": {},             # audience -> {subject_token: subject}
    "metadata": {"email": None, "status": 200},
    "tokens": {},            # token -> {"identity", "expires"}
    "secrets": {},           # (number, location, id) -> secret
    "stats": {"tokens": {"jwt_grant": 0, "self_signed": 0, "sts": 0, "metadata": 0},
              "token_errors": 0, "access": {}, "unauthenticated": 0},
}


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def verify_rs256(jwt, expected_email=None):
    """The claims of an RS256 JWT signed by a registered service account key
    ([jwt-grant], [jwt-self]), or an error description."""
    try:
        head_b64, claims_b64, sig_b64 = jwt.split(".")
        header = json.loads(b64url_decode(head_b64))
        claims = json.loads(b64url_decode(claims_b64))
        signature = b64url_decode(sig_b64)
    except (ValueError, TypeError):
        return None, "Invalid JWT: could not be decoded."
    if header.get("alg") != "RS256":
        return None, "Invalid JWT: the algorithm must be RS256."
    email = claims.get("iss")
    with LOCK:
        account = STATE["service_accounts"].get(email)
    if account is None or (expected_email and email != expected_email):
        return None, "Invalid grant: account not found"
    if header.get("kid") not in (None, account["key_id"]):
        return None, "Invalid JWT Signature."
    n, e = account["n"], account["e"]
    size = (n.bit_length() + 7) // 8
    if len(signature) != size:
        return None, "Invalid JWT Signature."
    em = pow(int.from_bytes(signature, "big"), e, n).to_bytes(size, "big")
    digest = hashlib.sha256(f"{head_b64}.{claims_b64}".encode()).digest()
    expected = b"\x00\x01" + b"\xff" * (size - 3 - len(SHA256_PREFIX) - 32) + b"\x00" + SHA256_PREFIX + digest
    if not secrets.compare_digest(em, expected):
        return None, "Invalid JWT Signature."
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    # Google's clients back-date iat by 10 s and add it to exp: tolerated.
    if (not isinstance(iat, int) or not isinstance(exp, int) or exp <= now
            or iat > now + 60 or exp - iat > 3600 + 60):
        return None, ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                      "reasonable timeframe. Check your iat and exp values in the JWT claim.")
    return claims, None


def issue(identity, kind, lifetime=3599):
    token = "ya29.double-" + secrets.token_urlsafe(32)
    with LOCK:
        STATE["tokens"][token] = {"identity": identity, "expires": time.time() + lifetime}
        STATE["stats"]["tokens"][kind] += 1
    return token


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ESF"

    def log_message(self, fmt, *args):  # quiet: tests read /stats instead
        pass

    def send_body(self, status, body, content_type="application/json; charset=UTF-8", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def google_error(self, word, message, headers=()):
        # [errors]
        self.send_body(HTTP_OF[word], {"error": {"code": HTTP_OF[word], "message": message,
                                                 "status": word}}, headers=headers)

    def oauth_error(self, status, error, description):
        # [jwt-grant], [sts]
        with LOCK:
            STATE["stats"]["token_errors"] += 1
        self.send_body(status, {"error": error, "error_description": description})

    def form(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            return json.loads(raw or "{}")
        return {k: v[0] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}

    # ---- token endpoints -------------------------------------------------
    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        form = self.form()
        if path == "/token":
            return self.jwt_grant(form)
        if path == "/v1/token":
            return self.sts(form)
        self.google_error("NOT_FOUND", f"The requested URL {path} was not found on this server.")

    def jwt_grant(self, form):
        # [jwt-grant]
        if form.get("grant_type") != JWT_BEARER:
            return self.oauth_error(400, "unsupported_grant_type", "Invalid grant_type: "
                                    + form.get("grant_type", ""))
        claims, error = verify_rs256(form.get("assertion", ""))
        if error:
            return self.oauth_error(400, "invalid_grant", error)
        if "scope" not in claims and "target_audience" not in claims:
            return self.oauth_error(400, "invalid_scope",
                                    "Invalid OAuth scope or ID token audience provided.")
        token = issue(claims["iss"], "jwt_grant")
        self.send_body(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def sts(self, form):
        # [sts]
        if form.get("grant_type") != TOKEN_EXCHANGE:
            return self.oauth_error(400, "unsupported_grant_type",
                                    "Invalid value for \"grant_type\".")
        if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
            return self.oauth_error(400, "invalid_request",
                                    "Invalid value for \"requested_token_type\".")
        if form.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
            return self.oauth_error(400, "invalid_request",
                                    "Invalid value for \"subject_token_type\".")
        audience = form.get("audience", "")
        with LOCK:
            pool = STATE["pools"].get(audience)
        if pool is None:
            return self.oauth_error(400, "invalid_target",
                                    "The target service indicated by the \"audience\" parameters is "
                                    "invalid. This might either be because the pool or provider is "
                                    "disabled or deleted or because it doesn't exist.")
        subject = next((s for t, s in pool.items()
                        if secrets.compare_digest(t, form.get("subject_token", ""))), None)
        if subject is None:
            return self.oauth_error(400, "invalid_grant",
                                    "The audience in ID Token [https://sts.googleapis.com/] does not "
                                    "match the expected audience.")
        # [principal]
        prefix = audience[len("//iam.googleapis.com/"):].rsplit("/providers/", 1)[0]
        principal = f"principal://iam.googleapis.com/{prefix}/subject/{subject}"
        token = issue(principal, "sts", 3600)
        self.send_body(200, {"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE,
                             "token_type": "Bearer", "expires_in": 3600})

    # ---- metadata server and Secret Manager ------------------------------
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/computeMetadata/"):
            return self.metadata(url)
        match = ACCESS_RE.match(url.path)
        if not match:
            return self.google_error("NOT_FOUND", f"The requested URL {url.path} was not found on this server.")
        return self.access(*[urllib.parse.unquote(g) if g else None for g in match.groups()])

    def metadata(self, url):
        # [mds]
        flavor = [("Metadata-Flavor", "Google")]
        if self.headers.get("Metadata-Flavor") != "Google":
            return self.send_body(403, b"Missing required header \"Metadata-Flavor\": \"Google\"\n",
                                  "text/html; charset=UTF-8", flavor)
        with LOCK:
            email, status = STATE["metadata"]["email"], STATE["metadata"]["status"]
        base = "/computeMetadata/v1/instance/service-accounts/default/"
        if url.path == "/computeMetadata/v1/universe/universe-domain":
            return self.send_body(200, b"googleapis.com", "application/text", flavor)
        if email is None or not url.path.startswith(base):
            return self.send_body(404, b"Not Found\n", "text/html; charset=UTF-8", flavor)
        if status != 200:
            return self.send_body(status, b"Service Unavailable\n", "text/html; charset=UTF-8", flavor)
        rest = url.path[len(base):]
        if rest == "token":
            token = issue(email, "metadata")
            return self.send_body(200, {"access_token": token, "expires_in": 3599,
                                        "token_type": "Bearer"}, "application/json", flavor)
        if rest == "email":
            return self.send_body(200, email.encode(), "application/text", flavor)
        if rest == "":
            return self.send_body(200, {"aliases": ["default"], "email": email,
                                        "scopes": [CLOUD_PLATFORM]}, "application/json", flavor)
        return self.send_body(404, b"Not Found\n", "text/html; charset=UTF-8", flavor)

    def identity(self):
        """The caller's identity, from an issued token or a self-signed JWT."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        bearer = auth[len("Bearer "):]
        with LOCK:
            token = STATE["tokens"].get(bearer)
        if token is not None:
            return token["identity"] if token["expires"] > time.time() else None
        if bearer.count(".") == 2:
            # [jwt-self]: the audience is the service, or a scope is given.
            claims, error = verify_rs256(bearer)
            if error or claims.get("sub", claims["iss"]) != claims["iss"]:
                return None
            audience = claims.get("aud") or ""
            host = self.headers.get("Host", "")
            if CLOUD_PLATFORM in (claims.get("scope") or "").split() or \
                    "secretmanager.googleapis.com" in audience or (host and host in audience):
                with LOCK:
                    STATE["stats"]["tokens"]["self_signed"] += 1
                return claims["iss"]
        return None

    def access(self, project, location, secret_id, version_ref):
        # [authn] first: an unauthenticated caller learns nothing.
        who = self.identity()
        if who is None:
            with LOCK:
                STATE["stats"]["unauthenticated"] += 1
            return self.google_error(
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                "cookie or other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                headers=[("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')])
        shown = (f"projects/{project}/locations/{location}/secrets/{secret_id}" if location
                 else f"projects/{project}/secrets/{secret_id}")
        if not SECRET_ID_RE.match(secret_id):
            return self.google_error("INVALID_ARGUMENT", "Invalid resource field value in the request.")
        with LOCK:
            number = STATE["projects"].get(project, project)
            secret = STATE["secrets"].get((number, location, secret_id))
            key = f"{number}/{location or '-'}/{secret_id}"
            STATE["stats"]["access"][key] = STATE["stats"]["access"].get(key, 0) + 1
            throttled = unavailable = False
            if secret is not None and secret["throttle"] > 0:
                secret["throttle"] -= 1
                throttled = True
            if secret is not None and secret["unavailable"] > 0:
                secret["unavailable"] -= 1
                unavailable = True
        resource = f"{shown}/versions/{version_ref}"
        full = (f"projects/{number}/locations/{location}/secrets/{secret_id}" if location
                else f"projects/{number}/secrets/{secret_id}")
        # [errors] a missing secret, to a caller with the role on the project.
        if secret is None:
            return self.google_error("NOT_FOUND", f"Secret [{full}] not found or has no versions.")
        # [iam] a secret whose IAM policy does not name the caller.
        if secret["accessors"] is not None and who not in secret["accessors"]:
            return self.google_error(
                "PERMISSION_DENIED",
                f"Permission 'secretmanager.versions.access' denied for resource '{resource}' "
                "(or it may not exist).")
        if throttled:
            return self.google_error("RESOURCE_EXHAUSTED",
                                     "Quota exceeded for quota metric 'Access requests' and limit "
                                     "'Access requests per minute per project' of service "
                                     "'secretmanager.googleapis.com'.",
                                     headers=[("Retry-After", str(secret["retry_after"]))])
        if unavailable:
            return self.google_error("UNAVAILABLE", "The service is currently unavailable.")
        versions = secret["versions"]
        if version_ref == "latest":
            # [versions] the most recently created version, whatever its state.
            version = versions[-1] if versions else None
        elif version_ref.isdigit():
            version = next((v for v in versions if v["number"] == int(version_ref)), None)
        else:
            # [aliases]
            number_of = secret["aliases"].get(version_ref)
            version = next((v for v in versions if v["number"] == number_of), None)
        if version is None:
            if not versions:
                return self.google_error("NOT_FOUND", f"Secret [{full}] not found or has no versions.")
            return self.google_error("NOT_FOUND", f"Secret Version [{full}/versions/{version_ref}] not found.")
        if version["state"] != "ENABLED":
            return self.google_error(
                "FAILED_PRECONDITION",
                f"Secret Version [{full}/versions/{version['number']}] is in {version['state']} state.")
        data = version["value"]
        self.send_body(200, {"name": f"{full}/versions/{version['number']}",
                             "payload": {"data": base64.b64encode(data).decode(),
                                         "dataCrc32c": str(crc32c(data))}})


class ControlHandler(BaseHTTPRequestHandler):
    """Not a Google API: how the test harness seeds identities and secrets."""

    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                return self.reply(200, STATE["stats"])
        if self.path == "/ready":
            return self.reply(200, {"ok": True})
        self.reply(404, {"error": "no such control path"})

    def do_PUT(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        parts = [urllib.parse.unquote(p) for p in self.path.split("/") if p]
        with LOCK:
            if len(parts) == 2 and parts[0] == "projects":
                STATE["projects"][parts[1]] = str(body["number"])
                return self.reply(200, {"ok": True})
            if len(parts) == 2 and parts[0] == "service-accounts":
                STATE["service_accounts"][parts[1]] = {
                    "n": int(body["n_hex"], 16), "e": int(body.get("e", 65537)), "key_id": body["key_id"]}
                return self.reply(200, {"ok": True})
            if parts == ["pools"]:
                STATE["pools"].setdefault(body["audience"], {})[body["subject_token"]] = body["subject"]
                return self.reply(200, {"ok": True})
            if parts == ["metadata"]:
                STATE["metadata"].update({k: body[k] for k in ("email", "status") if k in body})
                return self.reply(200, {"ok": True})
            if parts in (["secrets"], ["state"]):
                number = STATE["projects"].get(body["project"], body["project"])
                key = (number, body.get("location"), body["secret"])
                secret = STATE["secrets"].setdefault(key, {
                    "versions": [], "aliases": {}, "accessors": None, "throttle": 0,
                    "retry_after": 1, "unavailable": 0})
                if parts == ["state"]:
                    version = next(v for v in secret["versions"] if v["number"] == body["version"])
                    version["state"] = body["state"]
                    return self.reply(200, {"version": version["number"]})
                version = None
                if "value_b64" in body:
                    version = {"number": len(secret["versions"]) + 1,
                               "value": base64.b64decode(body["value_b64"]), "state": "ENABLED"}
                    secret["versions"].append(version)
                    if body.get("alias"):
                        secret["aliases"][body["alias"]] = version["number"]
                for field in ("accessors", "throttle", "retry_after", "unavailable"):
                    if field in body:
                        secret[field] = body[field]
                return self.reply(200, {"version": version["number"] if version else None})
        self.reply(404, {"error": "no such control path"})


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients that hang up are expected in tests.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()

    api = QuietServer(("127.0.0.1", 0), Handler)
    control = QuietServer(("127.0.0.1", 0), ControlHandler)
    for server in (api, control):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"port": api.server_address[1], "control_port": control.server_address[1],
                   "pid": os.getpid()}, f)
    os.rename(tmp, args.ready_file)
    # Exit when the parent closes our stdin (normally, or because it died).
    sys.stdin.buffer.read()
    os._exit(0)


if __name__ == "__main__":
    main()
