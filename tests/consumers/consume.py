"""What a pod gets from a Stack, used by real clients. Run with the env keys of the Stack's
ConfigMap and the credentials Secret's keys as environment, the ConfigMap's data as files in the
directory given as the first argument, and the namespace's Secrets as <second argument>/<name>/<key>
(what Kubeflow's launcher can read by name). Prints one line per check; exits non-zero on failure."""
import json
import os
import sys
import uuid

import boto3
import s3fs
import yaml

files, secrets = sys.argv[1], sys.argv[2]
bucket, prefix = os.environ["ARTIFACT_STORE_BUCKET"], os.environ["ARTIFACT_STORE_PREFIX"]
payload = uuid.uuid4().hex.encode()

# boto3 reads AWS_ENDPOINT_URL_S3, AWS_REGION and the keys from the environment alone.
s3 = boto3.client("s3", config=boto3.session.Config(s3={"addressing_style": os.environ.get("ARTIFACT_STORE_ADDRESSING_STYLE", "auto")}))
key = f"{prefix}/boto3/{uuid.uuid4().hex}"
s3.put_object(Bucket=bucket, Key=key, Body=payload)
assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == payload
print("boto3: wrote and read", key)

# s3fs, as ZenML's S3 artifact store uses it, configured from the rendered ZenML stack.
stack = json.load(open(os.path.join(files, "zenml-stack.json")))
config = stack["components"]["artifact_store"]["configuration"]
fs = s3fs.S3FileSystem(client_kwargs=config["client_kwargs"], config_kwargs=config["config_kwargs"], s3_additional_kwargs=config["s3_additional_kwargs"])
path = f"{config['path']}/s3fs/{uuid.uuid4().hex}"
with fs.open(path, "wb") as f:
    f.write(payload)
with fs.open(path, "rb") as f:
    assert f.read() == payload
print("s3fs: wrote and read", path)

# ZenML's own config class accepts the artifact store configuration as is.
from zenml.integrations.s3.flavors.s3_artifact_store_flavor import S3ArtifactStoreConfig
loaded = S3ArtifactStoreConfig(**config)
assert loaded.path == os.environ["ARTIFACT_STORE_PATH"] and loaded.key is None and loaded.secret is None
print("zenml: S3ArtifactStoreConfig loads", loaded.path)

# Argo Workflows' published model (its Python SDK, generated from Argo's OpenAPI schema).
from argo_workflows.api_client import ApiClient
from argo_workflows.model.io_argoproj_workflow_v1alpha1_artifact_repository import IoArgoprojWorkflowV1alpha1ArtifactRepository as Repository
raw = yaml.safe_load(open(os.path.join(files, "argo-artifact-repository")))
client = ApiClient()
client.configuration.discard_unknown_keys = False
class Response:
    data = json.dumps(raw)
repository = client.deserialize(Response(), (Repository,), True)
assert repository.s3.bucket == bucket and repository.s3.key_format.startswith(prefix)
assert client.sanitize_for_serialization(repository) == raw, "the model round-trips every field"
# The generated model keeps unknown keys as extras; the schema's own field list catches them.
from argo_workflows.model.io_argoproj_workflow_v1alpha1_s3_artifact_repository import IoArgoprojWorkflowV1alpha1S3ArtifactRepository as S3Repository
from argo_workflows.model.secret_key_selector import SecretKeySelector
unknown = set(raw["s3"]) - set(S3Repository.attribute_map.values())
assert not unknown, f"fields unknown to Argo's schema: {unknown}"
for selector in ("accessKeySecret", "secretKeySecret"):
    if selector in raw["s3"]:
        assert set(raw["s3"][selector]) <= set(SecretKeySelector.attribute_map.values()), selector
print("argo: ArtifactRepository parses with", sorted(raw["s3"]))

# Kubeflow Pipelines' launcher config, read the way its launcher reads it: providers.s3.default
# gives the endpoint host (scheme from disableSSL), region, path style, and either the pod's own
# credentials (fromEnv) or a Secret in the namespace named by secretRef. KFP publishes these types
# only in its Go backend, which this machine cannot fetch; this checks that the values work.
launcher = yaml.safe_load(open(os.path.join(files, "kfp-launcher.yaml")))
root = launcher["defaultPipelineRoot"]
assert root == os.environ["ARTIFACT_STORE_PATH"], root
default = yaml.safe_load(launcher["providers"])["s3"]["default"]
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
kfp = boto3.client("s3", endpoint_url=endpoint, region_name=default["region"],
                   config=boto3.session.Config(s3={"addressing_style": "path" if default["forcePathStyle"] else "virtual"}), **keys)
kfp_bucket, _, kfp_prefix = root.removeprefix("s3://").partition("/")
key = f"{kfp_prefix}/kfp/{uuid.uuid4().hex}"
kfp.put_object(Bucket=kfp_bucket, Key=key, Body=payload)
assert kfp.get_object(Bucket=kfp_bucket, Key=key)["Body"].read() == payload
print("kfp: launcher config wrote and read", key, "with", "the pod's credentials" if credentials["fromEnv"] else f"Secret {credentials['secretRef']['secretName']}")
