"""An MLflow client, run with MLflow's own code: logs a run with one text artifact to the tracking
server at the first argument, in the experiment named by the second, and reads the artifact back
through MLflow's API. Whether the server proxies the artifact (mlflow-artifacts:/) or the client
writes it to S3 itself (the server runs with --no-serve-artifacts) is the server's choice; the
client's environment is the Stack's. Prints one line; exits non-zero on failure."""
import sys
import time
import uuid

import mlflow

uri, name = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri)
deadline = time.monotonic() + 90
while True:
    try:
        experiment = mlflow.set_experiment(name)
        break
    except Exception:  # the server is still starting
        if time.monotonic() > deadline:
            raise
        time.sleep(1)
payload = uuid.uuid4().hex
with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
    mlflow.log_text(payload, "notes/payload.txt")
artifact_uri = mlflow.get_run(run.info.run_id).info.artifact_uri
read = mlflow.artifacts.load_text(f"{artifact_uri}/notes/payload.txt")
assert read == payload, f"read {read!r}, wrote {payload!r}"
print(f"mlflow {name}: run {run.info.run_id} logged {artifact_uri}/notes/payload.txt and read it back ({len(read)} bytes)")
