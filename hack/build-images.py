#!/usr/bin/env python3
"""Build corral's small test images from busybox-static and push them to a
registry with the distribution HTTP API v2.

    hack/build-images.py 127.0.0.1:PORT [--user USER:PASS] [--only REPO]... [--out FILE]

Everything is deterministic (fixed mtimes, uid/gid 0 unless stated, sorted
entries, gzip mtime 0), so digests are stable for a given busybox binary.
Prints `name:tag digest` per pushed tag; --out writes a JSON summary.
"""
import argparse
import base64
import gzip
import hashlib
import io
import json
import platform
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request

BUSYBOX = "/bin/busybox"
MTIME = 1704067200  # 2024-01-01T00:00:00Z
CREATED = "2024-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = OCI_TAR + "+gzip"
OCI_ZSTD = OCI_TAR + "+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def host_arch():
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x",
            "ppc64le": "ppc64le", "riscv64": "riscv64"}.get(m, m)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---- layer contents: lists of (path, kind, mode, data, uid, gid) --------------

def d(path, mode=0o755, uid=0, gid=0):
    return (path, "dir", mode, b"", uid, gid)


def f(path, data, mode=0o644, uid=0, gid=0):
    return (path, "file", mode, data.encode() if isinstance(data, str) else data, uid, gid)


def link(path, target):
    return (path, "sym", 0o777, target, 0, 0)


