#!/usr/bin/env python3
"""Run what a launch XML file declares, without `ros2 launch` (which no
package registry carries): resolve its <arg>s (defaults, or name:=value
overrides) and $(find-pkg-share)/$(var) substitutions, then exec each
<node>'s executable with its remapped name, params files and params.

  python3 scripts/launch_run.py launch/flowpilot.launch.xml [name:=value ...] [--install PREFIX_DIR] [--print]

Without --install, packages resolve to this source tree (share -> the repo
root, executables -> target/release); with --install (a colcon install
directory), through its ament index, as ros2 launch would.
"""
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

from .paths import ROOT


def pkg_prefix(pkg, install):
    for prefix in [os.path.join(install, d) for d in sorted(os.listdir(install))]:
        if os.path.exists(os.path.join(prefix, "share", "ament_index", "resource_index", "packages", pkg)):
            return prefix
    raise SystemExit(f"package {pkg} not in the ament index under {install}")


def share_dir(pkg, install):
    return os.path.join(pkg_prefix(pkg, install), "share", pkg) if install else ROOT


def exe_path(pkg, exe, install):
    if install:
        return os.path.join(pkg_prefix(pkg, install), "lib", pkg, exe)
    return os.path.join(ROOT, "target", "release", exe)


def resolve(text, args, install):
    def sub(m):
        kind, val = m.group(1), m.group(2).strip()
        if kind == "find-pkg-share":
            return share_dir(val, install)
        if kind == "var":
            return args[val]
        raise SystemExit(f"unsupported substitution $({kind} ...)")
    return re.sub(r"\$\(([\w-]+) ([^)]*)\)", sub, text)


def commands(launch_file, overrides, install=None):
    root = ET.parse(launch_file).getroot()
    args = {}
    for a in root.findall("arg"):
        name = a.get("name")
        args[name] = overrides[name] if name in overrides else resolve(a.get("default", ""), args, install)
    cmds = []
    for n in root.findall("node"):
        cmd = [exe_path(n.get("pkg"), n.get("exec"), install), "--ros-args"]
        if n.get("name"):
            cmd += ["-r", f"__node:={n.get('name')}"]
        for p in n.findall("param"):
            if p.get("from"):
                cmd += ["--params-file", resolve(p.get("from"), args, install)]
            else:
                cmd += ["-p", f"{p.get('name')}:={resolve(p.get('value'), args, install)}"]
        cmds.append(cmd)
    return cmds


def main():
    argv = sys.argv[1:]
    install = None
    if "--install" in argv:
        i = argv.index("--install")
        install = argv[i + 1]
        del argv[i:i + 2]
    show = "--print" in argv
    argv = [a for a in argv if a != "--print"]
    overrides = dict(a.split(":=", 1) for a in argv[1:])
    cmds = commands(argv[0], overrides, install)
    if show:
        for c in cmds:
            print(" ".join(c))
        return 0
    procs = [subprocess.Popen(c) for c in cmds]

    def stop(*_):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main())
