#!/usr/bin/env python3
"""OCI images as image layout directories, and their push to a registry (Python stdlib only), for
images too large for tests/env/build-image.py's in-memory tarballs (tests/env/zenml-image.sh).

  layout: an OCI image layout directory (oci-layout, index.json, blobs/sha256/...) from uncompressed
          layer tarballs, in order, and the image config given by the options. The layers are hard
          links to the tarballs given when they are on the same file system (copies otherwise).
          The directory appears whole or not at all (written beside it, then renamed).
          Prints the manifest's digest.
  push:   the image of a layout directory to a registry, through the OCI distribution API: each
          blob the registry lacks (HEAD, then one POST and one monolithic PUT), then the manifest
          under a tag (by default the first 12 hex digits of the manifest's digest, so a tag names
          one content). When the registry has that manifest under that tag already, nothing else is
          sent. Prints REGISTRY/REPOSITORY:TAG.

The layers stay uncompressed (application/vnd.oci.image.layer.v1.tar): they only travel over this
machine, to the node's registry and from there to the node's containerd.
"""
import argparse
import hashlib
import http.client
import json
import os
import shutil
import ssl
import sys
import urllib.parse

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
from ocilib import canonical, fail, json_strings  # noqa: E402 (after the line above)

CREATED = "1970-01-01T00:00:00Z"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
INDEX = "application/vnd.oci.image.index.v1+json"
CHUNK = 1 << 20


def die(message):
    fail("oci-image", message)


def file_digest(path):
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def blob_path(layout, digest):
    algorithm, hexdigest = digest.split(":", 1)
    return os.path.join(layout, "blobs", algorithm, hexdigest)


# --- layout ---------------------------------------------------------------------------------------

def pairs(values, what):
    out = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep:
            die(f"{what} {value}: expected KEY=VALUE")
        out[key] = val
    return out


def json_list(text, what):
    value = json_strings(text)
    if value is None:
        die(f"{what} must be a JSON list of strings, found: {text}")
    return value


