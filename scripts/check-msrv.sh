#!/usr/bin/env bash
# Fails when a dependency in Cargo.lock declares a rust-version newer than the workspace's
# `rust-version` (Cargo.toml): then that key would no longer be the real minimum. Our own code
# is held to the same key by clippy's incompatible_msrv lint (every crate inherits the key).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import json, re, subprocess, sys

def version(text):
    return (tuple(int(part) for part in re.findall(r"\d+", text)) + (0, 0, 0))[:3]

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked"],
    check=True, capture_output=True, text=True).stdout)
ours = set(meta["workspace_members"])
claimed = {p["rust_version"] for p in meta["packages"] if p["id"] in ours}
if len(claimed) != 1 or None in claimed:
    sys.exit(f"check-msrv: every workspace crate must inherit one rust-version, found {sorted(map(str, claimed))}")
claimed = claimed.pop()
newer = sorted(
    f"{p['name']} {p['version']} needs {p['rust_version']}"
    for p in meta["packages"]
    if p["id"] not in ours and p.get("rust_version")
    and version(p["rust_version"]) > version(claimed)
)
if newer:
    sys.exit(f"check-msrv: rust-version is {claimed}, but:\n  " + "\n  ".join(newer))
print(f"check-msrv: rust-version {claimed} covers every dependency")
PY