def make_tar(entries):
    """Deterministic tar; entries are sorted by path, so a directory's opaque
    whiteout (.wh..wh..opq sorts before other names) directly follows it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, mode, data, uid, gid in sorted(entries, key=lambda e: e[0]):
            ti = tarfile.TarInfo(path + "/" if kind == "dir" else path)
            ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, MTIME
            ti.uname = ti.gname = ""
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def busybox_entries():
    with open(BUSYBOX, "rb") as fh:
        binary = fh.read()
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    entries = [d("bin"), f("bin/busybox", binary, 0o755)]
    entries += [link("bin/" + a, "busybox") for a in applets if a != "busybox"]
    entries += [d(p) for p in ("etc", "proc", "sys", "dev", "var", "home")]
    entries += [d("tmp", 0o1777), d("root", 0o700),
                f("etc/passwd", PASSWD), f("etc/group", GROUP)]
    return entries


class Layer:
    def __init__(self, entries, compression="gzip", media_type=None):
        self.tar = make_tar(entries)
        self.diff_id = sha256(self.tar)
        if compression == "gzip":
            self.blob = gzip.compress(self.tar, compresslevel=6, mtime=0)
            self.media_type = media_type or OCI_GZIP
        elif compression == "zstd":
            self.blob = subprocess.run(["zstd", "-q", "-c", "-3"], input=self.tar,
                                       check=True, capture_output=True).stdout
            self.media_type = OCI_ZSTD
        else:
            self.blob = self.tar
            self.media_type = OCI_TAR
        self.digest = sha256(self.blob)


def descriptor(media_type, blob):
    return {"mediaType": media_type, "digest": sha256(blob), "size": len(blob)}


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Image:
    """A single-platform image: config blob, layer blobs and manifest."""

    def __init__(self, layers, arch=None, variant=None, docker=False, **config):
        self.layers = layers
        self.arch, self.variant = arch or host_arch(), variant
        cfg = {"Env": [PATH_ENV], "Cmd": ["sh"]}
        cfg.update(config)
        conf = {
            "architecture": self.arch,
            "os": "linux",
            "created": CREATED,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]},
            "history": [{"created": CREATED, "created_by": "hack/build-images.py"}
                        for _ in layers],
        }
        if variant:
            conf["variant"] = variant
        self.config = canonical(conf)
        self.media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        manifest = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, self.config),
            "layers": [dict(descriptor(DOCKER_GZIP if docker else l.media_type, l.blob))
                       for l in layers],
        }
        self.manifest = json.dumps(manifest, indent=2).encode()
        self.digest = sha256(self.manifest)

    def blobs(self):
        return [self.config] + [l.blob for l in self.layers]

    def summary(self):
        return {"media_type": self.media_type,
                "manifest_digest": self.digest,
                "config_digest": sha256(self.config),
                "layers": [l.digest for l in self.layers],
                "diff_ids": [l.diff_id for l in self.layers]}


class Index:
    def __init__(self, images):
        self.images = images
        manifests = []
        for img in images:
            plat = {"architecture": img.arch, "os": "linux"}
            if img.variant:
                plat["variant"] = img.variant
            manifests.append(dict(descriptor(img.media_type, img.manifest), platform=plat))
        self.media_type = OCI_INDEX
        self.manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                    "manifests": manifests}, indent=2).encode()
        self.digest = sha256(self.manifest)

    def host(self):
        return next(i for i in self.images if i.arch == host_arch())

    def summary(self):
        out = self.host().summary()
        out.update(media_type=OCI_INDEX, manifest_digest=self.digest,
                   host_manifest_digest=self.host().digest,
                   manifests=[{"digest": i.digest, "architecture": i.arch}
                              for i in self.images])
        return out


def build_all():
    bb = busybox_entries()
    base = Layer(bb)
    busybox = Image([base])
    nonroot_layer = Layer([
        d("etc"),
        f("etc/passwd", PASSWD + "corral:x:1000:1000:corral:/home/corral:/bin/sh\n"),
        f("etc/group", GROUP + "corral:x:1000:\n"),
        d("home"),
        d("home/corral", 0o755, 1000, 1000),
    ])
    # The CRI validation suite's supplemental groups case: uid 1000 is in group 50000 by
    # /etc/group only.
    groups_layer = Layer([
        d("etc"),
        f("etc/passwd", PASSWD + "default-user:x:1000:1000:default-user:/home/default-user:/bin/sh\n"),
        f("etc/group", GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"),
    ])
    layered = [
        Layer(bb + [f("etc/corral-removed", "gone\n"), d("data"),
                    f("data/old1", "1\n"), f("data/old2", "2\n")]),
        Layer([d("etc"), f("etc/.wh.corral-removed", b""),
               d("data"), f("data/.wh..wh..opq", b""), f("data/new", "new\n")]),
        Layer([f("layer3", "3\n")]),
    ]
    arches = [("arm64", "v8"), ("amd64", None), ("s390x", None)]
    multiarch = Index([Image([base, Layer([f("arch", a + "\n")])], arch=a, variant=v)
                       for a, v in arches])
    blobs = [Layer([f("blob%d" % n,
                      hashlib.shake_256(b"corral-blob-%d" % n).digest(1 << 20))])
             for n in range(1, 5)]
    return [
        ("corral/busybox", "latest", busybox),
        ("library/busybox", "latest", busybox),
        ("corral/nonroot", "latest",
         Image([base, nonroot_layer], User="corral", WorkingDir="/home/corral")),
        ("corral/layered", "latest", Image(layered)),
        ("corral/groups", "latest", Image([base, groups_layer])),
        ("corral/zstd", "latest",
         Image([Layer(bb, "zstd"), Layer([f("zstd-marker", "zstd\n")], "zstd")])),
        ("corral/plain", "latest", Image([Layer(bb, None)])),
        ("corral/docker", "latest", Image([base], docker=True)),
        ("corral/multiarch", "latest", multiarch),
        ("corral/multilayer", "latest", Image([base] + blobs)),
        # A sandbox ("pause") image for the reference runtime in corral-cni's containerd test.
        ("corral/pause", "latest",
         Image([base], Entrypoint=["/bin/sleep", "2147483647"], Cmd=None)),
    ]


# ---- registry client -----------------------------------------------------------

class Registry:
    def __init__(self, host, user=None):
        self.base = "http://%s" % host
        self.auth = ("Basic " + base64.b64encode(user.encode()).decode()) if user else None
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method, url, data=None, headers=None, ok=(200, 201, 202)):
        req = urllib.request.Request(urllib.parse.urljoin(self.base, url), data=data,
                                     method=method, headers=dict(headers or {}))
        if self.auth:
            req.add_header("Authorization", self.auth)
        try:
            with self.opener.open(req, timeout=60) as resp:
                resp.read()
                return resp
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return e
            body = e.read()[:500].decode(errors="replace")
            raise SystemExit("build-images: %s %s -> %d %s" % (method, url, e.code, body))

    def has_blob(self, repo, digest):
        return self.request("HEAD", "/v2/%s/blobs/%s" % (repo, digest),
                            ok=(200, 404)).status == 200

    def push_blob(self, repo, blob):
        digest = sha256(blob)
        if self.has_blob(repo, digest):
            return
        resp = self.request("POST", "/v2/%s/blobs/uploads/" % repo)
        loc = resp.headers["Location"]
        loc += ("&" if "?" in loc else "?") + urllib.parse.urlencode({"digest": digest})
        self.request("PUT", loc, data=blob,
                     headers={"Content-Type": "application/octet-stream"})

    def push_manifest(self, repo, ref, media_type, body):
        resp = self.request("PUT", "/v2/%s/manifests/%s" % (repo, ref), data=body,
                            headers={"Content-Type": media_type})
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != sha256(body):
            raise SystemExit("build-images: digest mismatch for %s:%s" % (repo, ref))

    def push_image(self, repo, ref, img):
        for blob in img.blobs():
            self.push_blob(repo, blob)
        self.push_manifest(repo, ref, img.media_type, img.manifest)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("registry", help="HOST:PORT (plain HTTP)")
    ap.add_argument("--user", help="USER:PASS for basic auth")
    ap.add_argument("--only", action="append", help="push only this repository")
    ap.add_argument("--out", help="write a JSON summary here")
    args = ap.parse_args()

    reg = Registry(args.registry, args.user)
    summary = {}
    images = build_all()
    if args.only:
        unknown = set(args.only) - {name for name, _, _ in images}
        if unknown:
            raise SystemExit("build-images: unknown repository %s" % ", ".join(sorted(unknown)))
    for name, tag, img in images:
        if args.only and name not in args.only:
            continue
        if isinstance(img, Index):
            for sub in img.images:
                reg.push_image(name, sub.digest, sub)
            reg.push_manifest(name, tag, img.media_type, img.manifest)
        else:
            reg.push_image(name, tag, img)
        summary["%s:%s" % (name, tag)] = img.summary()
        print("%s:%s %s" % (name, tag, img.digest), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
            fh.write("\n")


if __name__ == "__main__":
    sys.exit(main())
