//! The transition log: one record per logged control tick, written off the
//! control thread into crash-safe MCAP files (docs/log-format.md).
//!
//! - [`Transition`]: the fixed-size record the control thread fills (no
//!   allocation) and pushes into a bounded queue.
//! - [`writer`]: the writer thread (MCAP, ros2msg schema, CDR messages,
//!   periodic flush; a write error stops logging, never the loop).
//! - [`index`]: each file's sparse sidecar index (seeking in bounded time
//!   and memory).
//! - [`reader`]: a tail-tolerant reader that recovers every complete record
//!   of a file that was killed mid-write, and follows files still growing.

pub mod bag;
mod error;
pub mod index;
pub mod reader;
pub mod writer;

pub use error::{IoStep, LogError, WriteStep};

type Result<T, E = LogError> = std::result::Result<T, E>;

/// `ensure!` for [`LogError`]: return `err` unless `cond`.
fn ensure(cond: bool, err: LogError) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(err)
    }
}

/// Largest observation (+ goal) and action widths a record carries.
pub const MAX_OBS: usize = 128;
pub const MAX_ACT: usize = 32;

/// Schema name and text (ros2msg) of the logged message; the topic is
/// [`TOPIC`]. Foxglove and rosbag2 tooling decode CDR against this text.
pub const SCHEMA_NAME: &str = "flowpilot_msgs/msg/Transition";
pub const TOPIC: &str = "/flowpilot/transitions";

/// The ros2msg schema text, with the decision codes written from
/// [`crate::rt::decision::CODES`] (their one owner).
pub fn schema_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        SCHEMA_TEMPLATE
            .replace("{decisions}", &crate::rt::decision::Decision::legend())
            .replace("{stops}", crate::rt::stop::StopKind::legend())
    })
}

const SCHEMA_TEMPLATE: &str = "\
# One control tick of flowpilot_node (docs/log-format.md).
uint64 tick              # control tick index since the node started
int64 mono_ns            # CLOCK_MONOTONIC at the tick
int64 wall_ns            # wall clock at the tick
uint64 episode           # episode boundaries seen before this tick
uint8 decision           # {decisions}
bool intervention        # the applied action is a human override
bool terminated          # last record of an episode that ended in a terminal state
bool truncated           # last record of an episode cut by a time limit
float64 reward           # latest reward at this tick (NaN: none)
float32 log_prob         # exact log-prob of action_sampled under the policy
uint64 policy_version
uint64 seed
string policy_digest     # sha256:<hex> of the running model file
string normalizer_digest # sha256:<hex> of the observation/goal normalisers
float32[] obs            # raw observation (physical units)
float32[] goal           # raw goal (empty without one)
float32[] action_sampled # sampled action before clipping, normalised [-1, 1] space
float64[] action_applied # action sent to the robot, physical units (empty: none)
float64[] action_executed # action the robot reports it applied in the step that ended at this record's observation (log.step_source; empty: none)
uint64 robot_step        # robot steps reported so far (log.step_source samples; 0: no step source)
float32 temperature      # latent temperature the action was sampled with
uint64 chunk             # chunked policies: chunks sampled before the one this action step came from (0 otherwise)
uint32 chunk_index       # chunked policies: the step within that chunk (log_prob is the whole chunk's)
uint8 stop               # which stop this tick applied: {stops}
";

/// Who produced a policy and with which input normalisation: fixed per
/// policy, so the control thread copies it without hashing or allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyId {
    pub version: u64,
    pub digest: [u8; 32],
    pub normalizer_digest: [u8; 32],
}

impl PolicyId {
    pub fn of(spec: &crate::policy::model::ModelSpec) -> Self {
        use sha2::{Digest, Sha256};
        let mut digest = [0u8; 32];
        let hexpart = spec.digest.strip_prefix("sha256:").unwrap_or("");
        let _ = hex::decode_to_slice(hexpart, &mut digest);
        let mut h = Sha256::new();
        for v in spec.obs_norm.mean.iter().chain(&spec.obs_norm.std) {
            h.update(v.to_le_bytes());
        }
        if let Some(g) = &spec.goal_norm {
            for v in g.mean.iter().chain(&g.std) {
                h.update(v.to_le_bytes());
            }
        }
        Self {
            version: spec.version,
            digest,
            normalizer_digest: h.finalize().into(),
        }
    }
}

