//! TensorBoard's event files, written without TensorFlow: each record is TFRecord framing
//! (length, masked CRC-32C of the length, the bytes, masked CRC-32C of the bytes) around an
//! `Event` protocol buffer, encoded here by hand (the few fields TensorBoard reads: wall time,
//! step, a summary of scalar values or of one text tensor).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends events to one file named as TensorBoard looks for them
/// (`events.out.tfevents.<seconds>.<host>`).
pub struct EventWriter {
    file: File,
}

impl EventWriter {
    /// A new event file in `dir` (created if missing), starting with the file-version event.
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let host = brainfloat_files::host_name();
        let seconds = now().floor() as u64;
        let path = dir.join(format!(
            "events.out.tfevents.{seconds}.{host}.{}",
            std::process::id()
        ));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        let mut writer = Self { file };
        let mut event = Vec::new();
        field_double(&mut event, 1, now());
        field_bytes(&mut event, 3, b"brain.Event:2");
        writer.record(&event)?;
        Ok(writer)
    }

    /// Scalars `(tag, value)` of `step` (stored as float32, as TensorBoard's `simple_value`).
    pub fn scalars(&mut self, step: usize, values: &[(String, f64)]) -> io::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut entry = Vec::new();
            field_bytes(&mut entry, 1, tag.as_bytes());
            key(&mut entry, 2, 5);
            entry.extend_from_slice(&(*value as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &entry);
        }
        self.event(step, &summary)
    }

    /// `text` under `tag` at `step`, for TensorBoard's text dashboard.
    pub fn text(&mut self, step: usize, tag: &str, text: &str) -> io::Result<()> {
        // TensorProto { dtype: DT_STRING (7), tensor_shape: {} (a scalar), string_val: text }
        let mut tensor = Vec::new();
        key(&mut tensor, 1, 0);
        varint(&mut tensor, 7);
        field_bytes(&mut tensor, 2, &[]);
        field_bytes(&mut tensor, 8, text.as_bytes());
        // SummaryMetadata { plugin_data: { plugin_name: "text" } }
        let mut plugin = Vec::new();
        field_bytes(&mut plugin, 1, b"text");
        let mut metadata = Vec::new();
        field_bytes(&mut metadata, 1, &plugin);
        let mut entry = Vec::new();
        field_bytes(&mut entry, 1, tag.as_bytes());
        field_bytes(&mut entry, 8, &tensor);
        field_bytes(&mut entry, 9, &metadata);
        let mut summary = Vec::new();
        field_bytes(&mut summary, 1, &entry);
        self.event(step, &summary)
    }

    /// `Event { wall_time, step, summary }`, written and flushed.
    fn event(&mut self, step: usize, summary: &[u8]) -> io::Result<()> {
        let mut event = Vec::new();
        field_double(&mut event, 1, now());
        key(&mut event, 2, 0);
        varint(&mut event, step as u64);
        field_bytes(&mut event, 5, summary);
        self.record(&event)
    }

    /// One TFRecord: the whole record in one write, so that a reader never sees half of one.
    fn record(&mut self, data: &[u8]) -> io::Result<()> {
        let length = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&length);
        record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
        record.extend_from_slice(data);
        record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.file.write_all(&record)?;
        self.file.flush()
    }
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A protocol-buffer field key: `field` number and wire type.
fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field (strings, bytes, nested messages).
fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn field_double(out: &mut Vec<u8>, field: u32, value: f64) {
    key(out, field, 1);
    out.extend_from_slice(&value.to_le_bytes());
}

/// TFRecord's checksum: CRC-32C, rotated right by 15 and offset.
fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: event records are small.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The check value of CRC-32C (RFC 3720): the CRC of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn varints_and_keys_encode_as_protobuf_does() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xAC, 0x02]);
        out.clear();
        key(&mut out, 5, 2);
        assert_eq!(out, [0x2A]);
    }

    #[test]
    fn records_are_framed_with_their_lengths_and_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        writer.scalars(3, &[("loss".to_string(), 2.5)]).unwrap();
        drop(writer);
        let file = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        let mut at = 0;
        let mut records = 0;
        while at < bytes.len() {
            let length = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let length_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(length_crc, masked_crc32c(&bytes[at..at + 8]));
            let data = &bytes[at + 12..at + 12 + length];
            let data_crc = u32::from_le_bytes(
                bytes[at + 12 + length..at + 16 + length]
                    .try_into()
                    .unwrap(),
            );
            assert_eq!(data_crc, masked_crc32c(data));
            at += 16 + length;
            records += 1;
        }
        assert_eq!((at, records), (bytes.len(), 2));
    }
}
