#!/usr/bin/env python3
"""Checks that the workspace's `rust-version` is what Cargo.lock really needs.

Usage: check_rust_version.py [ROOT]   (default: the repository this script is in)

The need is the highest `rust-version` among the locked dependencies, on any
target (as `cargo metadata` resolves them, dev- and build-dependencies
included). Every workspace member must declare exactly that: a lower one
promises a toolchain the lock cannot build with, a higher one refuses
toolchains that would do. Prints the verdict; exits 1 on a mismatch.
"""

import json
import subprocess
import sys
from pathlib import Path


def version(text):
    """`1.94.1` or `1.88` as a comparable tuple (a missing patch is 0)."""
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def needed(metadata):
    """The highest rust-version among non-workspace packages, and who sets it."""
    members = set(metadata["workspace_members"])
    found = [
        (version(package["rust_version"]), package["rust_version"], f"{package['name']} {package['version']}")
        for package in metadata["packages"]
        if package["id"] not in members and package.get("rust_version")
    ]
    if not found:
        return None, []
    top = max(found)[0]
    return top, sorted({(text, who) for key, text, who in found if key == top})


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            cwd=root,
            check=True,
            stdout=subprocess.PIPE,
        ).stdout
    )
    top, setters = needed(metadata)
    if top is None:
        print("rust-version: no locked dependency declares one")
        return 0
    declared = {
        package["name"]: package.get("rust_version")
        for package in metadata["packages"]
        if package["id"] in set(metadata["workspace_members"])
    }
    wrong = {name: value for name, value in declared.items() if value is None or version(value) != top}
    need = setters[0][0]
    by = ", ".join(who for _, who in setters[:3]) + (f" and {len(setters) - 3} more" if len(setters) > 3 else "")
    if wrong:
        for name, value in sorted(wrong.items()):
            print(f"rust-version: {name} declares {value}, but the lock needs {need} ({by})")
        print(f"set [workspace.package] rust-version = \"{need}\" in Cargo.toml")
        return 1
    print(f"rust-version {need} ok: what the lock needs ({by})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
