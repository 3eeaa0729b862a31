"""Live parameters through the standard ROS 2 parameter services: an rclpy
parameter client reads and changes the running node's parameters; live
ones apply between two ticks, structural ones are refused with a reason,
and every accepted change is announced on /parameter_events."""
import bisect
import time

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterEvent
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from std_msgs.msg import Float64MultiArray

from flowpilot_py.testkit import result, BEST_EFFORT, DECISION, RELIABLE, NodeProc, diag, wait_for

POLICY = DECISION["policy"]


def test_live_parameters_apply_between_ticks_and_structural_ones_are_refused(domain, peer, tmp_path):
    pub = peer.node.create_publisher(Float64MultiArray, "/pointmass/state", BEST_EFFORT)
    peer.node.create_timer(0.005, lambda: pub.publish(Float64MultiArray(data=[0.05, -1.1])))
    trace = peer.collect(Float64MultiArray, "/flowpilot/action_trace", RELIABLE)
    diags = peer.collect(DiagnosticArray, "/diagnostics", RELIABLE)
    events = peer.collect(ParameterEvent, "/parameter_events", RELIABLE)
    log_dir = tmp_path / "log"
    # live.allow_loosen: the rate limit is lifted again below (test_attack_params.py
    # has the default, tighten-only, node)
    node = NodeProc(domain, ("-p", "rate_hz:=500.0", "-p", "startup_hold:=0.0", "-p", "diagnostics_period:=0.2",
                             "-p", f"log.dir:={log_dir}", "-p", "log.every:=5", "-p", "live.allow_loosen:=true"))
    client = AsyncParameterClient(peer.node, "flowpilot")
    try:
        assert client.wait_for_services(timeout_sec=10)

        def steps(since):
            """|Δ action| between consecutive policy ticks after `since`."""
            # the trace only grows, in receive order: read just the tail
            # (scanning all of it every 10 ms costs a core on this VM)
            tail = trace[bisect.bisect_right(trace, since, key=lambda e: e[0]):]
            d = [(int(m.data[0]), m.data[5:7]) for _, m in tail if m.data[1] == POLICY]
            return [max(abs(a - b) for a, b in zip(x, y)) for (i, x), (j, y) in zip(d, d[1:]) if j == i + 1]

        wait_for(lambda: len(steps(0)) > 100, 15, "policy ticks")
        assert max(steps(0)) > 0.05, "the configured max_delta (0.5) lets the samples jump"
        names = result(client.list_parameters([], 0), "list").result.names
        assert {"model", "rate_hz", "max_delta", "temperature", "sources.state.max_age"} <= set(names), names
        got = result(client.get_parameters(["rate_hz", "model"]), "get").values
        assert got[0].double_value == 500.0 and got[1].string_value.endswith("pointmass_flow.safetensors")
        wait_for(lambda: diags, 5, "diagnostics")
        # this machine's own misses over 2 s without changes, for comparison
        baseline_start, t_base = int(diag(diags)["overruns"]), time.monotonic()
        time.sleep(2.0)
        overruns_before, t_changes = int(diag(diags)["overruns"]), time.monotonic()
        baseline = overruns_before - baseline_start
        baseline_rate = baseline / (t_changes - t_base)

        # live: a tight rate limit applies between two ticks
        r = result(client.set_parameters([Parameter("max_delta", value=[0.001, 0.001])]), "set max_delta").results
        assert r[0].successful, r[0].reason
        t = time.monotonic() + 0.05
        wait_for(lambda: len(steps(t)) > 100, 5, "ticks after the change")
        assert max(steps(t)) <= 0.001 + 1e-9, max(steps(t))
        # live: temperature 0 is the deterministic action (constant input, so
        # the action stops moving once the rate limit is lifted)
        r = result(client.set_parameters([Parameter("temperature", value=0.0),
                                        Parameter("max_delta", value=[10.0, 10.0])]), "set temperature").results
        assert all(x.successful for x in r), [x.reason for x in r]
        t = time.monotonic() + 0.05
        wait_for(lambda: len(steps(t)) > 100, 5, "ticks after the change")
        assert max(steps(t)) == 0.0, max(steps(t))
        # checked by the start-up rules, all or nothing
        r = result(client.set_parameters([Parameter("temperature", value=2.0)]), "bad temperature").results
        assert not r[0].successful and "'temperature' must be" in r[0].reason, r[0].reason
        r = result(client.set_parameters([Parameter("max_delta", value=[0.1])]), "short max_delta").results
        assert not r[0].successful and "2 values" in r[0].reason, r[0].reason
        # structural: read-only, with the reason
        r = result(client.set_parameters([Parameter("model", value="/tmp/other.safetensors")]), "set model").results
        assert not r[0].successful and "read-only while the node runs" in r[0].reason, r[0].reason
        assert result(client.get_parameters(["temperature"]), "get").values[0].double_value == 0.0
        desc = result(client.describe_parameters(["model", "temperature", "max_delta", "startup_hold"]),
                    "describe").descriptors
        assert desc[0].read_only and not desc[1].read_only
        # from the parameter table: type, default, live rule, range
        assert desc[2].description.startswith("double[], default off; live"), desc[2].description
        assert desc[3].read_only and (desc[3].floating_point_range[0].from_value,
                                      desc[3].floating_point_range[0].to_value) == (0.0, 3600.0)
        # announced
        wait_for(lambda: any(p.name == "temperature" for _, e in list(events) for p in e.changed_parameters), 5,
                 "a parameter event")
        # No stall caused by the changes. That applying one is a copy
        # between two ticks, without allocation or lock, is proven by
        # crates/core/tests/runner_alloc.rs; here the misses of the window
        # with the changes are compared with this machine's own rate just
        # before, as a guard against gross regressions only (e.g. a change
        # that blocks the control thread). The margin is from measured
        # noise: misses in the ~1.1 s window minus the baseline's rate over
        # it reached 23 in 11 runs here and 37 in CI (2 in the 2 s baseline,
        # then 40 - 2): a 2-core VM with hypervisor steal. 60 is 120 ms of
        # ticks at 500 Hz: three changes that each stalled the loop 50 ms
        # or more would fail it.
        time.sleep(0.5)
        allowed = max(baseline, baseline_rate * (time.monotonic() - t_changes)) + 60
        assert int(diag(diags)["overruns"]) - overruns_before <= allowed, (baseline, allowed)
    finally:
        assert node.stop() == 0
    # every accepted change is in the transition log, in order, as metadata
    from mcap.reader import make_reader
    (f,) = log_dir.glob("*.mcap")
    with open(f, "rb") as fh:
        notes = [dict(m.metadata) for m in make_reader(fh).iter_metadata() if m.name == "parameter_change"]
    assert [n["name"] for n in notes] == ["max_delta", "temperature", "max_delta"], notes
    assert notes[1]["value"] == "Double(0.0)" and int(notes[1]["wall_ns"]) > 0
