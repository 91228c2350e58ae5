//! Resumable training state. It is serde-serializable (JSON via [`TrainState::to_bytes`]);
//! f32 tensors are stored as base64 of their little-endian bytes and f64 scalars as their
//! bit patterns, so a round trip is exact — JSON numbers are not guaranteed to be.

use crate::reference::LoraConfig;
use crate::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An f32 tensor that serializes exactly (base64 of little-endian bytes).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensor(pub Vec<f32>);

impl Serialize for Tensor {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = self.0.iter().flat_map(|x| x.to_le_bytes()).collect();
        s.serialize_str(&base64_encode(&bytes))
    }
}

impl<'de> Deserialize<'de> for Tensor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = base64_decode(&s).map_err(serde::de::Error::custom)?;
        if !bytes.len().is_multiple_of(4) {
            return Err(serde::de::Error::custom(
                "tensor byte length is not a multiple of 4",
            ));
        }
        Ok(Tensor(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}

/// What a backend saves: the LoRA tensors (layer, projection, A then B — the order of
/// `Lora::tensors_mut`) and the AdamW first and second moments in the same order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamState {
    pub lora: LoraConfig,
    pub tensors: Vec<Tensor>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Block counts after which the early exits sit (their tensors follow the layers').
    #[serde(default)]
    pub exits: Vec<usize>,
    /// AdamW steps each tensor has taken, where tensors are trained in windows (empty when
    /// every tensor takes every step: the trainer's step is then the count).
    #[serde(default)]
    pub steps: Vec<u64>,
}

/// Everything needed to continue a run exactly: the backend's tensors and moments, and
/// the trainer's position. Shuffling and dropout are derived from (seed, epoch) and
/// (seed, step, micro-batch), so no random-stream state needs saving.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub version: u32,
    pub seed: u64,
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch of the next training row and its index in that epoch's shuffled order.
    pub epoch: u64,
    pub pos: usize,
    /// Best validation loss so far (f64 bits) and evaluations since it improved.
    pub best_val_bits: Option<u64>,
    pub bad_evals: u32,
    /// Fingerprint of the training rows, to refuse resuming on other data.
    pub data_hash: u64,
    pub params: ParamState,
    /// Layer tuning's schedule and the phases run so far (which window, its losses).
    #[serde(default)]
    pub layers: Option<super::layers::LayerSchedule>,
    #[serde(default)]
    pub phases: Vec<super::layers::Phase>,
}

impl TrainState {
    pub const VERSION: u32 = 1;

    /// The state as JSON followed by a checksum line (`crc32 <8 hex digits>` of the JSON),
    /// so that a file cut short or damaged is told apart from a good one.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes =
            serde_json::to_vec(self).map_err(|e| Error::Invalid(format!("checkpoint: {e}")))?;
        let sum = crc32fast::hash(&bytes);
        bytes.extend_from_slice(format!("\n{CHECKSUM_TAG}{sum:08x}\n").as_bytes());
        Ok(bytes)
    }

    /// Reads [`to_bytes`](Self::to_bytes)' format; a checksum that does not match is an
    /// error, and so is a state without one that is not whole JSON. (Checkpoints written
    /// before the checksum have none and are read as they are.)
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let json = match checksummed(bytes) {
            Some((json, want)) => {
                let got = crc32fast::hash(json);
                if got != want {
                    return Err(Error::Invalid(format!(
                        "checkpoint is damaged: its checksum is {want:08x} but its contents give \
                         {got:08x} (a file cut short, or changed after it was written)"
                    )));
                }
                json
            }
            None => bytes,
        };
        let s: TrainState = serde_json::from_slice(json).map_err(|e| {
            Error::Invalid(format!(
                "checkpoint is not a whole checkpoint (cut short or damaged?): {e}"
            ))
        })?;
        if s.version != Self::VERSION {
            return Err(Error::Invalid(format!(
                "checkpoint version {} is not the supported {}",
                s.version,
                Self::VERSION
            )));
        }
        s.check_phases()?;
        Ok(s)
    }

    /// The phases a checkpoint lists must be ones a run could have written: starting in
    /// order, none after the step reached, each on a window of the schedule (a damaged or
    /// hand-edited file otherwise sends the schedule's step arithmetic out of range).
    fn check_phases(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Invalid(format!("checkpoint's layer phases: {why}")));
        if !self.phases.is_empty() && self.layers.is_none() {
            return bad("phases listed without a layer schedule".into());
        }
        let windows = self.layers.as_ref().map_or(0, |l| l.windows.len());
        let mut last: Option<u64> = None;
        for p in &self.phases {
            if p.window >= windows {
                return bad(format!(
                    "window {} does not exist (the schedule has {windows})",
                    p.window
                ));
            }
            if p.start > self.step || last.is_some_and(|l| p.start < l) {
                return bad(format!(
                    "a phase starts at step {} (the run is at step {}, the phase before \
                     started at {})",
                    p.start,
                    self.step,
                    last.map_or("none".into(), |l| l.to_string())
                ));
            }
            last = Some(p.start);
        }
        Ok(())
    }

    pub fn best_val(&self) -> Option<f64> {
        self.best_val_bits.map(f64::from_bits)
    }
}

/// The last line of a checkpoint: this, then the JSON's CRC-32 in 8 hex digits.
const CHECKSUM_TAG: &str = "crc32 ";

/// (the JSON, the checksum its last line states), when it ends with one.
fn checksummed(bytes: &[u8]) -> Option<(&[u8], u32)> {
    let body = bytes.strip_suffix(b"\n")?;
    let nl = body.iter().rposition(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&body[nl + 1..]).ok()?;
    let hex = line.strip_prefix(CHECKSUM_TAG)?;
    (hex.len() == 8)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
        .map(|sum| (&body[..nl], sum))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Inverse of [`base64_encode`]; refuses anything that is not canonical padded base64.
pub fn base64_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return Err("base64 length is not a multiple of 4".into());
    }
    let val = |c: u8| -> std::result::Result<u32, String> {
        B64.iter()
            .position(|&x| x == c)
            .map(|p| p as u32)
            .ok_or_else(|| format!("bad base64 character {:?}", c as char))
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let n_chunks = s.len() / 4;
    for (k, c) in s.chunks(4).enumerate() {
        let pad = c.iter().rev().take_while(|&&x| x == b'=').count();
        if pad > 2 || (pad > 0 && k + 1 != n_chunks) {
            return Err("bad base64 padding".into());
        }
        let mut n = 0u32;
        for &x in &c[..4 - pad] {
            n = n << 6 | val(x)?;
        }
        n <<= 6 * pad as u32;
        let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&b[..3 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_values_and_round_trip() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        for n in 0..20u8 {
            let v: Vec<u8> = (0..n)
                .map(|i| i.wrapping_mul(37).wrapping_add(200))
                .collect();
            assert_eq!(base64_decode(&base64_encode(&v)).unwrap(), v);
        }
        assert!(base64_decode("Zg=").is_err());
        assert!(base64_decode("Zg==Zg==").is_err());
        assert!(base64_decode("Z!==").is_err());
    }

    #[test]
    fn tensor_round_trip_is_exact() {
        let t = Tensor(vec![
            0.1,
            -3.5e-38,
            f32::MIN_POSITIVE / 3.0,
            1.0 / 3.0,
            -0.0,
        ]);
        let json = serde_json::to_string(&t).unwrap();
        let back: Tensor = serde_json::from_str(&json).unwrap();
        let bits = |t: &Tensor| t.0.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&t));
    }
}
