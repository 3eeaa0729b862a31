//! The model file: round trip, and every kind of bad file is refused with
//! an error naming the problem (never a panic).

use flowpilot_core::testkit as common;

use common::random_model;
use flowpilot_core::policy::model::{
    Direction, ModelError, ModelFile, PolicyKind, Tensor, TensorData, META_KEY,
};

fn model() -> ModelFile {
    random_model(4, 2, true, Direction::Inverse, PolicyKind::Flow, 3)
}

/// Re-serialise with one tensor or the metadata altered, bypassing the
/// validation `ModelFile::new` would do.
fn raw_file(
    tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
    meta: String,
) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let mut m = std::collections::HashMap::new();
    m.insert(META_KEY.to_string(), meta);
    safetensors::serialize(views, Some(m)).unwrap()
}

fn parts(m: &ModelFile) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    m.tensors()
        .iter()
        .map(|(n, t)| match &t.data {
            TensorData::F32(v) => (
                n.clone(),
                safetensors::Dtype::F32,
                t.shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            TensorData::I64(v) => (
                n.clone(),
                safetensors::Dtype::I64,
                t.shape.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        })
        .collect()
}

fn meta(m: &ModelFile) -> String {
    serde_json::to_string(&m.spec).unwrap()
}

#[test]
fn round_trip_through_disk_keeps_everything() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    m.save(&p).unwrap();
    let back = ModelFile::load(&p).unwrap();
    assert_eq!(back.spec, m.spec);
    assert_eq!(back.tensors(), m.tensors());
    assert!(m.spec.digest.starts_with("sha256:") && m.spec.digest.len() == 71);
    // no temp file left behind by the atomic write
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn missing_file_names_the_path() {
    let e = ModelFile::load("/nonexistent/x.safetensors").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/x.safetensors"), "{e}");
}

#[test]
fn a_file_over_the_size_cap_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(flowpilot_core::policy::model::MAX_FILE_BYTES + 1)
        .unwrap(); // sparse
    let e = ModelFile::load(&path).unwrap_err();
    assert!(matches!(e, ModelError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("huge.safetensors"), "{e}");
}

#[test]
fn truncated_file_is_refused() {
    let b = model().to_bytes();
    for cut in [0, 5, 8, 100, b.len() / 2, b.len() - 1] {
        let e = ModelFile::from_bytes(&b[..cut]).unwrap_err();
        assert!(
            matches!(e, ModelError::Truncated(_) | ModelError::Safetensors(_)),
            "cut {cut}: {e}"
        );
        if cut < 100 {
            assert!(matches!(e, ModelError::Truncated(_)), "cut {cut}: {e}");
        }
    }
}

#[test]
fn oversized_header_is_refused_before_allocating() {
    let mut b = model().to_bytes();
    b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(
        ModelFile::from_bytes(&b).unwrap_err(),
        ModelError::OversizedHeader(_)
    ));
}

