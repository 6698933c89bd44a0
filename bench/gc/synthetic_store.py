#!/usr/bin/env python3
"""Builds a synthetic modelcache store for timing `modelcache gc --dry-run`.

usage: synthetic_store.py DIR [REPOS] [COMMITS] [FILES]
Each repo gets COMMITS snapshots of FILES small files (one blob each, one shared config) and an
artifact name with one version per commit whose files are hard links of the blobs, the newest
`current`. DIR/state/status/ is created empty (no resource references anything).
"""
import hashlib, json, os, sys

root = sys.argv[1]
repos = int(sys.argv[2]) if len(sys.argv) > 2 else 100
commits = int(sys.argv[3]) if len(sys.argv) > 3 else 5
files = int(sys.argv[4]) if len(sys.argv) > 4 else 20
os.makedirs(f"{root}/state/status", exist_ok=True)
os.makedirs(f"{root}/hub", exist_ok=True)
for r in range(repos):
    folder = f"{root}/hub/models--org--m{r}"
    os.makedirs(f"{folder}/blobs", exist_ok=True)
    for c in range(commits):
        commit = hashlib.sha1(f"{r}-{c}".encode()).hexdigest()
        entries = []
        for f in range(files):
            data = b"shared config" if f == 0 else f"{r}-{c}-{f}".encode() * 64
            etag = hashlib.sha256(data).hexdigest()
            blob = f"{folder}/blobs/{etag}"
            if not os.path.exists(blob):
                with open(blob, "wb") as out:
                    out.write(data)
                # The download lock file a real download leaves behind (as huggingface_hub does).
                locks = f"{root}/hub/.locks/models--org--m{r}"
                os.makedirs(locks, exist_ok=True)
                open(f"{locks}/{etag}.lock", "w").close()
            snap = f"{folder}/snapshots/{commit}"
            os.makedirs(snap, exist_ok=True)
            link = f"{snap}/f{f}.bin"
            if not os.path.lexists(link):
                os.symlink(f"../../blobs/{etag}", link)
            entries.append((f"f{f}.bin", blob, len(data), etag))
        version = hashlib.sha256(f"v{r}-{c}".encode()).hexdigest()[:12]
        vdir = f"{root}/artifacts/m{r}/{version}"
        os.makedirs(vdir, exist_ok=True)
        for name, blob, size, etag in entries:
            if not os.path.exists(f"{vdir}/{name}"):
                os.link(blob, f"{vdir}/{name}")
        # Not a digest-valid manifest: GC only reads its source, as it does for damaged ones.
        with open(f"{vdir}/modelcache.json", "w") as out:
            json.dump({"formatVersion": 1, "name": f"m{r}", "version": version,
                       "source": {"type": "model", "repo": f"org/m{r}", "commit": commit}}, out)
        cur = f"{root}/artifacts/m{r}/current"
        if os.path.lexists(cur):
            os.unlink(cur)
        os.symlink(version, cur)
