//! The configuration's unit tests: every parameter's parsing, defaults,
//! ranges and messages.

use super::*;
use ParamValue as V;

mod outputs;
mod sources;

fn s(v: &str) -> ParamValue {
    V::String(v.into())
}
fn ss(v: &[&str]) -> ParamValue {
    V::StringArray(v.iter().map(|x| x.to_string()).collect())
}

/// The smallest valid parameter set: a model and one source.
fn minimal() -> ParamMap {
    [
        ("model", s("policy.safetensors")),
        ("observations", ss(&["arm"])),
        ("sources.arm.type", s("joint_state")),
        ("sources.arm.topic", s("/joint_states")),
        ("sources.arm.joints", ss(&["j1", "j2"])),
        ("action.interface", s("velocity")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn with(mut m: ParamMap, kvs: &[(&str, ParamValue)]) -> ParamMap {
    for (k, v) in kvs {
        m.insert(k.to_string(), v.clone());
    }
    m
}

fn err(m: &ParamMap) -> ConfigError {
    NodeConfig::from_params(m).expect_err("must be rejected")
}

/// Each set is refused, naming `param`, with exactly `msg`.
fn assert_rejected(cases: Vec<(ParamMap, &str, &str)>) {
    for (m, param, msg) in cases {
        let e = err(&m);
        assert_eq!(e.parameter(), param, "{e}");
        assert_eq!(chain(&e), msg);
    }
}

/// The whole chain, as the node prints it (`{:#}` of the anyhow error).
fn chain(e: &ConfigError) -> String {
    let mut s = e.to_string();
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        s = format!("{s}: {next}");
        cur = next;
    }
    s
}

#[test]
fn defaults() {
    let c = NodeConfig::from_params(&minimal()).unwrap();
    assert_eq!(c.model, "policy.safetensors");
    assert_eq!(c.rate_hz, 100.0);
    assert_eq!(c.seed, 0);
    assert_eq!(c.safe, SafeBehaviour::Hold);
    assert_eq!(c.warmup_ticks, 10);
    assert_eq!(c.startup_hold_s, 1.0);
    assert!(c.max_delta.is_none());
    assert!(c.goals.is_empty());
    assert_eq!(c.action_topic, "~/action");
    assert_eq!(c.action, ActionKind::Float64MultiArray);
    assert_eq!(c.command.interfaces, vec![Interface::Velocity]);
    assert!(c.command.state_source.is_none());
    assert!(!c.action_best_effort);
    assert_eq!((c.fifo_priority, c.cpu, c.mlockall), (None, None, false));
    assert_eq!(c.diagnostics_period_s, 1.0);
    assert!(c.hot_swap_dir.is_none());
    assert_eq!(c.hot_swap_poll_s, 0.5);
    assert_eq!(c.hot_swap_max_divergence, 0.0);
    assert_eq!(c.hot_swap_guard.episodes, 20);
    assert!(!c.hot_swap_guard.hold);
    assert!(c.log.is_none());
    assert!(c.override_input.is_none());
    assert!(c.finetune_args.is_empty() && c.finetune_exe.is_none());
    let arm = &c.observations[0];
    assert_eq!(arm.name, "arm");
    assert_eq!(arm.topic, "/joint_states");
    assert_eq!(arm.max_age_s, 0.5);
    assert!(arm.best_effort);
    assert_eq!(
        arm.kind,
        SourceKind::JointState {
            joints: vec!["j1".into(), "j2".into()],
            fields: vec![JointField::Position],
        }
    );
    assert_eq!(arm.kind.width(), 2);
}

#[test]
fn full_config() {
    let m = with(
        minimal(),
        &[
            ("rate_hz", V::Integer(250)),
            ("seed", V::Integer(7)),
            ("safe_behaviour", s("stop")),
            ("warmup_ticks", V::Integer(0)),
            ("startup_hold", V::Double(0.25)),
            ("max_delta", V::IntegerArray(vec![1, 2])),
            ("sources.arm.fields", ss(&["position", "velocity"])),
            ("sources.arm.qos", s("reliable")),
            ("sources.arm.max_age", V::Double(0.1)),
            ("goals", s("target")),
            ("sources.target.type", s("pose_stamped")),
            ("sources.target.topic", s("/goal")),
            ("sources.target.components", ss(&["x", "qw"])),
            ("action.interface", s("position")),
            ("action.type", s("joint_trajectory")),
            ("action.joints", ss(&["j1", "j2"])),
            ("action.topic", s("/cmd")),
            ("action.qos", s("best_effort")),
            ("rt.fifo_priority", V::Integer(80)),
            ("rt.cpu", V::Integer(3)),
            ("rt.mlockall", V::Bool(true)),
            ("diagnostics_period", V::Double(2.0)),
            ("hot_swap.dir", s("/tmp/ckpt")),
            ("hot_swap.poll_period", V::Double(0.1)),
            ("hot_swap.max_divergence", V::Double(0.3)),
            ("log.dir", s("/tmp/log")),
            ("log.every", V::Integer(5)),
            ("log.flush_period", V::Double(0.2)),
            ("log.queue", V::Integer(1)),
            ("log.reward_topic", s("/reward")),
            ("log.episode_topic", s("/episode")),
            ("log.terminal_topic", s("")),
            ("log.reward.distance_a", V::IntegerArray(vec![0, 1])),
            ("log.reward.distance_b", V::IntegerArray(vec![4, 5])),
            ("log.reward.action_cost", V::Double(0.01)),
            ("override.topic", s("/human")),
            ("override.max_age", V::Double(0.5)),
            ("finetune.args", ss(&["--steps", "10"])),
            ("finetune.exe", s("/bin/flowpilot")),
            ("an.unused.parameter", V::NotSet),
        ],
    );
    let c = NodeConfig::from_params(&m).unwrap();
    assert_eq!(c.rate_hz, 250.0);
    assert_eq!(c.seed, 7);
    assert_eq!(c.safe, SafeBehaviour::Stop);
    assert_eq!(c.warmup_ticks, 0);
    assert_eq!(c.startup_hold_s, 0.25);
    assert_eq!(c.max_delta, Some(vec![1.0, 2.0]));
    let arm = &c.observations[0];
    assert!(!arm.best_effort);
    assert_eq!(arm.max_age_s, 0.1);
    assert_eq!(arm.kind.width(), 4);
    assert_eq!(c.goals.len(), 1, "a single string is a one-item list");
    assert_eq!(
        c.goals[0].kind,
        SourceKind::PoseStamped { select: vec![0, 6] }
    );
    assert_eq!(c.sources().count(), 2);
    assert_eq!(
        c.action,
        ActionKind::JointTrajectory {
            joints: vec!["j1".into(), "j2".into()]
        }
    );
    assert_eq!(c.action_topic, "/cmd");
    assert!(c.action_best_effort);
    assert_eq!(
        (c.fifo_priority, c.cpu, c.mlockall),
        (Some(80), Some(3), true)
    );
    assert_eq!(c.diagnostics_period_s, 2.0);
    assert_eq!(c.hot_swap_dir.as_deref(), Some("/tmp/ckpt"));
    assert_eq!(c.hot_swap_poll_s, 0.1);
    assert_eq!(c.hot_swap_max_divergence, 0.3);
    assert!(!c.hot_swap_guard.hold, "off by default");
    let on = with(m.clone(), &[("hot_swap.guard.hold", V::Bool(true))]);
    assert!(NodeConfig::from_params(&on).unwrap().hot_swap_guard.hold);
    let unfed = with(on, &[("log.episode_topic", s(""))]);
    assert!(
        !NodeConfig::from_params(&unfed).unwrap().hot_swap_guard.hold,
        "no episode returns reach the guard: holding would never end"
    );
    let l = c.log.unwrap();
    assert_eq!(l.dir, "/tmp/log");
    assert_eq!(l.every, 5);
    assert_eq!(l.flush_period_s, 0.2);
    assert_eq!(l.queue, 1);
    assert_eq!(l.reward_topic.as_deref(), Some("/reward"));
    assert_eq!(l.episode_topic.as_deref(), Some("/episode"));
    assert_eq!(l.terminal_topic, None, "empty means off");
    let r = l.distance_reward.unwrap();
    assert_eq!((r.a, r.b, r.action_cost), (vec![0, 1], vec![4, 5], 0.01));
    assert_eq!(c.override_input, Some(("/human".into(), 0.5)));
    assert_eq!(c.finetune_args, vec!["--steps", "10"]);
    assert_eq!(c.finetune_exe.as_deref(), Some("/bin/flowpilot"));
}

#[test]
fn rejected_values_name_their_parameter() {
    let cases: Vec<(ParamMap, &str, &str)> = vec![
        (
            {
                let mut m = minimal();
                m.remove("model");
                m
            },
            "model",
            "parameter 'model' is required",
        ),
        (
            with(minimal(), &[("model", V::NotSet)]),
            "model",
            "parameter 'model' is required",
        ),
        (
            with(minimal(), &[("model", V::Integer(3))]),
            "model",
            "parameter 'model' must be a string, got Integer(3)",
        ),
        (
            with(minimal(), &[("rate_hz", V::Double(5000.0))]),
            "rate_hz",
            "'rate_hz' must be within 10..1000, got 5000",
        ),
        (
            with(minimal(), &[("rate_hz", s("fast"))]),
            "rate_hz",
            "parameter 'rate_hz' must be a number, got String(\"fast\")",
        ),
        (
            with(minimal(), &[("seed", V::Double(1.5))]),
            "seed",
            "parameter 'seed' must be an integer, got Double(1.5)",
        ),
        (
            with(minimal(), &[("rt.mlockall", V::Integer(1))]),
            "rt.mlockall",
            "parameter 'rt.mlockall' must be true or false, got Integer(1)",
        ),
        (
            with(minimal(), &[("observations", ss(&[]))]),
            "observations",
            "'observations' must list at least one source name",
        ),
        (
            with(minimal(), &[("observations", V::Integer(1))]),
            "observations",
            "parameter 'observations' must be a list of strings, got Integer(1)",
        ),
        (
            with(minimal(), &[("sources.arm.type", s("laser"))]),
            "sources.arm.type",
            "observation source 'arm': 'sources.arm.type': unknown source type 'laser' (joint_state, float64_multi_array, pose_stamped, twist_stamped, imu, odometry)",
        ),
        (
            with(minimal(), &[("sources.arm.qos", s("fast"))]),
            "sources.arm.qos",
            "observation source 'arm': 'sources.arm.qos': unknown QoS 'fast' (best_effort or reliable)",
        ),
        (
            with(minimal(), &[("sources.arm.joints", ss(&[]))]),
            "sources.arm.joints",
            "observation source 'arm': 'sources.arm.joints' must list the joint names to read",
        ),
        (
            with(minimal(), &[("sources.arm.fields", ss(&["torque"]))]),
            "sources.arm.fields",
            "observation source 'arm': 'sources.arm.fields': unknown field 'torque' (position, velocity, effort)",
        ),
        (
            {
                let mut m = minimal();
                m.remove("sources.arm.topic");
                m
            },
            "sources.arm.topic",
            "observation source 'arm': parameter 'sources.arm.topic' is required",
        ),
        (
            with(
                minimal(),
                &[
                    ("goals", ss(&["g"])),
                    ("sources.g.type", s("float64_multi_array")),
                    ("sources.g.topic", s("/g")),
                ],
            ),
            "sources.g.indices",
            "goal source 'g': 'sources.g.type' needs 'indices' (list) or 'size' (take data[0..size])",
        ),
        (
            with(
                minimal(),
                &[
                    ("goals", ss(&["g"])),
                    ("sources.g.type", s("float64_multi_array")),
                    ("sources.g.topic", s("/g")),
                    ("sources.g.indices", V::IntegerArray(vec![0, -1])),
                ],
            ),
            "sources.g.indices",
            "goal source 'g': parameter 'sources.g.indices': negative index -1",
        ),
        (
            with(
                minimal(),
                &[
                    ("goals", ss(&["g"])),
                    ("sources.g.type", s("imu")),
                    ("sources.g.topic", s("/g")),
                    ("sources.g.components", ss(&["x"])),
                ],
            ),
            "sources.g.components",
            "goal source 'g': 'sources.g.components': 'x' is not one of [\"qx\", \"qy\", \"qz\", \"qw\", \"wx\", \"wy\", \"wz\", \"ax\", \"ay\", \"az\"]",
        ),
        (
            with(minimal(), &[("safe_behaviour", s("panic"))]),
            "safe_behaviour",
            "'safe_behaviour': unknown safe behaviour 'panic' (hold, zero or stop)",
        ),
        (
            with(minimal(), &[("action.type", s("wrench"))]),
            "action.type",
            "'action.type': unknown 'wrench' (float64_multi_array, joint_trajectory, twist, twist_stamped)",
        ),
        (
            with(minimal(), &[("action.type", s("joint_trajectory"))]),
            "action.joints",
            "'action.joints' must name the joints for joint_trajectory",
        ),
        (
            with(minimal(), &[("fleet.robot_id", s("robot-1"))]),
            "fleet.robot_id",
            "'fleet.robot_id': 'robot-1' must start with a letter and hold only letters, digits and '_' (at most 64)",
        ),
        (
            with(minimal(), &[("fleet.robot_id", s("r1"))]),
            "fleet.stream",
            "'fleet.stream' sends the transition log: set 'log.dir' (or fleet.stream: false)",
        ),
        (
            with(
                minimal(),
                &[("fleet.robot_id", s("r1")), ("log.dir", s("/l"))],
            ),
            "fleet.policy",
            "'fleet.policy' takes versions through the hot swap: set 'hot_swap.dir' (or fleet.policy: none)",
        ),
        (
            with(
                minimal(),
                &[
                    ("fleet.robot_id", s("r1")),
                    ("fleet.stream", V::Bool(false)),
                    ("fleet.policy", s("mine")),
                ],
            ),
            "fleet.policy",
            "'fleet.policy': unknown 'mine' (shared, own or none)",
        ),
        (
            with(minimal(), &[("action.qos", s("sometimes"))]),
            "action.qos",
            "'action.qos': unknown QoS 'sometimes' (best_effort or reliable)",
        ),
        (
            with(minimal(), &[("max_delta", s("1"))]),
            "max_delta",
            "parameter 'max_delta' must be a list of numbers, got String(\"1\")",
        ),
        (
            with(
                minimal(),
                &[("log.dir", s("/l")), ("log.every", V::Integer(0))],
            ),
            "log.every",
            "'log.every' must be >= 1, got 0",
        ),
        (
            with(
                minimal(),
                &[("log.dir", s("/l")), ("log.flush_period", V::Double(2.0))],
            ),
            "log.flush_period",
            "'log.flush_period' must be within 0.001..1 s, got 2",
        ),
        (
            with(
                minimal(),
                &[
                    ("log.dir", s("/l")),
                    ("log.reward.distance_a", V::IntegerArray(vec![0])),
                ],
            ),
            "log.reward.distance_b",
            "'log.reward.distance_a' and 'log.reward.distance_b' must have the same length",
        ),
        (
            with(
                minimal(),
                &[
                    ("log.dir", s("/l")),
                    ("log.reward.distance_a", V::DoubleArray(vec![0.0])),
                ],
            ),
            "log.reward.distance_a",
            "parameter 'log.reward.distance_a' must be a list of integers, got DoubleArray([0.0])",
        ),
        (
            with(
                minimal(),
                &[
                    ("override.topic", s("/h")),
                    ("override.max_age", V::Bool(true)),
                ],
            ),
            "override.max_age",
            "parameter 'override.max_age' must be a number, got Bool(true)",
        ),
    ];
    assert_rejected(cases);
}

/// Values that used to reach a panic on the control or log writer
/// thread (issue: negative max_delta in f64::clamp, CPU_SET out of
/// bounds, distance indices past the record) are refused at start-up.
#[test]
fn values_that_would_panic_a_thread_are_refused() {
    let cases: Vec<(ParamMap, &str, &str)> =
        vec![
        (
            with(minimal(), &[("max_delta", V::DoubleArray(vec![0.1, -0.1]))]),
            "max_delta",
            "'max_delta' entries must be finite and > 0 (a per-tick step), got -0.1",
        ),
        (
            with(minimal(), &[("max_delta", V::DoubleArray(vec![f64::NAN, 0.1]))]),
            "max_delta",
            "'max_delta' entries must be finite and > 0 (a per-tick step), got NaN",
        ),
        (
            with(minimal(), &[("rt.cpu", V::Integer(1024))]),
            "rt.cpu",
            "'rt.cpu' must be within -1..=1023, got 1024",
        ),
        (
            with(minimal(), &[("rt.fifo_priority", V::Integer(120))]),
            "rt.fifo_priority",
            "'rt.fifo_priority' must be within 0..=99, got 120",
        ),
        (
            with(
                minimal(),
                &[
                    ("log.dir", s("/l")),
                    ("log.reward.distance_a", V::IntegerArray(vec![0])),
                    ("log.reward.distance_b", V::IntegerArray(vec![2])),
                ],
            ),
            "log.reward.distance_b",
            "'log.reward.distance_b': index 2 is outside the observation and goal (2 values)",
        ),
        (
            with(minimal(), &[("sources.arm.max_age", V::Double(-1.0))]),
            "sources.arm.max_age",
            "observation source 'arm': 'sources.arm.max_age' must be within 0.001..3600 s, got -1",
        ),
        (
            with(minimal(), &[("diagnostics_period", V::Double(0.0))]),
            "diagnostics_period",
            "'diagnostics_period' must be within 0.01..3600 s, got 0",
        ),
        (
            with(minimal(), &[("hot_swap.max_divergence", V::Double(f64::INFINITY))]),
            "hot_swap.max_divergence",
            "'hot_swap.max_divergence' must be a number >= 0 (0: off), got inf",
        ),
        (
            with(minimal(), &[("max_future_stamp", V::Double(-0.1))]),
            "max_future_stamp",
            "'max_future_stamp' must be within 0..60 s, got -0.1",
        ),
        (
            with(minimal(), &[("warmup_ticks", V::Integer(-3))]),
            "warmup_ticks",
            "'warmup_ticks' must be within 0..=1000000, got -3",
        ),
        (
            with(minimal(), &[("log.dir", s("/l")), ("log.queue", V::Integer(0))]),
            "log.queue",
            "'log.queue' must be within 1..=1048576, got 0",
        ),
        (
            with(minimal(), &[("seed", V::Integer(-3))]),
            "seed",
            "'seed' must be within 0..=9223372036854775807, got -3",
        ),
    ];
    assert_rejected(cases);
}

#[test]
fn unknown_parameters_are_refused_with_the_nearest_name() {
    let cases: Vec<(ParamMap, &str, &str)> = vec![
        (
            with(minimal(), &[("safe_behavior", s("zero"))]),
            "safe_behavior",
            "unknown parameter 'safe_behavior' (did you mean 'safe_behaviour'?)",
        ),
        (
            with(minimal(), &[("hot_swap.max_divergance", V::Double(0.1))]),
            "hot_swap.max_divergance",
            "unknown parameter 'hot_swap.max_divergance' (did you mean 'hot_swap.max_divergence'?)",
        ),
        (
            with(minimal(), &[("sources.arm.max_agee", V::Double(0.1))]),
            "sources.arm.max_agee",
            "unknown parameter 'sources.arm.max_agee' (did you mean 'sources.arm.max_age'?)",
        ),
        (
            with(minimal(), &[("colour", s("red"))]),
            "colour",
            "unknown parameter 'colour' (docs/configuration.md lists them all)",
        ),
    ];
    assert_rejected(cases);
    // What ROS itself sets on every node is accepted.
    let ros = with(
        minimal(),
        &[
            ("use_sim_time", V::Bool(false)),
            ("qos_overrides./tf.subscription.depth", V::Integer(10)),
        ],
    );
    assert!(NodeConfig::from_params(&ros).is_ok());
}

#[test]
fn path_parameters_expand_home_and_environment_like_a_shell() {
    let home = std::env::var("HOME").expect("HOME is set where tests run");
    let m = with(
        minimal(),
        &[
            ("model", s("~/p.safetensors")),
            ("log.dir", s("${HOME}/log")),
            (
                "hot_swap.dir",
                s("${FLOWPILOT_SURELY_UNSET_VAR:-~/state}/ckpt"),
            ),
            (
                "finetune.args",
                ss(&["--prior", "$HOME/demos.npz", "--gamma", "0.9"]),
            ),
        ],
    );
    let c = NodeConfig::from_params(&m).unwrap();
    assert_eq!(c.model, format!("{home}/p.safetensors"));
    assert_eq!(c.log.unwrap().dir, format!("{home}/log"));
    // a default is taken as written (a shell would not expand its ~ either)
    assert_eq!(c.hot_swap_dir.as_deref(), Some("~/state/ckpt"));
    assert_eq!(
        c.finetune_args,
        vec![
            "--prior".to_string(),
            format!("{home}/demos.npz"),
            "--gamma".into(),
            "0.9".into()
        ]
    );
    for key in ["hot_swap.dir", "finetune.args"] {
        let v = if key == "finetune.args" {
            ss(&["$FLOWPILOT_SURELY_UNSET_VAR/x"])
        } else {
            s("$FLOWPILOT_SURELY_UNSET_VAR/x")
        };
        let e = NodeConfig::from_params(&with(minimal(), &[(key, v)])).unwrap_err();
        assert_eq!(e.parameter(), key);
        assert!(e.to_string().contains("FLOWPILOT_SURELY_UNSET_VAR"), "{e}");
    }
}

#[test]
fn chunk_parameters_pick_the_boundary_rule_and_its_number() {
    use crate::rt::chunk::Boundary;
    let c = NodeConfig::from_params(&minimal()).unwrap();
    assert_eq!(c.chunk, crate::rt::control::ChunkConfig::default());
    let c = NodeConfig::from_params(&with(
        minimal(),
        &[
            ("chunk.boundary", s("ensemble")),
            ("chunk.ensemble_m", V::Double(0.2)),
            ("chunk.replan_every", V::Integer(1)),
        ],
    ))
    .unwrap();
    assert_eq!(c.chunk.boundary, Boundary::Ensemble { m: 0.2 });
    assert_eq!(c.chunk.replan_every, 1);
    let c = NodeConfig::from_params(&with(
        minimal(),
        &[
            ("chunk.boundary", s("blend")),
            ("chunk.blend_steps", V::Integer(3)),
        ],
    ))
    .unwrap();
    assert_eq!(c.chunk.boundary, Boundary::Blend { steps: 3 });
    let e =
        NodeConfig::from_params(&with(minimal(), &[("chunk.boundary", s("ensemb"))])).unwrap_err();
    assert_eq!(e.parameter(), "chunk.boundary");
    assert!(e.to_string().contains("replace, ensemble or blend"), "{e}");
}

#[test]
fn unset_log_dir_ignores_log_parameters() {
    // log.* is only read when logging is on, as before
    let m = with(minimal(), &[("log.every", V::Integer(0))]);
    assert!(NodeConfig::from_params(&m).unwrap().log.is_none());
}

#[test]
fn live_allow_loosen_is_off_unless_set_and_must_be_a_bool() {
    assert!(
        !NodeConfig::from_params(&minimal())
            .unwrap()
            .live_allow_loosen
    );
    let on = with(minimal(), &[("live.allow_loosen", ParamValue::Bool(true))]);
    assert!(NodeConfig::from_params(&on).unwrap().live_allow_loosen);
    assert_rejected(vec![(
        with(minimal(), &[("live.allow_loosen", s("yes"))]),
        "live.allow_loosen",
        "parameter 'live.allow_loosen' must be true or false, got String(\"yes\")",
    )]);
}

#[test]
fn trusted_keys_are_read_and_required_when_the_fleet_takes_policies() {
    use crate::signing::PolicySigner;
    const K: &str = "hot_swap.trusted_keys";
    let t = tempfile::tempdir().unwrap();
    let signer = PolicySigner::generate().unwrap();
    let pub_path = signer.save(&t.path().join("learner.key")).unwrap();
    let inline = signer.public_key().to_string();
    let swap = [("hot_swap.dir", s("/ckpt"))];
    // off by default
    let c = NodeConfig::from_params(&minimal()).unwrap();
    assert!(c.hot_swap_trusted_keys.is_empty());
    // a file and an inline key (two keys: a change-over)
    let two = with(
        with(minimal(), &swap),
        &[(K, ss(&[pub_path.to_str().unwrap(), &inline]))],
    );
    let c = NodeConfig::from_params(&two).unwrap();
    assert_eq!(
        c.hot_swap_trusted_keys.keys(),
        &[signer.public_key(), signer.public_key()]
    );
    // a fleet that takes policies needs them; one that only streams not
    let fleet = with(
        with(minimal(), &swap),
        &[
            ("fleet.robot_id", s("r1")),
            ("fleet.stream", ParamValue::Bool(false)),
        ],
    );
    let keyed = with(fleet.clone(), &[(K, ss(&[&inline]))]);
    assert!(NodeConfig::from_params(&keyed).unwrap().fleet.is_some());
    let stream_only = with(fleet.clone(), &[("fleet.policy", s("none"))]);
    assert!(NodeConfig::from_params(&stream_only).is_ok());
    let missing = "'hot_swap.trusted_keys' is required when the fleet link takes policies \
         (fleet.policy shared or own): name the public key of the learner that signs them \
         (`flowpilot keygen`, docs/security.md), or set fleet.policy: none";
    assert_rejected(vec![
        (fleet.clone(), K, missing),
        (with(fleet, &[("fleet.policy", s("own"))]), K, missing),
        (
            with(minimal(), &[(K, ss(&[&inline]))]),
            K,
            "'hot_swap.trusted_keys' authenticates hot-swapped versions: set 'hot_swap.dir' (or remove the keys)",
        ),
        (
            with(with(minimal(), &swap), &[(K, ss(&["ed25519:AAAA"]))]),
            K,
            "'hot_swap.trusted_keys': 'ed25519:AAAA' is not a public key: 3 bytes, not 32 \
             (want ed25519:<base64 of 32 bytes>)",
        ),
    ]);
    // an unreadable file is named
    let e = err(&with(
        with(minimal(), &swap),
        &[(K, ss(&["/nonexistent/learner.key.pub"]))],
    ));
    assert_eq!(e.parameter(), K);
    assert!(
        e.to_string().contains("/nonexistent/learner.key.pub"),
        "{e}"
    );
}
