//! Small file primitives the agent relies on: atomic replace, size-capped logs, the heartbeat
//! spool, and the pid-directory contract with the simulator.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use crate::protocol::Heartbeat;

/// Write `bytes` to `path` so readers see either the old or the new file, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)
}

/// A log file that never grows past `cap` bytes: when full it is renamed to `<name>.1`
/// (replacing the previous one) and a fresh file starts. At most `2 * cap` bytes on disk.
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    cap: u64,
    file: File,
    size: u64,
    /// Bytes ever written (across rotations): the log offset in heartbeats.
    pub total: u64,
}

impl CappedLog {
    pub fn create(path: PathBuf, cap: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            cap: cap.max(1),
            file,
            size,
            total: size,
        })
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.size >= self.cap {
                self.rotate()?;
            }
            let room = usize::try_from(self.cap - self.size).unwrap_or(usize::MAX);
            let n = room.min(bytes.len());
            self.file.write_all(&bytes[..n])?;
            self.size += n as u64;
            self.total += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.as_os_str().to_owned();
        old.push(".1");
        fs::rename(&self.path, PathBuf::from(old))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// Heartbeats not yet acknowledged, in order, mirrored in a JSON-lines file so that nothing is
/// lost while the collector is unreachable (and a restarted agent could replay them).
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    pending: VecDeque<Heartbeat>,
    /// Oldest entries are dropped beyond this (a collector gone for days must not fill the disk);
    /// the final record is never dropped because it is always the newest.
    max: usize,
    pub dropped: u64,
}

impl Spool {
    /// Open the spool, loading what an earlier run left behind.
    pub fn open(path: PathBuf, max: usize) -> io::Result<Self> {
        let mut pending = VecDeque::new();
        if let Ok(f) = File::open(&path) {
            for line in io::BufReader::new(f).lines() {
                let line = line?;
                // A torn last line (crash mid-append) is skipped; everything before it is intact.
                if let Ok(hb) = serde_json::from_str::<Heartbeat>(&line) {
                    pending.push_back(hb);
                }
            }
        }
        Ok(Self {
            path,
            pending,
            max: max.max(1),
            dropped: 0,
        })
    }

    pub fn push(&mut self, hb: Heartbeat) -> io::Result<()> {
        let mut line = serde_json::to_vec(&hb).map_err(io::Error::other)?;
        line.push(b'\n');
        self.pending.push_back(hb);
        if self.pending.len() > self.max {
            while self.pending.len() > self.max {
                self.pending.pop_front();
                self.dropped += 1;
            }
            return self.rewrite();
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&line)
    }

    /// Forget everything with `seq <= ack`.
    pub fn ack(&mut self, ack: u64) -> io::Result<()> {
        let before = self.pending.len();
        while self.pending.front().is_some_and(|h| h.seq <= ack) {
            self.pending.pop_front();
        }
        if self.pending.len() != before {
            self.rewrite()?;
        }
        Ok(())
    }

    pub fn pending(&self) -> &VecDeque<Heartbeat> {
        &self.pending
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn rewrite(&self) -> io::Result<()> {
        let mut buf = Vec::new();
        for hb in &self.pending {
            serde_json::to_writer(&mut buf, hb).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        write_atomic(&self.path, &buf)
    }
}

/// The simulator contract: a process group we start for an instance is announced as an empty
/// file named after its pgid in `$VASTICLAUDE_PID_DIR`, so the simulator can kill it when the
/// instance is stopped, preempted or destroyed.
#[derive(Debug, Clone)]
pub struct PidDir(Option<PathBuf>);

impl PidDir {
    pub const ENV: &'static str = "VASTICLAUDE_PID_DIR";

    pub fn from_env() -> Self {
        Self(
            std::env::var_os(Self::ENV)
                .map(PathBuf::from)
                .filter(|p| !p.as_os_str().is_empty()),
        )
    }

    pub fn register(&self, pgid: i32) {
        if let Some(dir) = &self.0 {
            let _ = fs::create_dir_all(dir);
            let _ = File::create(dir.join(pgid.to_string()));
        }
    }

    pub fn unregister(&self, pgid: i32) {
        if let Some(dir) = &self.0 {
            let _ = fs::remove_file(dir.join(pgid.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{JobState, LogOffsets, PROTOCOL_VERSION, Progress};

    fn hb(seq: u64) -> Heartbeat {
        Heartbeat {
            protocol_version: PROTOCOL_VERSION,
            job_id: 1,
            attempt: 1,
            fence: 1,
            seq,
            time_ms: 0,
            state: JobState::Running,
            progress: Progress::default(),
            gpus: vec![],
            gpu_error: None,
            last_checkpoint: None,
            logs: LogOffsets::default(),
            exit: None,
        }
    }

    #[test]
    fn capped_log_rotates_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.log");
        let mut l = CappedLog::create(p.clone(), 10).unwrap();
        l.write(b"0123456789abcdef").unwrap();
        l.write(b"XYZ").unwrap();
        assert_eq!(l.total, 19);
        assert_eq!(fs::read(&p).unwrap(), b"abcdefXYZ");
        l.write(b"0").unwrap();
        l.write(b"1").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"1");
        assert_eq!(l.total, 21);
        assert_eq!(fs::read(d.path().join("out.log.1")).unwrap(), b"abcdefXYZ0");
    }

    #[test]
    fn spool_survives_reopen_and_acks_in_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("spool.jsonl");
        let mut s = Spool::open(p.clone(), 100).unwrap();
        for i in 1..=5 {
            s.push(hb(i)).unwrap();
        }
        s.ack(2).unwrap();
        // A torn line at the end is ignored.
        OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"prot")
            .unwrap();
        let s2 = Spool::open(p, 100).unwrap();
        let seqs: Vec<u64> = s2.pending().iter().map(|h| h.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
    }

    #[test]
    fn spool_bounds_its_size() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path().join("s"), 3).unwrap();
        for i in 1..=5 {
            s.push(hb(i)).unwrap();
        }
        assert_eq!(
            s.pending().iter().map(|h| h.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(s.dropped, 2);
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("status.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!d.path().join("status.json.tmp").exists());
    }
}