#[test]
fn nan_weight_is_refused_with_its_name() {
    let m = model();
    let mut t = parts(&m);
    let i = t.iter().position(|(n, ..)| n == "blocks.1.s.l1.w").unwrap();
    t[i].3[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    let e = ModelFile::from_bytes(&raw_file(t, meta(&m))).unwrap_err();
    assert!(
        matches!(&e, ModelError::NonFinite { name, index: 10 } if name == "blocks.1.s.l1.w"),
        "{e}"
    );
}

#[test]
fn missing_tensor_wrong_shape_wrong_dtype_extra_tensor() {
    let m = model();
    let mut t = parts(&m);
    t.retain(|(n, ..)| n != "blocks.2.t.ln0.g");
    let e = ModelFile::from_bytes(&raw_file(t, meta(&m))).unwrap_err();
    assert!(
        matches!(&e, ModelError::MissingTensor(n) if n == "blocks.2.t.ln0.g"),
        "{e}"
    );

    let mut t = parts(&m);
    let i = t.iter().position(|(n, ..)| n == "blocks.0.s.l0.b").unwrap();
    let n = t[i].2[0];
    t[i].2 = vec![1, n];
    let e = ModelFile::from_bytes(&raw_file(t, meta(&m))).unwrap_err();
    assert!(
        matches!(&e, ModelError::Shape { name, .. } if name == "blocks.0.s.l0.b"),
        "{e}"
    );

    let mut t = parts(&m);
    let i = t.iter().position(|(n, ..)| n == "enc.out.b").unwrap();
    t[i].1 = safetensors::Dtype::I32;
    let e = ModelFile::from_bytes(&raw_file(t, meta(&m))).unwrap_err();
    assert!(
        matches!(&e, ModelError::Dtype { name, .. } if name == "enc.out.b"),
        "{e}"
    );

    let mut t = parts(&m);
    t.push((
        "stowaway".into(),
        safetensors::Dtype::F32,
        vec![1],
        vec![0; 4],
    ));
    let e = ModelFile::from_bytes(&raw_file(t, meta(&m))).unwrap_err();
    assert!(
        matches!(&e, ModelError::UnexpectedTensor(n) if n == "stowaway"),
        "{e}"
    );
}

#[test]
fn bad_permutation_and_singular_linear_layer() {
    let m = model();
    let mut t = parts(&m);
    let i = t
        .iter()
        .position(|(n, ..)| n == "blocks.0.lin.perm")
        .unwrap();
    t[i].3[8..16].copy_from_slice(&0i64.to_le_bytes()); // two zeros
    let e = ModelFile::from_bytes(&raw_file(t, meta(&m))).unwrap_err();
    assert!(
        matches!(&e, ModelError::BadPermutation(n) if n == "blocks.0.lin.perm"),
        "{e}"
    );

    let mut tensors = m.tensors().clone();
    tensors.insert(
        "blocks.1.lin.s".into(),
        Tensor::f32(vec![4], vec![1.0, 0.0, 1.0, 1.0]),
    );
    let e = ModelFile::new(m.spec.clone(), tensors).unwrap_err();
    assert!(matches!(&e, ModelError::Singular { index: 1, .. }), "{e}");
}

#[test]
fn unknown_version_missing_spec_and_bad_spec() {
    let m = model();
    let mut v: serde_json::Value = serde_json::from_str(&meta(&m)).unwrap();
    v["format_version"] = 99.into();
    let e = ModelFile::from_bytes(&raw_file(parts(&m), v.to_string())).unwrap_err();
    assert!(matches!(e, ModelError::UnknownVersion { found: 99 }), "{e}");

    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    let b = safetensors::serialize(views, None).unwrap();
    assert!(matches!(
        ModelFile::from_bytes(&b).unwrap_err(),
        ModelError::MissingSpec
    ));

    let e = ModelFile::from_bytes(&raw_file(parts(&m), "{not json".into())).unwrap_err();
    assert!(matches!(e, ModelError::BadSpec(_)), "{e}");

    let mut v: serde_json::Value = serde_json::from_str(&meta(&m)).unwrap();
    v["action_low"] = serde_json::json!([0.0, 0.0, 0.0]);
    let e = ModelFile::from_bytes(&raw_file(parts(&m), v.to_string())).unwrap_err();
    assert!(
        matches!(&e, ModelError::InvalidSpec(s) if s.contains("action bounds")),
        "{e}"
    );
}

#[test]
fn any_modified_byte_is_caught_by_the_digest_or_validation() {
    let m = model();
    // a weight changed but still finite: only the digest can tell
    let mut t = parts(&m);
    let i = t.iter().position(|(n, ..)| n == "blocks.0.t.l2.w").unwrap();
    t[i].3[0] ^= 0x01;
    let e = ModelFile::from_bytes(&raw_file(t, meta(&m))).unwrap_err();
    assert!(matches!(e, ModelError::Digest { .. }), "{e}");
    // the spec changed (action bounds widened)
    let mut v: serde_json::Value = serde_json::from_str(&meta(&m)).unwrap();
    v["action_high"][0] = 100.0.into();
    let e = ModelFile::from_bytes(&raw_file(parts(&m), v.to_string())).unwrap_err();
    assert!(matches!(e, ModelError::Digest { .. }), "{e}");
}

#[test]
fn random_byte_corruption_never_panics() {
    let b = model().to_bytes();
    let mut x = 0x9E3779B97F4A7C15u64;
    for _ in 0..500 {
        let mut c = b.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % c.len();
            c[i] = (x >> 32) as u8;
        }
        let _ = ModelFile::from_bytes(&c); // must return, Ok or Err
    }
}

/// The half-size model's tensors as they are stored on disk: kernels as
/// 16-bit `dtype` bytes, everything else as `parts` writes it.
fn half_parts(
    m: &ModelFile,
    dtype: safetensors::Dtype,
) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let w = m.spec.weights;
    parts(m)
        .into_iter()
        .map(|(n, dt, s, b)| {
            if flowpilot_core::policy::model::is_kernel(&n) {
                let bytes = b
                    .chunks_exact(4)
                    .flat_map(|c| {
                        w.bits(f32::from_le_bytes(c.try_into().unwrap()))
                            .to_le_bytes()
                    })
                    .collect();
                (n, dtype, s, bytes)
            } else {
                (n, dt, s, b)
            }
        })
        .collect()
}

