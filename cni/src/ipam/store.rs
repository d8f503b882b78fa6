//! host-local's on-disk allocation store: `<dataDir>/<network>/<ip>` holds
//! `<container id>\r\n<ifname>`, `last_reserved_ip.<range set index>` the last address
//! handed out, and `lock` is flock'ed around every change. Byte-compatible with the
//! reference host-local, so both can share a directory.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED: &str = "last_reserved_ip.";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the store could not be read, written or locked.
    #[error("allocation store {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The store of one network, locked for as long as it lives.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

/// One allocation: address, owner container id and interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub id: String,
    pub ifname: String,
}

impl Store {
    /// Opens (creating) `<data_dir>/<network>` and takes its lock.
    pub fn lock(data_dir: &Path, network: &str) -> Result<Store, Error> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| Error::Io(dir.clone(), e))?;
        let path = dir.join("lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::Io(path.clone(), e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::Io(path.clone(), std::io::Error::from(e)))?;
        Ok(Store { dir, _lock: lock })
    }

    /// Opens the store only if it exists (DEL and GC must not create directories).
    pub fn lock_existing(data_dir: &Path, network: &str) -> Result<Option<Store>, Error> {
        if !data_dir.join(network).is_dir() {
            return Ok(None);
        }
        Store::lock(data_dir, network).map(Some)
    }

    fn path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Reserves `ip` for (id, ifname); false when it is already taken.
    pub fn reserve(&self, id: &str, ifname: &str, ip: IpAddr, range_set: usize) -> Result<bool, Error> {
        let path = self.path(ip);
        let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Error::Io(path, e)),
        };
        let content = format!("{}{LINE_BREAK}{ifname}", id.trim());
        if let Err(e) = f.write_all(content.as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(Error::Io(path, e));
        }
        let last = self.dir.join(format!("{LAST_RESERVED}{range_set}"));
        fs::write(&last, ip.to_string()).map_err(|e| Error::Io(last, e))?;
        Ok(true)
    }

    pub fn last_reserved(&self, range_set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{range_set}"))).ok()?.trim().parse().ok()
    }

    pub fn release(&self, ip: IpAddr) -> Result<(), Error> {
        let path = self.path(ip);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::Io(path, e)),
            _ => Ok(()),
        }
    }

    /// Whether any address is allocated (names only, no file is read).
    pub fn holds_any(&self) -> Result<bool, Error> {
        let rd = fs::read_dir(&self.dir).map_err(|e| Error::Io(self.dir.clone(), e))?;
        Ok(rd.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n.parse::<IpAddr>().is_ok())))
    }

    /// Every allocation in the store.
    pub fn list(&self) -> Result<Vec<Allocation>, Error> {
        let rd = fs::read_dir(&self.dir).map_err(|e| Error::Io(self.dir.clone(), e))?;
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let Ok(content) = fs::read_to_string(ent.path()) else {
                continue;
            };
            let mut lines = content.trim().splitn(2, LINE_BREAK);
            let id = lines.next().unwrap_or_default().trim().to_string();
            let ifname = lines.next().unwrap_or_default().trim().to_string();
            out.push(Allocation { ip, id, ifname });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// Allocations of (id, ifname); a legacy file with only the id matches too.
    pub fn get_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|a| a.id == id && (a.ifname == ifname || a.ifname.is_empty()))
            .map(|a| a.ip)
            .collect())
    }

    /// Releases every address of (id, ifname); returns them.
    pub fn release_by_id(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let ips = self.get_by_id(id, ifname)?;
        for ip in &ips {
            self.release(*ip)?;
        }
        Ok(ips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_release() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::lock(tmp.path(), "net").unwrap();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(!s.holds_any().unwrap(), "lock and last_reserved files are no allocations");
        assert!(s.reserve("abc", "eth0", ip, 0).unwrap());
        assert!(s.holds_any().unwrap());
        assert!(!s.reserve("def", "eth0", ip, 0).unwrap());
        assert_eq!(fs::read_to_string(tmp.path().join("net/10.0.0.2")).unwrap(), "abc\r\neth0");
        assert_eq!(s.last_reserved(0), Some(ip));
        assert_eq!(s.get_by_id("abc", "eth0").unwrap(), vec![ip]);
        assert!(s.get_by_id("abc", "eth1").unwrap().is_empty());
        assert_eq!(s.release_by_id("abc", "eth0").unwrap(), vec![ip]);
        assert!(s.list().unwrap().is_empty());
        assert!(!s.holds_any().unwrap());
    }
}
