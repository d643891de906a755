//! Writes every frame the engine receives and sends to a pcap file
//! (`--pcap FILE`) that tcpdump and Wireshark read.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: u32 = 65_535;

pub struct PcapWriter {
    out: BufWriter<File>,
    frames: u64,
}

impl PcapWriter {
    /// Creates (or truncates) `path` and writes the file header.
    pub fn create(path: &Path) -> anyhow::Result<PcapWriter> {
        let file =
            File::create(path).with_context(|| format!("creating pcap file {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = Vec::with_capacity(24);
        header.extend(0xa1b2_c3d4u32.to_le_bytes()); // microsecond timestamps
        header.extend(2u16.to_le_bytes());
        header.extend(4u16.to_le_bytes());
        header.extend(0i32.to_le_bytes());
        header.extend(0u32.to_le_bytes());
        header.extend(SNAPLEN.to_le_bytes());
        header.extend(LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out, frames: 0 })
    }

    /// Appends one frame, stamped with the wall clock.
    pub fn write(&mut self, frame: &[u8]) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let len = frame.len().min(SNAPLEN as usize);
        let mut rec = [0u8; 16];
        rec[0..4].copy_from_slice(&(t.as_secs() as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&t.subsec_micros().to_le_bytes());
        rec[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        rec[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        // A full disk must not stop the endpoint; the capture just ends short.
        if self.out.write_all(&rec).is_ok() && self.out.write_all(&frame[..len]).is_ok() {
            self.frames += 1;
        }
    }

    /// Pushes buffered records to the file.
    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }
}

impl Drop for PcapWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_readable_file() {
        let path = std::env::temp_dir().join(format!("pcap-test-{}.pcap", std::process::id()));
        {
            let mut w = PcapWriter::create(&path).unwrap();
            w.write(&[0xaa; 60]);
            w.write(&[0xbb; 100]);
            assert_eq!(w.frames(), 2);
        }
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(bytes.len(), 24 + 16 + 60 + 16 + 100);
        assert_eq!(&bytes[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(bytes[32..36].try_into().unwrap()), 60);
    }
}
