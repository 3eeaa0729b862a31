//! Entry points for fuzzing the parsers that read untrusted bytes: the
//! model loader, the transition log's CDR decoder and MCAP reader, the
//! fleet link's records batch, and the node's parameter parser. Each takes arbitrary bytes and must return
//! (Ok or Err) without panicking, hanging or reading out of bounds.
//!
//! Two drivers call them: `crates/core/tests/fuzz.rs` (stable Rust, a
//! seeded mutation loop for a bounded time, run in CI, replaying the saved
//! crashers in `crates/core/tests/fuzz_corpus/`), and the cargo-fuzz
//! targets in `fuzz/` (nightly, libFuzzer, for long runs). Not for the
//! control thread; allocates freely.

use std::io::Write;

use crate::log::reader::Tail;
use crate::log::Transition;
use crate::node::config::{parameter_names, source_fields, NodeConfig, ParamMap, ParamValue};
use crate::policy::model::ModelFile;

/// The model loader on a whole file's bytes.
pub fn model_loader(data: &[u8]) {
    let _ = ModelFile::from_bytes(data);
}

/// A fleet records batch from the graph, and each record in it; and a
/// fleet acknowledgement as JSON, and as the serialized std_msgs/String
/// the robot's link decodes.
pub fn fleet_batch(data: &[u8]) {
    use crate::fleet::wire::{cdr_string, from_json, Ack, Batch};
    if let Ok(b) = Batch::decode(data) {
        for r in &b.records {
            let _ = Transition::decode(r);
        }
        let _ = b.body();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(a) = from_json::<Ack>(s) {
            let _ = a.entries();
        }
    }
    if let Ok(a) = cdr_string(data).and_then(Ack::from_capped) {
        let _ = a.next_for("r1", 0x0123_4567_89ab_cdef);
    }
}

/// One CDR-encoded transition record.
pub fn cdr_decoder(data: &[u8]) {
    let _ = Transition::decode(data);
}

/// The MCAP log reader on a file holding `data`, polled twice (the second
/// poll must not re-read or loop).
pub fn log_reader(data: &[u8]) {
    let Ok(mut f) = tempfile_in_tmp() else {
        return;
    };
    if f.1.write_all(data).and_then(|_| f.1.flush()).is_err() {
        return;
    }
    let mut tail = Tail::new(&f.0);
    let _ = tail.poll();
    let _ = tail.poll();
    // a seek (no index: a bounded scan) and a bounded poll from there
    if let Ok(mut t) = Tail::open_at(&f.0, data.len() as u64 % 7) {
        let _ = t.poll_indexed(3);
        let _ = t.poll_max(2);
    }
    let _ = crate::log::reader::count(&f.0);
    let _ = std::fs::remove_file(&f.0);
}

fn tempfile_in_tmp() -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "flowpilot-fuzz-{}-{}.mcap",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::File::create(&p)?;
    Ok((p, f))
}

/// The parameter parser on a parameter set decoded from bytes: each entry
/// is (name selector, value type, payload), names drawn from the real ones
/// (and their misspellings), values of every ROS type.
pub fn config_parser(data: &[u8]) {
    let _ = NodeConfig::from_params(&params_from_bytes(data));
}

/// Decode a parameter set from fuzzer bytes (total: any bytes give a map).
pub fn params_from_bytes(data: &[u8]) -> ParamMap {
    let names = parameter_names();
    let fields = source_fields();
    let mut m = ParamMap::new();
    let mut it = data.iter().copied();
    let mut next = move || it.next();
    while let (Some(sel), Some(kind)) = (next(), next()) {
        let name = match sel % 4 {
            0 | 1 => names[sel as usize % names.len()].to_string(),
            2 => format!(
                "sources.{}.{}",
                ["arm", "task", "x"][sel as usize % 3],
                fields[(sel as usize / 3) % fields.len()]
            ),
            _ => {
                // a misspelling: one byte of a real name changed
                let mut n = names[sel as usize % names.len()].as_bytes().to_vec();
                let i = next().unwrap_or(0) as usize % n.len();
                n[i] = b'a' + next().unwrap_or(0) % 26;
                String::from_utf8_lossy(&n).into_owned()
            }
        };
        let mut byte = || next().unwrap_or(0);
        let num = |b: u8| -> f64 {
            [
                0.0,
                -1.0,
                1.0,
                0.5,
                1e9,
                -1e9,
                f64::NAN,
                f64::INFINITY,
                100.0,
                1e-3,
            ][b as usize % 10]
        };
        let int = |b: u8| -> i64 {
            [0, 1, -1, 2, 1023, 1024, i64::MAX, i64::MIN, 50, 4][b as usize % 10]
        };
        let word = |b: u8| -> String {
            [
                "",
                "arm",
                "task",
                "joint_state",
                "float64_multi_array",
                "pose_stamped",
                "imu",
                "odometry",
                "twist_stamped",
                "zero",
                "hold",
                "stop",
                "/t",
                "reliable",
                "best_effort",
                "position",
                "x",
                "joint_trajectory",
                "twist",
            ][b as usize % 19]
                .to_string()
        };
        let value = match kind % 9 {
            0 => ParamValue::Bool(byte() & 1 == 1),
            1 => ParamValue::Integer(int(byte())),
            2 => ParamValue::Double(num(byte())),
            3 => ParamValue::String(word(byte())),
            4 => ParamValue::IntegerArray((0..byte() % 5).map(|_| int(byte())).collect()),
            5 => ParamValue::DoubleArray((0..byte() % 5).map(|_| num(byte())).collect()),
            6 => ParamValue::StringArray((0..byte() % 4).map(|_| word(byte())).collect()),
            7 => ParamValue::BoolArray(vec![true]),
            _ => ParamValue::NotSet,
        };
        m.insert(name, value);
    }
    m
}
