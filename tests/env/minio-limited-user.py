"""Creates the limited S3 user of the test environment through MinIO's admin API.

Run by up.sh with the environment's Python. Everything comes from environment variables so no
secret appears on a command line: AO_S3_ADMIN_ENDPOINT (http(s)://host:port), AO_S3_CA_FILE (for
https), AO_S3_ROOT_ACCESS_KEY/AO_S3_ROOT_SECRET_KEY, AO_S3_USER_ACCESS_KEY/AO_S3_USER_SECRET_KEY.
The user may do anything (s3:*) to buckets named limited-* and their objects, and nothing else;
tests add users of their own with AO_S3_USER_POLICY_NAME and AO_S3_USER_POLICY (a JSON policy),
and with AO_S3_USER_STATUS (enabled or disabled) only switch an existing user on or off.
Idempotent: adding an existing policy or user replaces it.
"""

import json
import os
import urllib.parse

import urllib3
from minio.credentials import StaticProvider
from minio.minioadmin import MinioAdmin

POLICY_NAME = "limited-buckets"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["s3:*"],
            "Resource": ["arn:aws:s3:::limited-*", "arn:aws:s3:::limited-*/*"],
        }
    ],
}


def main() -> None:
    url = urllib.parse.urlparse(os.environ["AO_S3_ADMIN_ENDPOINT"])
    secure = url.scheme == "https"
    http_client = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=20),
        retries=urllib3.Retry(total=3, backoff_factor=0.2),
        **({"cert_reqs": "CERT_REQUIRED", "ca_certs": os.environ["AO_S3_CA_FILE"]} if secure else {}),
    )
    admin = MinioAdmin(
        endpoint=url.netloc,
        credentials=StaticProvider(
            os.environ["AO_S3_ROOT_ACCESS_KEY"], os.environ["AO_S3_ROOT_SECRET_KEY"]
        ),
        secure=secure,
        http_client=http_client,
    )
    user = os.environ["AO_S3_USER_ACCESS_KEY"]
    status = os.environ.get("AO_S3_USER_STATUS")
    if status is not None:
        {"enabled": admin.user_enable, "disabled": admin.user_disable}[status](user)
        print(f"{url.geturl()}: user {user} is {status}")
        return
    name = os.environ.get("AO_S3_USER_POLICY_NAME", POLICY_NAME)
    policy = json.loads(os.environ["AO_S3_USER_POLICY"]) if "AO_S3_USER_POLICY" in os.environ else POLICY
    admin.policy_add(name, policy=policy)
    admin.user_add(user, os.environ["AO_S3_USER_SECRET_KEY"])
    admin.attach_policy([name], user=user)
    print(f"{url.geturl()}: user {user} has policy {name}")


if __name__ == "__main__":
    main()
