"""flowpilot's Python side, one package for the tests, benches, scripts and
sims: where things are (`paths`), the cross-process contract read from
`flowpilot contract --json` (`contract`), the ROS 2 test kit (`testkit`:
an rclpy peer, a node process, service calls, parameter and model
builders), transition log reading (`logs`) and network namespaces for the
multi-host tests (`netns`).

On the path through `source .ros/env.sh` (PYTHONPATH) or pytest.ini
(`pythonpath`); nothing edits `sys.path`.
"""
