#!/usr/bin/env python3
"""Builds OCI image layout tarballs without Docker, BuildKit or a registry (Python stdlib only), for
the node of tests/env/node-up.sh, whose containerd imports them (tests/env/build-image.sh does both).

  operator: the final stage of deploy/docker/Dockerfile around a binary built beforehand: a stand-in
            for distroless/static-debian12:nonroot (its /etc/passwd, /etc/group, /tmp, /root,
            /home/nonroot and the CA bundle, taken from the host's Debian ca-certificates) and the
            binary at the COPY destination. Entrypoint, Cmd, User, ExposedPorts, Labels and the COPY
            destination, owner and mode are read from the Dockerfile, which must keep the shape this
            script understands: anything else in the final stage is an error, not a silent skip.
  pause:    the node's sandbox ("pause") image: a static catatonit in pause mode (-P), nothing else.
  argoexec, workflow-controller:
            Argo Workflows' images (the targets of the same names in Argo's Dockerfile) around a static
            build of the binary: a stand-in for distroless/static, the binary in /bin and the
            entrypoint naming it; workflow-controller runs as user 8737, argoexec as root, as there.
  busybox:  a main-container image for workflow steps: a static busybox (Debian's busybox-static)
            in /bin with a link for each of its applets, /tmp, and `sh` as the command.

The output is deterministic: fixed timestamps, owners and entry order, so the same inputs give the
same digests. Layers are stored uncompressed (the tarball only travels to a local containerd).
ctr -n k8s.io images import names the image after the io.containerd.image.name annotation
(docker.io/library/NAME:TAG for NAME:TAG, as Kubernetes resolves it) and the tag goes into
org.opencontainers.image.ref.name, as containerd's own docker-archive importer does.
"""
import argparse
import hashlib
import io
import os
import re
import shlex
import struct
import sys
import tarfile

sys.dont_write_bytecode = True  # no __pycache__ beside the scripts
from ocilib import canonical, fail, json_strings  # noqa: E402 (after the line above)

# Every timestamp is the epoch, as in build.sh's version stamps (and distroless's own layers).
MTIME = 0
CREATED = "1970-01-01T00:00:00Z"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"   # Debian's ca-certificates, as distroless has it
NONROOT = 65532

# What the base images this script can stand in for put into the image config (distroless sets the
# same PATH and SSL_CERT_FILE on every variant; :nonroot adds the user and its home as workdir).
BASES = {
    # distroless/static (root), the base of Argo's images.
    "gcr.io/distroless/static": {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
    },
    "gcr.io/distroless/static-debian12:nonroot": {
        "User": str(NONROOT),
        "WorkingDir": "/home/nonroot",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
    },
}

PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\n" f"nonroot:x:{NONROOT}:\n"

ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64"}

# Argo's images (its Dockerfile's argoexec and workflow-controller targets): the binary in /bin,
# ENTRYPOINT naming it, and the user (argoexec's target sets none: root, as distroless/static).
ARGO_IMAGES = {
    "argoexec": {"user": None},
    "workflow-controller": {"user": "8737"},
}
ARGO_USER = 8737


def die(message):
    fail("build-image", message)


# --- the Dockerfile ------------------------------------------------------------------------------

def dockerfile_instructions(path):
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions, pending = [], ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            stripped = line.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if pending and stripped.startswith("#"):
                continue  # a comment inside a continued instruction
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text = (pending + stripped).strip()
            pending = ""
            if text:
                word, _, rest = text.partition(" ")
                instructions.append((word.upper(), rest.strip()))
    if pending:
        die(f"{path}: the last instruction ends with a line continuation")
    return instructions


