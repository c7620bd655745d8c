"""What a pod gets from a Stack, used by the consumers' own code. Run with only what a pod would
get: the env keys of the Stack's ConfigMap and the credentials Secret's keys as environment, the
Stack's ConfigMap mounted as files in the directory given as the first argument (the env keys point
into it), the namespace's `kfp-launcher` ConfigMap as files in the second, and the namespace's
Secrets as <third argument>/<name>/<key> (what Kubeflow's launcher reads by name through the API).
Prints one line per consumer; exits non-zero on failure."""
import os
import subprocess
import sys
import uuid

import boto3
import botocore.config
import yaml

files, launcher, secrets = sys.argv[1], sys.argv[2], sys.argv[3]
bucket, prefix = os.environ["ARTIFACT_STORE_BUCKET"], os.environ["ARTIFACT_STORE_PREFIX"]
payload = uuid.uuid4().hex.encode()

# The integrity checksums a client put on its uploads, seen as the request leaves it.
CHECKSUM_HEADERS = ("x-amz-checksum", "x-amz-sdk-checksum", "x-amz-trailer")


def uploads_checksums(client):
    """A list that gets, for every PutObject `client` sends, the checksum headers it carried."""
    sent = []
    client.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append(sorted(h.lower() for h in request.headers if h.lower().startswith(CHECKSUM_HEADERS))))
    return sent


def checksums_said(sent):
    return ", ".join(sorted({h for headers in sent for h in headers})) or "none"


# boto3 reads AWS_ENDPOINT_URL_S3, AWS_REGION, AWS_CA_BUNDLE, AWS_REQUEST_CHECKSUM_CALCULATION and
# the keys from the environment alone.
style = os.environ.get("ARTIFACT_STORE_ADDRESSING_STYLE", "auto")
s3 = boto3.client("s3", config=botocore.config.Config(s3={"addressing_style": style}))
boto3_sent = uploads_checksums(s3)
key = f"{prefix}/boto3/{uuid.uuid4().hex}"
s3.put_object(Bucket=bucket, Key=key, Body=payload)
assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == payload
print(f"boto3: wrote and read {key}; upload checksums: {checksums_said(boto3_sent)}")
# The same client told to add checksums does add them: the look above sees them when they are there.
told = boto3.client("s3", config=botocore.config.Config(s3={"addressing_style": style}, request_checksum_calculation="when_supported"))
told_sent = uploads_checksums(told)
told.put_object(Bucket=bucket, Key=f"{prefix}/boto3/{uuid.uuid4().hex}", Body=payload)
assert told_sent and told_sent[-1], f"a client told to add checksums sent none: {told_sent}"
print(f"boto3 told when_supported: upload checksums: {checksums_said(told_sent)}")

# ZenML: its own CLI imports the rendered export as is, from the mounted file.
zenml = os.path.join(os.path.dirname(sys.executable), "zenml")
export = os.path.join(files, "zenml-stack.yaml")
rendered = yaml.safe_load(open(export))


def cli(*args):
    result = subprocess.run([zenml, *args], capture_output=True, text=True)
    assert result.returncode == 0, f"zenml {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


imported = cli("stack", "import", export)
described = cli("stack", "describe", rendered["stack_name"])
components = {kind: one for kind, listed in rendered["components"].items() for one in listed}
for component in components.values():
    assert component["name"] in described, f"{component['name']} missing from:\n{described}"
print(f"zenml: stack import {os.path.basename(export)} succeeded; stack describe {rendered['stack_name']} shows",
      ", ".join(f"{kind} {c['name']} ({c['flavor']})" for kind, c in sorted(components.items())))

# A real two-step pipeline on the local orchestrator, with the imported S3 artifact store.
cli("stack", "register", "local-run", "-a", components["artifact_store"]["name"], "-o", "default", "--set")
from two_steps import two_steps  # noqa: E402

run = two_steps(payload.decode())
assert run.status.value == "completed", run.status
uris = [artifact.uri for step_run in run.steps.values() for artifacts in step_run.outputs.values() for artifact in artifacts]
store_path = os.environ["ARTIFACT_STORE_PATH"]
assert uris and all(uri.startswith(store_path + "/") for uri in uris), uris
print(f"zenml: pipeline {run.name} completed on the local orchestrator; artifacts at", " ".join(sorted(uris)))

# The artifact store component's own filesystem (s3fs, built by ZenML from the imported
# client_kwargs and config_kwargs): what its uploads carry.
from zenml.client import Client  # noqa: E402

filesystem = Client().active_stack.artifact_store.filesystem
filesystem.connect()
zenml_sent = uploads_checksums(filesystem.s3)
with Client().active_stack.artifact_store.open(f"{store_path}/zenml/{uuid.uuid4().hex}", "wb") as f:
    f.write(payload)
assert zenml_sent, "the artifact store wrote without a PutObject"
print(f"zenml: the artifact store component wrote through s3fs; upload checksums: {checksums_said(zenml_sent)}")

# Kubeflow Pipelines' launcher config, read the way its launcher reads it (the module is not served
# by the Go module proxy, so field by field): defaultPipelineRoot, then providers.s3.default with the
# endpoint host (scheme from disableSSL), region, path style, maxRetries (the SDK's attempts), and
# either the pod's own credentials (fromEnv) or the Secret named by secretRef. A private CA reaches
# the launcher's AWS SDK through AWS_CA_BUNDLE and the mounted bundle, as here.
root = open(os.path.join(launcher, "defaultPipelineRoot")).read()
assert root == store_path, root
default = yaml.safe_load(open(os.path.join(launcher, "providers")))["s3"]["default"]
known = {"endpoint", "credentials", "region", "disableSSL", "forcePathStyle", "maxRetries"}
assert set(default) <= known, f"fields the launcher does not read: {set(default) - known}"
credentials = default["credentials"]
if credentials["fromEnv"]:
    keys = {}
else:
    ref = credentials["secretRef"]
    read = lambda key: open(os.path.join(secrets, ref["secretName"], key)).read()
    keys = {"aws_access_key_id": read(ref["accessKeyKey"]), "aws_secret_access_key": read(ref["secretKeyKey"])}
endpoint = ("http://" if default.get("disableSSL") else "https://") + default["endpoint"] if "endpoint" in default else None
retries = {"max_attempts": default["maxRetries"], "mode": "standard"} if "maxRetries" in default else None
kfp = boto3.client("s3", endpoint_url=endpoint, region_name=default["region"], **keys, config=botocore.config.Config(
    s3={"addressing_style": "path" if default.get("forcePathStyle", True) else "virtual"}, retries=retries))
kfp_bucket, _, kfp_prefix = root.removeprefix("s3://").partition("/")
key = f"{kfp_prefix}/kfp/{uuid.uuid4().hex}"
kfp.put_object(Bucket=kfp_bucket, Key=key, Body=payload)
assert kfp.get_object(Bucket=kfp_bucket, Key=key)["Body"].read() == payload
how = "the pod's credentials" if credentials["fromEnv"] else f"Secret {credentials['secretRef']['secretName']}"
print(f"kfp: kfp-launcher (defaultPipelineRoot {root}, endpoint {endpoint}, maxRetries {default.get('maxRetries', 'default')}) wrote and read {key} with {how}")

# What the consumers left under the store's prefix, for the test to check.
objects = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])]
print("objects:", " ".join(sorted(objects)))
