"""A boto3 client whose only credentials come from AWS_CONFIG_FILE (its credential_process), as a
pod of a Stack with scoped credentials has them. Arguments: BUCKET KEY, then optionally
`--every SECONDS --until STOPFILE` to keep writing KEY/N every SECONDS until STOPFILE exists, as a
long-running step does. Prints "wrote KEY as ACCESS_KEY_ID at TIME" per write; exits non-zero on
the first failure."""
import datetime
import os
import sys
import time

import boto3
import botocore.config

bucket, key = sys.argv[1], sys.argv[2]
every, until = None, None
if "--every" in sys.argv:
    every = float(sys.argv[sys.argv.index("--every") + 1])
    until = sys.argv[sys.argv.index("--until") + 1]

s3 = boto3.client("s3", config=botocore.config.Config(s3={"addressing_style": "path"}))


def write(name):
    body = os.urandom(16)
    s3.put_object(Bucket=bucket, Key=name, Body=body)
    assert s3.get_object(Bucket=bucket, Key=name)["Body"].read() == body
    # The credentials the client signed with, as botocore holds them (refreshed through the process).
    access_key = s3._request_signer._credentials.get_frozen_credentials().access_key
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"wrote {name} as {access_key} at {now}", flush=True)


if every is None:
    write(key)
else:
    n = 0
    while not os.path.exists(until):
        write(f"{key}/{n}")
        n += 1
        time.sleep(every)
