#!/usr/bin/env python3
"""Proves setup.sh's package list against what the build and the scripts really read.

A package installed by hand on the CI machine hides a missing install step (that is how the first
README command came to fail on a fresh machine: Debian's oneDNN CMake config needs OpenCL, which
libdnnl-dev only recommends). This check collects the files the build read and the programs and
libraries the scripts use, maps each to the Debian package that owns it, and requires every such
package to be in the Depends-only closure of `setup.sh --list --all` (what
`apt-get install --no-install-recommends` of that list brings onto a fresh Debian 12), or part of
every Debian system (Essential or Priority: required).

  .ci/check_packages.py BUILD_DIR [--without PKG ...]

--without drops packages from setup.sh's list, to show that the check fails when the list is short
(CI runs it with --without ocl-icd-opencl-dev and requires the failure to name that package).
Exit 0: complete; 1: packages missing (each named with a file that needs it); 2: usage.
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def file_owners():
    """file path -> package, from dpkg's own lists (one pass; dpkg -S per file is slow)."""
    owners = {}
    for listing in glob.glob("/var/lib/dpkg/info/*.list"):
        package = os.path.basename(listing)[: -len(".list")].split(":")[0]
        with open(listing, errors="replace") as f:
            for line in f:
                owners.setdefault(line.rstrip("\n"), package)
    return owners


def owner_of(path, owners):
    """The package owning `path`, trying the /usr-merged spelling and the resolved link."""
    candidates = [path, os.path.realpath(path)]
    for p in list(candidates):
        for a, b in (("/usr/lib/", "/lib/"), ("/usr/bin/", "/bin/"), ("/usr/sbin/", "/sbin/")):
            if p.startswith(a):
                candidates.append(b + p[len(a):])
            elif p.startswith(b):
                candidates.append(a + p[len(b):])
    for p in candidates:
        if p in owners:
            return owners[p]
    return None


def cmake_files(build_dir):
    """Every CMake file a fresh configure reads, and every file path its cache holds."""
    files = set()
    with tempfile.TemporaryDirectory() as scratch:
        trace = os.path.join(scratch, "trace.json")
        run(["cmake", "-S", ROOT, "-B", os.path.join(scratch, "b"), "-G", "Ninja",
             "-DCMAKE_BUILD_TYPE=Release", "--trace-expand", "--trace-format=json-v1",
             "--trace-redirect=" + trace])
        with open(trace) as f:
            for line in f:
                entry = json.loads(line)
                if "file" in entry:
                    files.add(entry["file"])
        with open(os.path.join(scratch, "b", "CMakeCache.txt")) as f:
            for line in f:
                m = re.match(r"^[A-Za-z0-9_]+:(FILEPATH|PATH)=(/.+)$", line.strip())
                if m and os.path.isfile(m.group(2)):
                    files.add(m.group(2))
    return files


def compiled_files(build_dir):
    """Headers every object was compiled against (the compiler's dependency files)."""
    out = run(["ninja", "-C", build_dir, "-t", "deps"])
    return {line.strip() for line in out.splitlines() if line.startswith("    /")}


def linked_files(build_dir):
    """Libraries named on the link lines, and those the built programs load."""
    files = set()
    for line in run(["ninja", "-C", build_dir, "-t", "commands"]).splitlines():
        if " -o " not in line:
            continue
        for token in line.split():
            if token.startswith("/") and re.search(r"\.(so(\.[0-9.]+)?|a)$", token):
                files.add(token)
    for exe in glob.glob(os.path.join(build_dir, "**", "*"), recursive=True):
        if os.path.isfile(exe) and os.access(exe, os.X_OK) and not exe.endswith((".sh", ".py")):
            try:
                out = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout
            except OSError:
                continue
            files.update(re.findall(r"=> (/\S+)", out))
    return files


def tool_files():
    """Programs the README, CI and the test scripts run."""
    files = set()
    files.add("/usr/bin/python3")  # the scripts name Debian's interpreter, not the first on PATH
    for tool in ("cmake", "ninja", "c++", "mpirun", "ip", "tc", "clang++-14"):
        path = subprocess.run(["sh", "-c", "command -v " + tool], capture_output=True, text=True).stdout.strip()
        if path:
            files.add(path)
    return files


