"""Creates the ZenML service accounts of the test environment and an API key for each.

Run by up.sh with the environment's Python once the ZenML server answers. Everything comes from
environment variables so no secret appears on a command line, and no secret is printed:
AO_ZENML_URL (http://host:port), AO_ZENML_ADMIN_PASSWORD (of the server's default user "admin"),
AO_ZENML_API_KEY_FILE and AO_ZENML_OTHER_API_KEY_FILE (where the keys go, mode 0600).
"artifact-operator" is the operator's own account; "other-team" stands for somebody else on the same
server (the tests make "a component a user made by hand" and a wrong owner with it).
Idempotent: an existing account is reused and its key "default" replaced.
"""

import json
import os
import urllib.error
import urllib.parse
import urllib.request

ADMIN = "admin"
KEY_NAME = "default"
ACCOUNTS = [("artifact-operator", "AO_ZENML_API_KEY_FILE"), ("other-team", "AO_ZENML_OTHER_API_KEY_FILE")]

# No proxy from the environment: the server is on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SECRETS = []  # hidden in the error messages (a validation error echoes the request)


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def scrub(text: str) -> str:
    for secret in SECRETS:
        text = text.replace(secret, "<redacted>")
    return text


def call(method: str, path: str, token: str = "", json_body=None, form=None):
    url = os.environ["AO_ZENML_URL"].rstrip("/") + path
    headers, data = {"Accept": "application/json"}, None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if json_body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(json_body).encode()
    if form is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with OPENER.open(request, timeout=30) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        detail = scrub(e.read().decode(errors="replace"))[:500]
        raise Refused(e.code, f"{method} {path}: HTTP {e.code}: {detail}") from None
    return json.loads(body) if body else None


def service_account(token: str, name: str) -> str:
    try:
        account = call("POST", "/api/v1/service_accounts", token, {"name": name, "active": True})
    except Refused as e:
        if e.status != 409:
            raise
        account = call("GET", f"/api/v1/service_accounts/{urllib.parse.quote(name)}", token)
    return account["id"]


def api_key(token: str, account_id: str) -> str:
    keys = f"/api/v1/service_accounts/{account_id}/api_keys"
    try:
        created = call("POST", keys, token, {"name": KEY_NAME})
    except Refused as e:
        if e.status != 409:
            raise
        # The key's value is shown only when it is made: replace it.
        call("DELETE", f"{keys}/{KEY_NAME}", token)
        created = call("POST", keys, token, {"name": KEY_NAME})
    key = created["body"]["key"]
    SECRETS.append(key)
    if not key.startswith("ZENKEY_"):
        raise SystemExit(f"the API key of service account {account_id} has an unexpected form")
    return key


def write_secret(path: str, value: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(value)
    os.replace(tmp, path)


def main() -> None:
    password = os.environ["AO_ZENML_ADMIN_PASSWORD"]
    SECRETS.append(password)
    token = call("POST", "/api/v1/login", form={"username": ADMIN, "password": password})["access_token"]
    SECRETS.append(token)
    for name, file_variable in ACCOUNTS:
        account_id = service_account(token, name)
        path = os.environ[file_variable]
        write_secret(path, api_key(token, account_id))
        print(f"{os.environ['AO_ZENML_URL']}: service account {name} ({account_id}) has API key {KEY_NAME}, in {path}")


if __name__ == "__main__":
    main()
