//! Observation sources in the configuration: every message type, array
//! widths, names.

use super::*;

#[test]
fn every_source_type() {
    let m = with(
        minimal(),
        &[
            ("observations", ss(&["a", "b", "c", "d", "e"])),
            ("sources.a.type", s("float64_multi_array")),
            ("sources.a.topic", s("/a")),
            ("sources.a.size", V::Integer(3)),
            ("sources.b.type", s("float64_multi_array")),
            ("sources.b.topic", s("/b")),
            ("sources.b.indices", V::IntegerArray(vec![4, 2])),
            ("sources.c.type", s("twist_stamped")),
            ("sources.c.topic", s("/c")),
            ("sources.d.type", s("imu")),
            ("sources.d.topic", s("/d")),
            ("sources.d.components", ss(&["az"])),
            ("sources.e.type", s("odometry")),
            ("sources.e.topic", s("/e")),
            ("action.type", s("twist_stamped")),
        ],
    );
    let c = NodeConfig::from_params(&m).unwrap();
    let kinds: Vec<_> = c.observations.iter().map(|s| s.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            SourceKind::Float64MultiArray {
                indices: vec![0, 1, 2]
            },
            SourceKind::Float64MultiArray {
                indices: vec![4, 2]
            },
            SourceKind::TwistStamped {
                select: (0..6).collect()
            },
            SourceKind::Imu { select: vec![9] },
            SourceKind::Odometry {
                select: (0..13).collect()
            },
        ]
    );
    assert_eq!(
        c.action,
        ActionKind::TwistStamped {
            frame_id: "base_link".into()
        }
    );
}

#[test]
fn an_array_source_wider_than_a_message_can_be_is_refused() {
    // libFuzzer: a huge `size` panicked with a capacity overflow
    // (tests/fuzz_corpus/config_parser/capacity-overflow-size.bin).
    let arr = |kvs: &[(&str, ParamValue)]| {
        let mut m = with(minimal(), &[("sources.arm.type", s("float64_multi_array"))]);
        m.remove("sources.arm.joints");
        with(m, kvs)
    };
    assert_rejected(vec![
        (
            arr(&[("sources.arm.size", V::Integer(1 << 40))]),
            "sources.arm.size",
            "observation source 'arm': 'sources.arm.size' must be within 0..=65536, got 1099511627776",
        ),
        (
            arr(&[("sources.arm.indices", V::IntegerArray(vec![0, 70_000]))]),
            "sources.arm.indices",
            "observation source 'arm': 'sources.arm.indices' entries must be below 65536, got 70000",
        ),
    ]);
    assert!(NodeConfig::from_params(&arr(&[("sources.arm.size", V::Integer(3))])).is_ok());
}

#[test]
fn an_empty_source_name_is_an_error_not_a_panic() {
    // found by the fuzzer: `sources..type` is read for a source named ""
    let e = err(&with(minimal(), &[("observations", ss(&[""]))]));
    assert_eq!(e.parameter(), "sources..type", "{e}");
    // and a key for an empty source name is not a known parameter
    let e = err(&with(minimal(), &[("sources..topic", s("/x"))]));
    assert!(e.to_string().contains("sources..topic"), "{e}");
}
