//! Resolving a container's user from the image's /etc/passwd and /etc/group, read inside the
//! container rootfs (symlinks resolved within it).

use std::path::Path;

use crate::image::unpack::secure_join;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from /etc/group membership, then the requested extra groups.
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

fn read_in_root(rootfs: &Path, file: &str) -> String {
    let rel = Path::new(file);
    let Some(parent) = rel.parent() else { return String::new() };
    let Some(name) = rel.file_name() else { return String::new() };
    match secure_join(rootfs, parent, false) {
        Ok(dir) => {
            let path = dir.join(name);
            // Never follow a final symlink out of the rootfs.
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => std::fs::read_to_string(&path).unwrap_or_default(),
                _ => String::new(),
            }
        }
        Err(_) => String::new(),
    }
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    read_in_root(rootfs, "etc/passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry { name: f.first()?.to_string(), uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()? })
        })
        .collect()
}

/// (name, gid, members)
fn groups(rootfs: &Path) -> Vec<(String, u32, Vec<String>)> {
    read_in_root(rootfs, "etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let members = f.get(3).map(|m| m.split(',').filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, members))
        })
        .collect()
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`, empty = root) in the rootfs.
/// A numeric uid without a passwd entry is allowed (gid 0); an unknown name is an error.
pub fn resolve(rootfs: &Path, user: &str, extra_gids: &[u32]) -> Result<User, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entries = passwd(rootfs);
    let (uid, mut gid, name) = if user_part.is_empty() {
        (0, 0, Some("root".to_string()))
    } else if let Ok(uid) = user_part.parse::<u32>() {
        match entries.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone())),
            None => (uid, 0, None),
        }
    } else {
        let e = entries.iter().find(|e| e.name == user_part).ok_or_else(|| format!("no user {user_part:?} in the image's /etc/passwd"))?;
        (e.uid, e.gid, Some(e.name.clone()))
    };
    let all_groups = groups(rootfs);
    if let Some(g) = group_part.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => all_groups.iter().find(|(n, _, _)| n == g).map(|(_, id, _)| *id).ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        };
    }
    let mut additional: Vec<u32> = Vec::new();
    if group_part.is_none() {
        if let Some(name) = &name {
            for (_, id, members) in &all_groups {
                if members.iter().any(|m| m == name) && *id != gid && !additional.contains(id) {
                    additional.push(*id);
                }
            }
        }
    }
    for g in extra_gids {
        if !additional.contains(g) {
            additional.push(*g);
        }
    }
    Ok(User { uid, gid, additional_gids: additional })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\ncorral:x:1000:1000::/home/corral:/bin/sh\n").unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\ncorral:x:1000:\nwheel:x:10:corral,other\n").unwrap();
        d
    }

    #[test]
    fn resolves_names_ids_and_groups() {
        let r = rootfs();
        assert_eq!(resolve(r.path(), "", &[]).unwrap(), User { uid: 0, gid: 0, additional_gids: vec![] });
        assert_eq!(resolve(r.path(), "corral", &[]).unwrap(), User { uid: 1000, gid: 1000, additional_gids: vec![10] });
        assert_eq!(resolve(r.path(), "1000", &[5]).unwrap(), User { uid: 1000, gid: 1000, additional_gids: vec![10, 5] });
        assert_eq!(resolve(r.path(), "4242", &[]).unwrap(), User { uid: 4242, gid: 0, additional_gids: vec![] });
        assert_eq!(resolve(r.path(), "corral:wheel", &[]).unwrap(), User { uid: 1000, gid: 10, additional_gids: vec![] });
        assert_eq!(resolve(r.path(), "1:2", &[]).unwrap(), User { uid: 1, gid: 2, additional_gids: vec![] });
        assert!(resolve(r.path(), "nobody", &[]).is_err());
        assert!(resolve(r.path(), "corral:nogroup", &[]).is_err());
    }

    #[test]
    fn passwd_symlinked_outside_is_not_read() {
        let r = rootfs();
        std::fs::remove_file(r.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.path().join("etc/passwd")).unwrap();
        // The host's root entry must not be used to resolve a name.
        assert!(resolve(r.path(), "root", &[]).is_err());
    }
}
