#!/usr/bin/env python3
"""Start what a launch file declares, as `ros2 launch` would (ros2 launch
is not installable from PyPI): `python3 scripts/launch_run.py
launch/flowpilot.launch.xml params_file:=... model:=...`. The reader is
`flowpilot_py.launch` (python/; `source .ros/env.sh` puts it on the path)."""
try:
    from flowpilot_py.launch import main
except ImportError as e:
    raise SystemExit(f"{e}: run `source .ros/env.sh` first (it puts python/ on PYTHONPATH)")

if __name__ == "__main__":
    main()
