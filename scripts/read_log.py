#!/usr/bin/env python3
"""Read flowpilot transition logs: `python3 scripts/read_log.py LOG.mcap`
(a summary) or `... LOG_DIR --npz out.npz`. The reader is
`flowpilot_py.logs` (python/; `source .ros/env.sh` puts it on the path)."""
try:
    from flowpilot_py.logs import main
except ImportError as e:
    raise SystemExit(f"{e}: run `source .ros/env.sh` first (it puts python/ on PYTHONPATH)")

if __name__ == "__main__":
    main()