PYTHON_PROBE = r"""
import json, sys
before = set(sys.modules)   # what the interpreter's own start-up loaded (site, .pth hooks)
import numpy, torch, matplotlib, matplotlib.pyplot
torch.ones(64, 64) @ torch.ones(64, 64)   # loads torch's BLAS
try:
    import moe_ep   # the module the build made (BUILD_DIR/python), and the libraries it links
except ImportError:
    pass
files = [m.__file__ for name, m in list(sys.modules.items())
         if name not in before and getattr(m, "__file__", None)]
with open("/proc/self/maps") as f:
    files += [l.split()[-1] for l in f if l.rstrip().endswith(".so") or ".so." in l]
print(json.dumps(files))
"""


def python_files(build_dir):
    """Modules and shared libraries the Python scripts load (torch, numpy, matplotlib, moe_ep)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(build_dir, "python"))
    out = run(["/usr/bin/python3", "-c", PYTHON_PROBE], env=env)
    return {f for f in json.loads(out) if f.startswith("/")}


def closure(packages):
    """The Depends/PreDepends closure of `packages` (what --no-install-recommends installs)."""
    out = run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
               "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + packages)
    names = set()
    for line in out.splitlines():
        if not line.startswith(" "):
            names.add(line.strip().strip("<>").split(":")[0])
        else:
            m = re.match(r"\s+\|?(Pre)?Depends: <?([^<>\s]+)>?", line)
            if m:
                names.add(m.group(2).split(":")[0])
    return names


def base_system():
    out = run(["dpkg-query", "-W", "-f", "${Package} ${Essential} ${Priority}\n"])
    return {l.split()[0] for l in out.splitlines() if " yes " in l or l.endswith(" required")}


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    build_dir, without = args[0], []
    rest = args[1:]
    while rest:
        if rest[0] == "--without" and len(rest) > 1:
            without.append(rest[1])
            rest = rest[2:]
        else:
            print("check_packages: unknown argument " + rest[0], file=sys.stderr)
            return 2
    listed = [p for p in run([os.path.join(ROOT, "setup.sh"), "--list", "--all"]).split() if p not in without]
    allowed = closure(listed) | base_system()

    owners = file_owners()
    sources = {"configure": cmake_files(build_dir), "compile": compiled_files(build_dir),
               "link": linked_files(build_dir), "tools": tool_files(), "python": python_files(build_dir)}
    needed, foreign = {}, set()
    for stage, files in sources.items():
        for path in sorted(files):
            if path.startswith((ROOT, build_dir, os.path.realpath(build_dir), "/tmp/")):
                continue
            package = owner_of(path, owners)
            if package is None:
                foreign.add(path.split("/")[1] + "/" + path.split("/")[2] if path.count("/") > 2 else path)
            else:
                needed.setdefault(package, (stage, path))

    missing = {p: why for p, why in needed.items() if p not in allowed}
    # torch runs on whatever BLAS the alternatives point at, and apt takes the first alternative:
    # Debian's reference BLAS, ~15x slower. OpenBLAS must be loaded, and named in the list itself
    # (the closure above counts every alternative).
    blas = [f for f in sources["python"] if "libblas" in f or "openblas" in f]
    if "libopenblas0-pthread" not in listed or not any("openblas" in os.path.realpath(f) for f in blas):
        missing["libopenblas0-pthread"] = ("python", "torch's BLAS (" + ", ".join(sorted(
            os.path.realpath(f) for f in blas)) + "), which must be OpenBLAS")
    print(f"check_packages: {len(needed)} packages own what configure, compile, link, the tools and "
          f"the Python scripts read; setup.sh lists {len(listed)} (closure {len(allowed)} with the base system)")
    if foreign:
        print("check_packages: not from a Debian package (not checked): " + ", ".join(sorted(foreign)[:8]))
    if missing:
        for package, (stage, path) in sorted(missing.items()):
            print(f"check_packages: MISSING {package}: {stage} needs {path}, but setup.sh does not install it")
        return 1
    print("check_packages: setup.sh installs everything the build and the scripts read")
    return 0


if __name__ == "__main__":
    sys.exit(main())
