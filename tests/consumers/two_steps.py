"""The real two-step ZenML pipeline the consumer tests run: `produce` returns the payload it is
given, `consume` its length; both outputs are artifacts in the active stack's artifact store."""
from zenml import pipeline, step


@step
def produce(text: str) -> str:
    return text


@step
def consume(text: str) -> int:
    return len(text)


@pipeline(enable_cache=False)
def two_steps(payload: str):
    consume(produce(payload))
