"""An application written for an ObjectBucketClaim, as Rook's documentation shows its consumers:
the endpoint is http://$BUCKET_HOST:$BUCKET_PORT, the bucket $BUCKET_NAME, and the keys
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY come from the claim's Secret, all as environment
(envFrom). It knows nothing of this operator but one key it would otherwise have no way to learn:
the prefix it may write under (ARTIFACT_STORE_PREFIX), since a claim owns its whole bucket.
Writes an object, reads it back and prints one line; exits non-zero on failure."""
import os
import uuid

import boto3

host, port = os.environ["BUCKET_HOST"], os.environ["BUCKET_PORT"]
bucket, region = os.environ["BUCKET_NAME"], os.environ["BUCKET_REGION"]
s3 = boto3.client(
    "s3",
    endpoint_url=f"http://{host}:{port}",
    region_name=region or None,
    aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
)
key = f"{os.environ['ARTIFACT_STORE_PREFIX']}/claim/{uuid.uuid4().hex}"
body = uuid.uuid4().hex.encode()
s3.put_object(Bucket=bucket, Key=key, Body=body)
read = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
assert read == body, f"read {read!r}, wrote {body!r}"
print(f"bucket claim consumer: wrote and read s3://{bucket}/{key} at http://{host}:{port}")