/// One logged tick. `Copy` and fixed-size so the control thread can hand
/// it over a lock-free queue without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Transition {
    pub tick: u64,
    pub mono_ns: i64,
    pub wall_ns: i64,
    pub episode: u64,
    /// Whether the boundary that began `episode` was a terminal state (set
    /// from the topic that reported it; the writer moves it onto the last
    /// record of the previous episode).
    pub began_after_terminal: bool,
    pub decision: u8,
    pub intervention: bool,
    pub terminated: bool,
    pub truncated: bool,
    pub reward: f64,
    pub log_prob: f32,
    pub policy: PolicyId,
    pub seed: u64,
    pub n_obs: usize,
    pub n_goal: usize,
    /// obs ++ goal.
    pub inputs: [f32; MAX_OBS],
    pub n_act: usize,
    pub sampled: [f32; MAX_ACT],
    /// Whether an action was sent this tick.
    pub applied_valid: bool,
    pub applied: [f64; MAX_ACT],
    /// Whether the robot reported the action it executed (step source).
    pub executed_valid: bool,
    pub executed: [f64; MAX_ACT],
    /// Robot steps reported so far (0 without a step source): consecutive
    /// robot steps have consecutive numbers, so a lost record shows.
    pub robot_step: u64,
    pub temperature: f32,
    /// Chunked policies: which chunk (counted from 0) and which of its
    /// steps produced the action (0, 0 otherwise).
    pub chunk: u64,
    pub chunk_index: u32,
    /// Which stop the tick applied (`StopKind::code`; 0: none).
    pub stop: u8,
}

impl Default for Transition {
    fn default() -> Self {
        Self {
            tick: 0,
            mono_ns: 0,
            wall_ns: 0,
            episode: 0,
            began_after_terminal: false,
            decision: 0,
            intervention: false,
            terminated: false,
            truncated: false,
            reward: f64::NAN,
            log_prob: f32::NAN,
            policy: PolicyId::default(),
            seed: 0,
            n_obs: 0,
            n_goal: 0,
            inputs: [0.0; MAX_OBS],
            n_act: 0,
            sampled: [0.0; MAX_ACT],
            applied_valid: false,
            applied: [0.0; MAX_ACT],
            executed_valid: false,
            executed: [0.0; MAX_ACT],
            robot_step: 0,
            temperature: f32::NAN,
            chunk: 0,
            chunk_index: 0,
            stop: 0,
        }
    }
}

impl Transition {
    /// Whether this record's applied action is one SAC may learn from: the
    /// policy's own sample, or a human override that was sent.
    pub fn acted(&self) -> bool {
        self.applied_valid
            && (crate::rt::decision::Decision::is_policy_code(self.decision) || self.intervention)
    }

    pub fn obs(&self) -> &[f32] {
        &self.inputs[..self.n_obs]
    }
    pub fn goal(&self) -> &[f32] {
        &self.inputs[self.n_obs..self.n_obs + self.n_goal]
    }
    pub fn sampled(&self) -> &[f32] {
        &self.sampled[..self.n_act]
    }
    pub fn applied(&self) -> Option<&[f64]> {
        self.applied_valid.then(|| &self.applied[..self.n_act])
    }
    /// The action the robot reports it executed in the step that ended at
    /// this record's observation.
    pub fn executed(&self) -> Option<&[f64]> {
        self.executed_valid.then(|| &self.executed[..self.n_act])
    }

    /// CDR (little-endian, XCDR1) encoding of the schema above into `out`
    /// (cleared first; reuses its capacity).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
        let mut c = CdrOut(out);
        c.u64(self.tick);
        c.u64(self.mono_ns as u64);
        c.u64(self.wall_ns as u64);
        c.u64(self.episode);
        c.u8(self.decision);
        c.u8(self.intervention as u8);
        c.u8(self.terminated as u8);
        c.u8(self.truncated as u8);
        c.f64(self.reward);
        c.f32(self.log_prob);
        c.u64(self.policy.version);
        c.u64(self.seed);
        c.digest(&self.policy.digest);
        c.digest(&self.policy.normalizer_digest);
        c.f32s(self.obs());
        c.f32s(self.goal());
        c.f32s(self.sampled());
        match self.applied() {
            Some(a) => c.f64s(a),
            None => c.f64s(&[]),
        }
        match self.executed() {
            Some(a) => c.f64s(a),
            None => c.f64s(&[]),
        }
        c.u64(self.robot_step);
        c.f32(self.temperature);
        c.u64(self.chunk);
        c.u32(self.chunk_index);
        c.u8(self.stop);
    }

    /// Decode a CDR message written by [`Self::encode`].
    pub fn decode(buf: &[u8]) -> Result<Self> {
        ensure(buf.len() >= 4 && buf[..2] == [0x00, 0x01], LogError::NotCdr)?;
        let mut c = CdrIn {
            b: &buf[4..],
            pos: 0,
        };
        let mut t = Transition {
            tick: c.u64()?,
            mono_ns: c.u64()? as i64,
            wall_ns: c.u64()? as i64,
            episode: c.u64()?,
            decision: c.u8()?,
            intervention: c.u8()? != 0,
            terminated: c.u8()? != 0,
            truncated: c.u8()? != 0,
            reward: c.f64()?,
            log_prob: c.f32()?,
            ..Default::default()
        };
        t.policy.version = c.u64()?;
        t.seed = c.u64()?;
        t.policy.digest = c.digest()?;
        t.policy.normalizer_digest = c.digest()?;
        let obs = c.f32s()?;
        let goal = c.f32s()?;
        ensure(obs.len() + goal.len() <= MAX_OBS, LogError::ObsTooWide)?;
        t.n_obs = obs.len();
        t.n_goal = goal.len();
        t.inputs[..obs.len()].copy_from_slice(&obs);
        t.inputs[obs.len()..obs.len() + goal.len()].copy_from_slice(&goal);
        let s = c.f32s()?;
        ensure(s.len() <= MAX_ACT, LogError::ActionTooWide)?;
        t.n_act = s.len();
        t.sampled[..s.len()].copy_from_slice(&s);
        let a = c.f64s()?;
        if !a.is_empty() {
            ensure(a.len() == t.n_act, LogError::AppliedWidth)?;
            t.applied_valid = true;
            t.applied[..a.len()].copy_from_slice(&a);
        }
        // Fields added later: a record written before them ends here.
        if c.at_end() {
            return Ok(t);
        }
        let e = c.f64s()?;
        if !e.is_empty() {
            ensure(e.len() == t.n_act, LogError::AppliedWidth)?;
            t.executed_valid = true;
            t.executed[..e.len()].copy_from_slice(&e);
        }
        t.robot_step = c.u64()?;
        t.temperature = c.f32()?;
        // Added with action chunks.
        if c.at_end() {
            return Ok(t);
        }
        t.chunk = c.u64()?;
        t.chunk_index = c.u32()?;
        // Added with the per-interface stop.
        if c.at_end() {
            return Ok(t);
        }
        t.stop = c.u8()?;
        Ok(t)
    }
}

