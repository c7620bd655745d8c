"""A ZenML client reading a pipeline run back through the server (argument: the run's id): its
status, its steps' and the `produce` step's output, loaded from the artifact store with the
component's configuration and the server's credentials. Prints one line."""
import sys

from zenml.client import Client

run = Client().get_pipeline_run(sys.argv[1])
steps = {name: step.status.value for name, step in run.steps.items()}
value = run.steps["produce"].outputs["output"][0]
print(f"zenml read back: run {run.name} {run.status.value}, steps {steps}; produce's output {value.uri} = {value.load()}")
