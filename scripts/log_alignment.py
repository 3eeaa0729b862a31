#!/usr/bin/env python3
"""Check a HIL run's transition log against the sim's ground truth
(docs/hil.md): `python3 scripts/log_alignment.py LOG TRUTH.npz`. The
analysis is `flowpilot_py.alignment` (python/; `source .ros/env.sh` puts it
on the path)."""
try:
    from flowpilot_py.alignment import main
except ImportError as e:
    raise SystemExit(f"{e}: run `source .ros/env.sh` first (it puts python/ on PYTHONPATH)")

if __name__ == "__main__":
    main()
