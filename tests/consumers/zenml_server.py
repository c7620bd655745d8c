"""A ZenML client logged into the test environment's ZenML server with a service account's API key
(ZENML_STORE_URL, ZENML_STORE_API_KEY) and no AWS credentials in its environment. It finds the
stack a Stack registered (argument: its name), runs a real two-step pipeline on that stack's S3
artifact store component (with the server's local orchestrator: the credentials come from the
server alone), loads the artifacts back, and removes the run's own stack. Prints one line per step;
exits non-zero on failure."""
import os
import subprocess
import sys
import uuid

assert not [k for k in os.environ if k.startswith("AWS_")], "the client must have no AWS settings"
name = sys.argv[1]
zenml = os.path.join(os.path.dirname(sys.executable), "zenml")


def cli(*args):
    result = subprocess.run([zenml, *args], capture_output=True, text=True)
    assert result.returncode == 0, f"zenml {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


from zenml.client import Client  # noqa: E402

client = Client()
stack = client.get_stack(name)
components = {kind.value: listed[0] for kind, listed in stack.components.items()}
store, orchestrator = components["artifact_store"], components["orchestrator"]
path = store.configuration["path"]
print(f"zenml: stack {stack.name} ({stack.id}) has artifact_store {store.name} ({store.flavor_name}, {path}) "
      f"and orchestrator {orchestrator.name} ({orchestrator.flavor_name}, namespace "
      f"{orchestrator.configuration['kubernetes_namespace']})")

# The server's own local orchestrator with the Stack's artifact store component: the pipeline runs
# here, and the component gets its keys from the server (its authentication_secret).
run_stack = f"run-{uuid.uuid4().hex[:8]}"
cli("stack", "register", run_stack, "-a", store.name, "-o", "default")
client.activate_stack(run_stack)
from two_steps import two_steps  # noqa: E402

payload = uuid.uuid4().hex
try:
    run = two_steps(payload)
    assert run.status.value == "completed", run.status
    run = client.get_pipeline_run(run.id)
    uris = sorted(a.uri for s in run.steps.values() for listed in s.outputs.values() for a in listed)
    assert uris and all(uri.startswith(path + "/") for uri in uris), (uris, path)
    loaded = run.steps["produce"].outputs["output"][0].load()
    assert loaded == payload, (loaded, payload)
    print(f"zenml: pipeline run {run.name} completed with the server's credentials; artifacts at {' '.join(uris)}; "
          f"produce's output loaded back: {loaded == payload}")
finally:
    cli("stack", "set", "default")
    cli("stack", "delete", run_stack, "-y")
print(f"zenml: removed the run's stack {run_stack}")
