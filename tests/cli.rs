//! The `flowpilot` command line, run as a user would.

use std::process::Command;

fn fp(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_flowpilot"))
        .args(args)
        .output()
        .expect("runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn new_inspect_sample_bench_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.safetensors");
    let ms = m.to_str().unwrap();
    let (ok, out, err) = fp(&[
        "new", ms, "--obs", "3", "--act", "4", "--blocks", "2", "--hidden", "16", "--random",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("sha256:"));

    let (ok, out, _) = fp(&["inspect", ms]);
    assert!(ok);
    assert!(
        out.contains("2 coupling blocks")
            && out.contains("obs 3, goal 0, act 4")
            && out.contains("inverse"),
        "{out}"
    );

    let (ok, out, err) = fp(&[
        "sample",
        ms,
        "--obs",
        "0.1,-0.2,0.3",
        "--seed",
        "3",
        "--tick",
        "9",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["action"].as_array().unwrap().len(), 4);
    assert!(v["log_prob"].as_f64().unwrap().is_finite());
    let (_, again, _) = fp(&[
        "sample",
        ms,
        "--obs",
        "0.1,-0.2,0.3",
        "--seed",
        "3",
        "--tick",
        "9",
        "--json",
    ]);
    assert_eq!(out, again, "seed + tick determine the sample");

    let (ok, _, err) = fp(&["sample", ms, "--obs", "0.1,0.2"]);
    assert!(
        !ok && err.contains("observation has 2 values, the model expects 3"),
        "{err}"
    );
    let (ok, _, err) = fp(&["sample", ms, "--obs", "0.1,NaN,0.2"]);
    assert!(!ok && err.contains("NaN"), "{err}");

    let (ok, out, err) = fp(&["bench", ms, "--n", "300", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["allocations_per_sample"].as_f64().unwrap(), 0.0);
    assert!(
        v["bound_us"].as_f64().unwrap() > 0.0 && v["median_over_bound"].as_f64().unwrap() > 0.0
    );
    let lat = &v["sampler"];
    assert!(lat["min_us"].as_f64().unwrap() <= lat["median_us"].as_f64().unwrap());
    assert!(lat["median_us"].as_f64().unwrap() <= lat["p99_us"].as_f64().unwrap());

    // a truncated model: clear error, non-zero exit, no panic
    let bytes = std::fs::read(&m).unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = fp(&["inspect", bad.to_str().unwrap()]);
    assert!(
        !ok && err.contains("loading model") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn demos_train_eval_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("demos.npz");
    let m = dir.path().join("pm.safetensors");
    let (ok, _, err) = fp(&[
        "demos",
        "pointmass",
        "--out",
        d.to_str().unwrap(),
        "--episodes",
        "20",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = fp(&[
        "train",
        "bc",
        "--data",
        d.to_str().unwrap(),
        "--out",
        m.to_str().unwrap(),
        "--blocks",
        "2",
        "--hidden",
        "16",
        "--steps",
        "40",
        "--batch",
        "64",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("final val NLL"), "{out}");
    let png = std::fs::read(m.with_extension("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (ok, out, err) = fp(&["eval", "pointmass", m.to_str().unwrap(), "--episodes", "5"]);
    assert!(ok, "{err}");
    assert!(out.contains("over 5 episodes"), "{out}");
}

#[test]
fn keygen_writes_a_key_pair_and_the_learner_refuses_a_key_others_may_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("learner.key");
    let ks = key.to_str().unwrap();
    let (ok, out, err) = fp(&["keygen", "--out", ks]);
    assert!(ok, "{err}");
    assert!(out.contains("public key: ed25519:"), "{out}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    let public = dir.path().join("learner.key.pub");
    assert_eq!(mode(&public), 0o644);
    let text = std::fs::read_to_string(&public).unwrap();
    assert!(
        out.contains(text.split_whitespace().next().unwrap()),
        "{out}"
    );
    // never overwritten
    let (ok, _, err) = fp(&["keygen", "--out", ks]);
    assert!(!ok && err.contains("already exists"), "{err}");
    // a key group or others may read is refused before the learner starts
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = fp(&[
        "finetune",
        "--offline",
        "none.npz",
        "--init",
        "none.safetensors",
        "--out",
        dir.path().join("out").to_str().unwrap(),
        "--signing-key",
        ks,
    ]);
    assert!(
        !ok && err.contains("--signing-key")
            && err.contains("readable by group or others (mode 0644)"),
        "{err}"
    );
    // an unsigned model says so
    let m = dir.path().join("m.safetensors");
    let ms = m.to_str().unwrap();
    let (ok, _, err) = fp(&[
        "new", ms, "--obs", "2", "--act", "2", "--blocks", "1", "--hidden", "8",
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = fp(&["inspect", ms]);
    assert!(ok && out.contains("signed by      : - (unsigned)"), "{out}");
}
