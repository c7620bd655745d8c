"""Evaluates an IAM policy with moto's own evaluator (moto.iam.access_control.IAMPolicy, which moto's
server runs for every request when its IAM authentication is on). Reads JSON from standard input,
{"policy": {...}, "requests": [{"action": "s3:GetObject", "resource": "arn:aws:s3:::b/k"}, ...]},
and prints one line per request: the action, the resource and PERMITTED, DENIED or NEUTRAL (no
statement applies, which IAM answers with a denial)."""
import json
import sys

from moto.iam.access_control import IAMPolicy

document = json.load(sys.stdin)
policy = IAMPolicy(json.dumps(document["policy"]))
for request in document["requests"]:
    result = policy.is_action_permitted(request["action"], request["resource"])
    print(request["action"], request["resource"], result.name)
