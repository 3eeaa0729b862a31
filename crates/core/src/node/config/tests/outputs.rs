//! The command output in the configuration: the action kind against the
//! model's width, and what the node says it commands and where it measures
//! positions.

use super::*;

const STOP_REFUSED: &str = "'safe_behaviour': stop is refused on a float64_multi_array velocity or effort value (a forward command controller keeps the last command, with no timeout, so sending nothing leaves the robot moving): use zero";

#[test]
fn action_kind_checks_the_model_width() {
    let traj = ActionKind::JointTrajectory {
        joints: vec!["a".into(), "b".into()],
    };
    assert!(traj.check_act_dim(2).is_ok());
    let e = traj.check_act_dim(3).unwrap_err();
    assert_eq!(
        e.to_string(),
        "'action.joints' names 2 joints, the model outputs 3 actions"
    );
    for d in [2, 3, 6] {
        assert!(ActionKind::Twist.check_act_dim(d).is_ok());
    }
    assert_eq!(
        ActionKind::Twist.check_act_dim(4).unwrap_err().to_string(),
        "twist actions need 2 (vx, wz), 3 (vx, vy, wz) or 6 values; the model outputs 4"
    );
    assert!(ActionKind::Float64MultiArray.check_act_dim(17).is_ok());
}

#[test]
fn the_output_says_what_it_commands_and_where_positions_are_measured() {
    let f64a = |kv: &[(&str, ParamValue)]| {
        let mut m = minimal();
        m.remove("action.interface");
        with(m, kv)
    };
    assert_rejected(vec![
        (
            f64a(&[]),
            "action.interface",
            "'action.interface' is required for float64_multi_array: say what the values command (position, velocity or effort, or one per value), so that a stop holds a position instead of commanding 0",
        ),
        (
            f64a(&[("action.interface", s("torque"))]),
            "action.interface",
            "'action.interface': unknown interface 'torque' (position, velocity or effort)",
        ),
        (
            f64a(&[("action.type", s("twist")), ("action.interface", s("position"))]),
            "action.interface",
            "'action.interface': this action.type commands velocity, not position",
        ),
        (
            f64a(&[
                ("action.type", s("joint_trajectory")),
                ("action.joints", ss(&["j1", "j2"])),
                ("action.interface", s("velocity")),
            ]),
            "action.interface",
            "'action.interface': this action.type commands position, not velocity",
        ),
        (
            f64a(&[("action.interface", ss(&["position", "effort"]))]),
            "safe_behaviour",
            "'safe_behaviour': hold is refused on an effort interface (a torque cannot hold a place; the stop sends zero effort): use zero",
        ),
        (
            f64a(&[("action.interface", s("position")), ("safe_behaviour", s("zero"))]),
            "safe_behaviour",
            "'safe_behaviour': zero is refused on a position interface (0 is a place, and the arm would jump there): use hold or stop",
        ),
        (
            f64a(&[
                ("action.type", s("joint_trajectory")),
                ("action.joints", ss(&["j1", "j2"])),
                ("safe_behaviour", s("zero")),
            ]),
            "safe_behaviour",
            "'safe_behaviour': zero is refused on a position interface (0 is a place, and the arm would jump there): use hold or stop",
        ),
        (
            f64a(&[("action.interface", s("velocity")), ("safe_behaviour", s("stop"))]),
            "safe_behaviour",
            STOP_REFUSED,
        ),
        (
            f64a(&[("action.interface", ss(&["position", "effort"])), ("safe_behaviour", s("stop"))]),
            "safe_behaviour",
            STOP_REFUSED,
        ),
        (
            f64a(&[("action.interface", s("position")), ("action.state_source", s("nope"))]),
            "action.state_source",
            "'action.state_source': 'nope' is not one of the observations or goals",
        ),
        (
            f64a(&[("action.interface", s("position")), ("action.state_source", s("arm"))]),
            "action.joints",
            "'action.joints' must name the commanded joints to read them from action.state_source",
        ),
        (
            f64a(&[
                ("action.interface", s("position")),
                ("action.joints", ss(&["j1", "j9"])),
                ("action.state_source", s("arm")),
            ]),
            "action.state_source",
            "'action.state_source': 'arm' does not read joint 'j9' of action.joints",
        ),
        (
            f64a(&[
                ("action.interface", s("velocity")),
                ("action.joints", ss(&["j1", "j2"])),
                ("action.state_source", s("arm")),
            ]),
            "action.state_source",
            "'action.state_source': 'arm' measures positions, and no action value commands one",
        ),
    ]);
    // A measured arm: joint-major position, velocity; joints in any order.
    let m = f64a(&[
        ("sources.arm.fields", ss(&["position", "velocity"])),
        ("action.interface", ss(&["position", "velocity"])),
        ("action.joints", ss(&["j2", "j1"])),
        ("action.state_source", s("arm")),
    ]);
    let c = NodeConfig::from_params(&m).unwrap();
    let rule = c.stop_rule(2).unwrap();
    assert_eq!(
        rule.interfaces(),
        &[Interface::Position, Interface::Velocity]
    );
    assert_eq!(rule.state_source(), Some(0));
    let mut out = [9.0; 2];
    // board values: q1, v1, q2, v2 -> joint j2's position is value 2
    let kind = rule.fill(Some(&[0.1, 1.0, 0.2, 2.0]), None, &mut out);
    assert_eq!(
        (kind, out),
        (crate::rt::stop::StopKind::HoldMeasured, [0.2, 0.0])
    );
    assert_eq!(
        c.stop_rule(3).unwrap_err().to_string(),
        "'action.interface' lists 2 interfaces, the model outputs 3 actions"
    );
    // One interface stands for every value; twist and trajectories imply theirs.
    let c = NodeConfig::from_params(&f64a(&[
        ("action.interface", s("effort")),
        ("safe_behaviour", s("zero")),
    ]))
    .unwrap();
    assert_eq!(
        c.stop_rule(3).unwrap().interfaces(),
        &[Interface::Effort; 3]
    );
    let c = NodeConfig::from_params(&f64a(&[("action.type", s("twist"))])).unwrap();
    assert_eq!(
        c.stop_rule(2).unwrap().interfaces(),
        &[Interface::Velocity; 2]
    );
}

#[test]
fn stop_is_kept_where_the_receiver_stops_or_holds_by_itself() {
    // A Twist consumer times out (diff_drive_controller, twist_mux); a
    // position controller and a trajectory controller hold the last
    // set-point: sending nothing leaves the robot still.
    let m = |kv: &[(&str, ParamValue)]| {
        let mut m = with(minimal(), kv);
        m.insert("safe_behaviour".into(), s("stop"));
        m
    };
    for ok in [
        m(&[("action.type", s("twist"))]),
        m(&[("action.interface", s("position"))]),
        m(&[
            ("action.type", s("joint_trajectory")),
            ("action.joints", ss(&["j1", "j2"])),
            ("action.interface", s("position")),
        ]),
    ] {
        let c = NodeConfig::from_params(&ok).unwrap();
        assert_eq!(c.safe, SafeBehaviour::Stop);
    }
}