fn digest_string(d: &[u8; 32]) -> [u8; 71] {
    let mut s = [0u8; 71];
    s[..7].copy_from_slice(b"sha256:");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in d.iter().enumerate() {
        s[7 + 2 * i] = HEX[(b >> 4) as usize];
        s[8 + 2 * i] = HEX[(b & 15) as usize];
    }
    s
}

/// CDR writer: primitives aligned to their size, relative to the payload
/// start (after the 4-byte encapsulation header).
struct CdrOut<'a>(&'a mut Vec<u8>);

impl CdrOut<'_> {
    fn align(&mut self, n: usize) {
        while !(self.0.len() - 4).is_multiple_of(n) {
            self.0.push(0);
        }
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.align(4);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.align(8);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.align(4);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.align(8);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn digest(&mut self, d: &[u8; 32]) {
        if d.iter().all(|&b| b == 0) {
            self.u32(1);
            self.0.push(0);
            return;
        }
        let s = digest_string(d);
        self.u32(s.len() as u32 + 1);
        self.0.extend_from_slice(&s);
        self.0.push(0);
    }
    fn f32s(&mut self, v: &[f32]) {
        self.u32(v.len() as u32);
        for x in v {
            self.f32(*x);
        }
    }
    fn f64s(&mut self, v: &[f64]) {
        self.u32(v.len() as u32);
        for x in v {
            self.f64(*x);
        }
    }
}

struct CdrIn<'a> {
    b: &'a [u8],
    pos: usize,
}

impl CdrIn<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }
    fn take(&mut self, n: usize, align: usize) -> Result<&[u8]> {
        self.pos = self.pos.div_ceil(align) * align;
        if self.pos.checked_add(n).is_none_or(|end| end > self.b.len()) {
            return Err(LogError::Truncated);
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// `N` bytes aligned to `N`.
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N, N)?.try_into().expect("take returns N bytes"))
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, 1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.array()?))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }
    fn digest(&mut self) -> Result<[u8; 32]> {
        let n = self.u32()? as usize;
        let s = self.take(n, 1)?;
        let mut d = [0u8; 32];
        if n > 1 {
            let txt = std::str::from_utf8(&s[..n - 1])?;
            let h = txt.strip_prefix("sha256:").unwrap_or(txt);
            hex::decode_to_slice(h, &mut d)?;
        }
        Ok(d)
    }
    fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.u32()? as usize;
        ensure(n <= 1 << 20, LogError::SequenceTooLong)?;
        (0..n).map(|_| self.f32()).collect()
    }
    fn f64s(&mut self) -> Result<Vec<f64>> {
        let n = self.u32()? as usize;
        ensure(n <= 1 << 20, LogError::SequenceTooLong)?;
        (0..n).map(|_| self.f64()).collect()
    }
}

/// Format a digest as `sha256:<hex>` (empty for the all-zero "none").
pub fn digest_hex(d: &[u8; 32]) -> String {
    if d.iter().all(|&b| b == 0) {
        return String::new();
    }
    String::from_utf8(digest_string(d).to_vec()).expect("ascii")
}
