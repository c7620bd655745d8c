"""What tests/env/build-image.py and tests/env/oci-image.py share: their error exit, the canonical
JSON of image configs, manifests and indexes, and the JSON lists of strings an entrypoint or a
command is given as."""
import json
import sys


def fail(tool, message):
    print(f"[testenv] ERROR: {tool}: {message}", file=sys.stderr)
    sys.exit(1)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def json_strings(text):
    """The list of strings TEXT holds as JSON, or None when it holds anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None
