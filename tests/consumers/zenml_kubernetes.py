"""A ZenML client in a pod on the test node, as a team submits pipelines from inside the cluster:
logged into the ZenML server with a service account's API key (ZENML_STORE_URL,
ZENML_STORE_API_KEY), it activates the stack a Stack registered (argument 1: its name) and runs
the real two-step pipeline on it with ZenML's own kubernetes orchestrator. The pipeline's image is
the prebuilt one named by argument 2, used through ZenML's own settings (DockerSettings with
parent_image and skip_build); the code reaches the pods through the artifact store, as ZenML does
without a code repository. The orchestrator pod and the step pods are Jobs ZenML starts in the
Stack's namespace, with the pod settings the Stack registered. Prints one line naming the run and
the artifact URIs it wrote; exits non-zero on failure."""
import os
import shutil
import sys
import tempfile
import uuid

name, image = sys.argv[1], sys.argv[2]

# ZenML archives the source root for the pods: a plain copy, not the ConfigMap's symlinks.
here = os.path.dirname(os.path.abspath(__file__))
work = tempfile.mkdtemp(prefix="pipeline-")
for source in ("two_steps.py",):
    shutil.copy(os.path.join(here, source), os.path.join(work, source))
os.chdir(work)
sys.path.insert(0, work)

from zenml.client import Client  # noqa: E402
from zenml.config import DockerSettings  # noqa: E402

client = Client()
client.activate_stack(name)
stack = client.active_stack_model
components = {kind.value: listed[0] for kind, listed in stack.components.items()}
print(f"zenml-kubernetes: stack {stack.name} has "
      + ", ".join(f"{kind} {c.name} ({c.flavor_name})" for kind, c in sorted(components.items())), flush=True)

from two_steps import two_steps  # noqa: E402

payload = uuid.uuid4().hex
docker = DockerSettings(parent_image=image, skip_build=True)
run = two_steps.with_options(settings={"docker": docker})(payload)
run = client.get_pipeline_run(run.id)
assert run.status.value == "completed", f"run {run.name}: {run.status}"
uris = sorted(a.uri for s in run.steps.values() for listed in s.outputs.values() for a in listed)
path = components["artifact_store"].configuration["path"]
assert uris and all(uri.startswith(path + "/") for uri in uris), (uris, path)
print(f"zenml-kubernetes: pipeline run {run.name} ({run.id}) completed with payload {payload}; "
      f"artifacts at {' '.join(uris)}", flush=True)