def substitute(text, args):
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in args:
            die(f"the Dockerfile uses ${{{name}}}, which no ARG of the final stage declares")
        return args[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def json_form(instruction, rest):
    value = json_strings(rest)
    if value is None:
        die(f"{instruction} must stay in JSON (exec) form, found: {rest}")
    return value


def parse_dockerfile(path, build_args):
    """The final stage of the Dockerfile, as the image config and the COPY of the binary."""
    instructions = dockerfile_instructions(path)
    froms = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    if not froms:
        die(f"{path} has no FROM")
    base_words = instructions[froms[-1]][1].split()
    base = base_words[0]
    if base not in BASES:
        die(f"the final stage of {path} is FROM {base}; this script only reproduces {', '.join(BASES)}")
    stage = {"base": base, "labels": {}, "args": {}, "copies": [], "seen": set()}
    for word, rest in instructions[froms[-1] + 1:]:
        if word in stage["seen"] and word not in ("ARG", "LABEL", "COPY"):
            die(f"the final stage of {path} has more than one {word}")
        stage["seen"].add(word)
        if word == "ARG":
            name, _, default = rest.partition("=")
            stage["args"][name] = build_args.get(name, default.strip('"'))
        elif word == "LABEL":
            words = shlex.split(substitute(rest, stage["args"]))
            for pair in words:
                key, sep, val = pair.partition("=")
                if not sep:
                    die(f"LABEL {pair}: only the KEY=VALUE form is understood")
                stage["labels"][key] = val
        elif word == "COPY":
            words = rest.split()
            flags = {}
            while words and words[0].startswith("--"):
                key, _, val = words.pop(0)[2:].partition("=")
                flags[key] = val
            if len(words) != 2 or set(flags) - {"from", "chown", "chmod"}:
                die(f"COPY {rest}: expected COPY [--from=...] [--chown=U:G] [--chmod=MODE] SRC DEST")
            stage["copies"].append((flags, words[0], words[1]))
        elif word == "USER":
            stage["user"] = rest
        elif word == "EXPOSE":
            ports = []
            for port in rest.split():
                number, _, proto = port.partition("/")
                if not number.isdigit():
                    die(f"EXPOSE {rest}: not a port")
                ports.append(f"{number}/{proto or 'tcp'}")
            stage["expose"] = ports
        elif word == "ENTRYPOINT":
            stage["entrypoint"] = json_form(word, rest)
        elif word == "CMD":
            stage["cmd"] = json_form(word, rest)
        else:
            die(f"the final stage of {path} has a {word} instruction, which this script does not "
                "reproduce: teach tests/env/build-image.py about it")
    missing = [w for w in ("COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD") if w not in stage["seen"]]
    if missing:
        die(f"the final stage of {path} lacks {', '.join(missing)}, which this script expects")
    if len(stage["copies"]) != 1:
        die(f"the final stage of {path} must have exactly one COPY (the binary), found {len(stage['copies'])}")
    return stage


def owner(chown):
    user, _, group = (chown or "0:0").partition(":")
    if not user.isdigit() or not (group or user).isdigit():
        die(f"--chown={chown}: only numeric owners are understood")
    return int(user), int(group or user)


# --- binaries ------------------------------------------------------------------------------------

def static_binary(path):
    """The binary's bytes and its OCI architecture; refuses a dynamically linked one, whose loader
    the image would not have (the Dockerfile checks the same with `file`)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        die(f"{path} is not a 64-bit little-endian ELF binary")
    machine = struct.unpack_from("<H", data, 18)[0]
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3:  # PT_INTERP
            die(f"{path} is dynamically linked; the image has no C library (build it for *-linux-musl)")
    if machine not in ELF_MACHINES:
        die(f"{path}: unknown ELF machine {machine:#x}")
    return data, ELF_MACHINES[machine]


# --- layers and the layout -----------------------------------------------------------------------

def directory(path, mode=0o755, uid=0, gid=0):
    return (path, tarfile.DIRTYPE, mode, uid, gid, b"")


def regular(path, data, mode=0o644, uid=0, gid=0):
    return (path, tarfile.REGTYPE, mode, uid, gid, data)


def symlink(path, target):
    return (path, tarfile.SYMTYPE, 0o777, 0, 0, target.encode())


def parents(path):
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def layer(entries):
    """An uncompressed tar of the entries, sorted, with fixed times and numeric owners only."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, kind, mode, uid, gid, data in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(path + ("/" if kind == tarfile.DIRTYPE else ""))
            info.type, info.mode, info.uid, info.gid = kind, mode, uid, gid
            info.uname = info.gname = ""
            info.mtime = MTIME
            if kind == tarfile.SYMTYPE:
                info.linkname, data = data.decode(), b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def normalize(ref):
    """NAME[:TAG] as Kubernetes (and containerd's CRI) resolves it: docker.io/library/NAME:TAG."""
    if "@" in ref:
        die(f"{ref}: give a tag, not a digest")
    name, tag = ref, "latest"
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    if not re.fullmatch(r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*", name.split("/", 1)[-1]) \
            or not re.fullmatch(r"[\w][\w.-]{0,127}", tag):
        die(f"{ref} is not a valid image reference")
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = "docker.io/library/" + name
    elif "." not in first and ":" not in first and first != "localhost":
        name = "docker.io/" + name
    return f"{name}:{tag}", tag


def write_layout(output, ref, architecture, config, layers, history):
    full_ref, tag = normalize(ref)
    blobs = {}

    def blob(data):
        digest = sha256(data)
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer_descs = [dict(blob(data), mediaType="application/vnd.oci.image.layer.v1.tar") for data in layers]
    image_config = {
        "architecture": architecture,
        "os": "linux",
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
        "history": [{"created": CREATED, "created_by": h} for h in history],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": dict(blob(canonical(image_config)), mediaType="application/vnd.oci.image.config.v1+json"),
        "layers": layer_descs,
    }
    manifest_desc = dict(blob(canonical(manifest)), mediaType="application/vnd.oci.image.manifest.v1+json")
    manifest_desc["platform"] = {"architecture": architecture, "os": "linux"}
    manifest_desc["annotations"] = {
        "io.containerd.image.name": full_ref,
        "org.opencontainers.image.ref.name": tag,
    }
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}

    files = [("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})), ("index.json", canonical(index))]
    files += [("blobs/sha256/" + d.split(":", 1)[1], data) for d, data in sorted(blobs.items())]
    entries = [directory("blobs"), directory("blobs/sha256")]
    entries += [regular(name, data) for name, data in files]
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(layer(entries))
    os.replace(tmp, output)
    return full_ref, manifest_desc["digest"]


def distroless_layer():
    """distroless/static (and :nonroot, which is the same files), the parts a static binary can
    notice."""
    with open(CA_BUNDLE, "rb") as f:
        ca_bundle = f.read()
    return [
        directory("etc"), directory("etc/ssl"), directory("etc/ssl/certs"),
        regular("etc/passwd", PASSWD.encode()),
        regular("etc/group", GROUP.encode()),
        regular("etc/ssl/certs/ca-certificates.crt", ca_bundle),
        directory("home"),
        directory("home/nonroot", 0o700, NONROOT, NONROOT),
        directory("root", 0o700),
        directory("tmp", 0o1777),
    ]


def build_operator(args):
    stage = parse_dockerfile(args.dockerfile, dict(a.split("=", 1) for a in args.build_arg))
    data, architecture = static_binary(args.binary)
    flags, source, dest = stage["copies"][0]
    if not dest.startswith("/") or dest.endswith("/"):
        die(f"COPY destination {dest}: expected the absolute path of the binary")
    uid, gid = owner(flags.get("chown"))
    mode = int(flags.get("chmod", "0755"), 8)

    base = distroless_layer()
    # COPY creates the destination's missing parents as root-owned 0755 directories.
    app = [directory(p) for p in parents(dest)] + [regular(dest.lstrip("/"), data, mode, uid, gid)]

    config = dict(BASES[stage["base"]])
    config.update({
        "User": stage["user"],
        "ExposedPorts": {port: {} for port in stage["expose"]},
        "Entrypoint": stage["entrypoint"],
        "Cmd": stage["cmd"],
        "Labels": stage["labels"],
    })
    chown = f" --chown={flags['chown']}" if "chown" in flags else ""
    chmod = f" --chmod={flags['chmod']}" if "chmod" in flags else ""
    history = [f"{stage['base']} (stand-in built by tests/env/build-image.py)",
               f"COPY{chown}{chmod} {source} {dest}"]
    return write_layout(args.output, args.image, architecture, config, [layer(base), layer(app)], history)


def build_pause(args):
    data, architecture = static_binary(args.binary)
    path = "usr/bin/catatonit"
    entries = [directory(p) for p in parents(path)] + [regular(path, data, 0o755)]
    config = {"Entrypoint": ["/" + path, "-P"], "WorkingDir": "/"}
    return write_layout(args.output, args.image, architecture, config, [layer(entries)],
                        ["catatonit in pause mode (built by tests/env/build-image.py)"])


def build_argo(args):
    """Argo's argoexec or workflow-controller image: FROM distroless/static, COPY the binary to
    /bin/ (owned by 8737 where the target runs as 8737), ENTRYPOINT [NAME]."""
    data, architecture = static_binary(args.binary)
    name, user = args.kind, ARGO_IMAGES[args.kind]["user"]
    owner_id = ARGO_USER if user else 0
    app = [directory("bin"), regular(f"bin/{name}", data, 0o755, owner_id, 0)]
    config = dict(BASES["gcr.io/distroless/static"])
    config["Entrypoint"] = [name]
    if user:
        config["User"] = user
    chown = f" --chown={ARGO_USER}" if user else ""
    history = ["gcr.io/distroless/static (stand-in built by tests/env/build-image.py)",
               f"COPY{chown} {name} /bin/"]
    return write_layout(args.output, args.image, architecture, config,
                        [layer(distroless_layer()), layer(app)], history)


def build_busybox(args):
    """A static busybox with a link in /bin for each applet it lists (as `busybox --install -s`
    makes them), /tmp, and `sh` as the command (as the busybox image has it)."""
    import subprocess
    data, architecture = static_binary(args.binary)
    applets = subprocess.run([args.binary, "--list"], check=True, capture_output=True, text=True).stdout.split()
    if "sh" not in applets:
        die(f"{args.binary} has no sh applet")
    entries = [directory("bin"), regular("bin/busybox", data, 0o755), directory("tmp", 0o1777)]
    entries += [symlink(f"bin/{applet}", "busybox") for applet in sorted(set(applets)) if applet != "busybox"]
    config = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]}
    return write_layout(args.output, args.image, architecture, config, [layer(entries)],
                        ["a static busybox and its applets (built by tests/env/build-image.py)"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    op = sub.add_parser("operator", help="the final stage of the Dockerfile around BINARY")
    op.add_argument("--dockerfile", required=True)
    op.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    pause = sub.add_parser("pause", help="the sandbox image: catatonit -P")
    argo = [sub.add_parser(name, help=f"Argo's {name} image around BINARY") for name in ARGO_IMAGES]
    busybox = sub.add_parser("busybox", help="a static busybox for workflow steps")
    for p in [op, pause, busybox] + argo:
        p.add_argument("--binary", required=True)
        p.add_argument("--image", required=True, help="NAME[:TAG], e.g. artifact-operator:test")
        p.add_argument("--output", required=True, help="the OCI layout tarball to write")
    args = parser.parse_args()
    builders = {"operator": build_operator, "pause": build_pause, "busybox": build_busybox}
    full_ref, digest = builders.get(args.kind, build_argo)(args)
    print(full_ref, digest, args.output)


if __name__ == "__main__":
    main()