def build_layout(args):
    if len(args.history) != len(args.layer):
        die("give one --history per --layer")
    if os.path.exists(args.output):
        die(f"{args.output} exists already")
    tmp = f"{args.output}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "blobs", "sha256"))

    def put_bytes(data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(blob_path(tmp, digest), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layers = []
    for path in args.layer:
        digest, size = file_digest(path)
        target = blob_path(tmp, digest)
        if not os.path.exists(target):
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
        layers.append({"mediaType": LAYER, "digest": digest, "size": size})

    config = {"Env": args.env}
    if args.entrypoint:
        config["Entrypoint"] = json_list(args.entrypoint, "--entrypoint")
    if args.cmd:
        config["Cmd"] = json_list(args.cmd, "--cmd")
    if args.workdir:
        config["WorkingDir"] = args.workdir
    if args.label:
        config["Labels"] = pairs(args.label, "--label")
    image_config = {
        "architecture": args.architecture,
        "os": "linux",
        "created": CREATED,
        "config": config,
        # Uncompressed layers: each one's diff ID is its digest.
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        "history": [{"created": CREATED, "created_by": h} for h in args.history],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": put_bytes(canonical(image_config), CONFIG),
        "layers": layers,
    }
    manifest_desc = put_bytes(canonical(manifest), MANIFEST)
    manifest_desc["platform"] = {"architecture": args.architecture, "os": "linux"}
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": manifest_desc["digest"].split(":")[1][:12]}
    with open(os.path.join(tmp, "index.json"), "wb") as f:
        f.write(canonical({"schemaVersion": 2, "mediaType": INDEX, "manifests": [manifest_desc]}))
    with open(os.path.join(tmp, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    os.rename(tmp, args.output)
    print(manifest_desc["digest"])


# --- push -----------------------------------------------------------------------------------------

class Registry:
    """One keep-alive connection to a registry's API, reopened when the server closes it."""

    def __init__(self, address, cafile, plain_http):
        self.address, self.cafile, self.plain_http = address, cafile, plain_http
        self.conn = None

    def connect(self):
        host, _, port = self.address.rpartition(":")
        if self.plain_http:
            return http.client.HTTPConnection(host, int(port), timeout=300, blocksize=CHUNK)
        context = ssl.create_default_context(cafile=self.cafile)
        return http.client.HTTPSConnection(host, int(port), timeout=300, context=context, blocksize=CHUNK)

    def request(self, method, url, body=None, headers=None):
        """(status, headers, body) of one request; a body that is a file is sent as it is read."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = self.connect()
            try:
                self.conn.request(method, url, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                    self.conn = None
                return response.status, response, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed meanwhile: once more on a new one, unless
                # part of a file body went out already.
                self.conn.close()
                self.conn = None
                if attempt == 2 or (body is not None and not isinstance(body, bytes)):
                    raise
        raise AssertionError("unreachable")


def expect(status, response, data, wanted, what):
    if status not in wanted:
        text = data.decode("utf-8", "replace")[:2000]
        die(f"{what}: HTTP {status} {response.reason}: {text}")


def push(args):
    with open(os.path.join(args.layout, "index.json"), "rb") as f:
        index = json.load(f)
    if len(index.get("manifests", [])) != 1:
        die(f"{args.layout}: expected one manifest in index.json")
    desc = index["manifests"][0]
    with open(blob_path(args.layout, desc["digest"]), "rb") as f:
        manifest_bytes = f.read()
    manifest = json.loads(manifest_bytes)
    tag = args.tag or desc["digest"].split(":")[1][:12]
    repo = args.repository
    registry = Registry(args.registry, args.cafile, args.plain_http)
    reference = f"{args.registry}/{repo}:{tag}"

    status, response, _ = registry.request("HEAD", f"/v2/{repo}/manifests/{tag}",
                                           headers={"Accept": desc["mediaType"]})
    if status == 200 and response.getheader("Docker-Content-Digest") == desc["digest"]:
        print(f"[testenv] {reference} is in the registry already", file=sys.stderr)
        print(reference)
        return

    sent = 0
    for blob in [manifest["config"]] + manifest["layers"]:
        digest = blob["digest"]
        status, response, data = registry.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if status == 200:
            continue
        expect(status, response, data, (404,), f"HEAD blob {digest}")
        status, response, data = registry.request("POST", f"/v2/{repo}/blobs/uploads/",
                                                   body=b"", headers={"Content-Length": "0"})
        expect(status, response, data, (202,), f"starting the upload of {digest}")
        location = urllib.parse.urlsplit(response.getheader("Location"))
        query = (location.query + "&" if location.query else "") + "digest=" + urllib.parse.quote(digest)
        headers = {"Content-Length": str(blob["size"]), "Content-Type": "application/octet-stream"}
        with open(blob_path(args.layout, digest), "rb") as f:
            status, response, data = registry.request("PUT", f"{location.path}?{query}", body=f, headers=headers)
        expect(status, response, data, (201,), f"uploading {digest}")
        sent += blob["size"]

    status, response, data = registry.request("PUT", f"/v2/{repo}/manifests/{tag}", body=manifest_bytes,
                                              headers={"Content-Type": manifest["mediaType"]})
    expect(status, response, data, (201,), f"putting the manifest as {tag}")
    if response.getheader("Docker-Content-Digest") not in (None, desc["digest"]):
        die(f"the registry stored the manifest as {response.getheader('Docker-Content-Digest')}, not {desc['digest']}")
    print(f"[testenv] pushed {reference} ({sent / 1e6:.0f} MB of blobs sent)", file=sys.stderr)
    print(reference)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    layout = sub.add_parser("layout", help="an OCI layout directory from layer tarballs")
    layout.add_argument("--output", required=True, help="the layout directory to create")
    layout.add_argument("--layer", action="append", default=[], required=True, help="an uncompressed tarball")
    layout.add_argument("--history", action="append", default=[], help="what made each layer")
    layout.add_argument("--architecture", required=True, help="amd64, arm64, ...")
    layout.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    layout.add_argument("--entrypoint", help="a JSON list")
    layout.add_argument("--cmd", help="a JSON list")
    layout.add_argument("--workdir")
    layout.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    push_parser = sub.add_parser("push", help="push a layout directory's image")
    push_parser.add_argument("--layout", required=True)
    push_parser.add_argument("--registry", required=True, help="HOST:PORT")
    push_parser.add_argument("--repository", required=True, help="e.g. zenml-runner")
    push_parser.add_argument("--tag", help="default: the first 12 hex digits of the manifest's digest")
    push_parser.add_argument("--cafile", help="the CA of the registry's certificate (default: the system's)")
    push_parser.add_argument("--plain-http", action="store_true", help="HTTP instead of HTTPS")
    args = parser.parse_args()
    {"layout": build_layout, "push": push}[args.command](args)


if __name__ == "__main__":
    main()