#[test]
fn half_size_kernels_round_trip_at_half_the_bytes() {
    use flowpilot_core::policy::model::WeightDtype;
    let m = model();
    let f32_bytes = m.to_bytes().len();
    for w in [WeightDtype::F16, WeightDtype::Bf16] {
        let h = m.with_weights(w).unwrap();
        assert_eq!(h.spec.weights, w);
        assert_ne!(
            h.spec.digest, m.spec.digest,
            "{w}: the digest covers the dtype"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.safetensors");
        h.save(&p).unwrap();
        let back = ModelFile::load(&p).unwrap();
        assert_eq!(back.spec, h.spec);
        assert_eq!(back.tensors(), h.tensors());
        // each kernel value takes 2 bytes instead of 4 (the header differs
        // by a few bytes: dtype names, the `weights` field)
        let n = std::fs::metadata(&p).unwrap().len() as i64;
        let kernel_values: usize = m
            .tensors()
            .iter()
            .filter(|(n, _)| flowpilot_core::policy::model::is_kernel(n))
            .map(|(_, t)| t.shape.iter().product::<usize>())
            .sum();
        let saved = f32_bytes as i64 - n;
        assert!(
            (saved - 2 * kernel_values as i64).abs() < 256,
            "{w}: {n} vs {f32_bytes} bytes, {kernel_values} kernel values"
        );
        // rounding is to nearest: within half an ulp of the dtype
        let rel = if w == WeightDtype::F16 {
            1.0 / 2048.0
        } else {
            1.0 / 256.0
        };
        for (name, t) in m.tensors() {
            if let TensorData::F32(v) = &t.data {
                for (a, b) in v.iter().zip(back.f32(name)) {
                    let tol = if flowpilot_core::policy::model::is_kernel(name) {
                        rel * a.abs() + 1e-7
                    } else {
                        0.0
                    };
                    assert!((a - b).abs() <= tol, "{w} {name}: {a} -> {b}");
                }
            }
        }
        // and back to f32 gives the f16-valued model in f32 storage
        let up = back.with_weights(WeightDtype::F32).unwrap();
        assert_eq!(up.tensors(), h.tensors());
        assert_eq!(up.spec.weights, WeightDtype::F32);
    }
}

#[test]
fn a_file_whose_recorded_kernel_dtype_disagrees_with_its_tensors_is_refused() {
    use flowpilot_core::policy::model::WeightDtype;
    let m = model();
    let h = m.with_weights(WeightDtype::F16).unwrap();
    // f16 kernels on disk, spec recording f32 (the `weights` field dropped)
    let e = ModelFile::from_bytes(&raw_file(half_parts(&h, safetensors::Dtype::F16), meta(&m)))
        .unwrap_err();
    assert!(
        matches!(&e, ModelError::WeightDtype { recorded: WeightDtype::F32, found, .. } if found == "F16"),
        "{e}"
    );
    // spec recording f16, kernels stored f32
    let e = ModelFile::from_bytes(&raw_file(parts(&h), meta(&h))).unwrap_err();
    assert!(
        matches!(&e, ModelError::WeightDtype { recorded: WeightDtype::F16, found, .. } if found == "F32"),
        "{e}"
    );
    // spec recording f16, kernels stored bf16
    let e = ModelFile::from_bytes(&raw_file(
        half_parts(&h, safetensors::Dtype::BF16),
        meta(&h),
    ))
    .unwrap_err();
    assert!(
        matches!(&e, ModelError::WeightDtype { recorded: WeightDtype::F16, found, .. } if found == "BF16"),
        "{e}"
    );
    assert!(e.to_string().contains("weights"), "{e}");
    // the matching file loads
    ModelFile::from_bytes(&raw_file(half_parts(&h, safetensors::Dtype::F16), meta(&h))).unwrap();
    // an unknown dtype name in the spec is a spec error
    let bad = meta(&h).replace("\"weights\":\"f16\"", "\"weights\":\"f8\"");
    assert_ne!(bad, meta(&h));
    let e =
        ModelFile::from_bytes(&raw_file(half_parts(&h, safetensors::Dtype::F16), bad)).unwrap_err();
    assert!(matches!(e, ModelError::BadSpec(_)), "{e}");
}

#[test]
fn half_size_kernels_must_hold_values_the_dtype_can_store() {
    use flowpilot_core::policy::model::WeightDtype;
    let m = model();
    let mut spec = m.spec.clone();
    spec.weights = WeightDtype::F16;
    // f32 values that f16 would round: refused, not silently rounded
    let e = ModelFile::new(spec, m.tensors().clone()).unwrap_err();
    assert!(
        matches!(
            &e,
            ModelError::NotRepresentable {
                dtype: WeightDtype::F16,
                ..
            }
        ),
        "{e}"
    );
    // beyond f16's range: the conversion names the overflowing weight
    let mut tensors = m.tensors().clone();
    if let TensorData::F32(v) = &mut tensors.get_mut("blocks.0.s.l1.w").unwrap().data {
        v[3] = 1e5;
    }
    let big = ModelFile::new(m.spec.clone(), tensors).unwrap();
    let e = big.with_weights(WeightDtype::F16).unwrap_err();
    assert!(
        matches!(&e, ModelError::NonFinite { name, index: 3 } if name == "blocks.0.s.l1.w"),
        "{e}"
    );
    // bf16 has f32's range
    big.with_weights(WeightDtype::Bf16).unwrap();
}
