//! A container's user and groups: the CRI security context over the image's `User`, names
//! looked up in the image's /etc/passwd and /etc/group (read inside the rootfs, symlinks
//! resolved within it), and the supplemental groups policy, with containerd's rules.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, sorted, without duplicates; they include the primary gid.
    pub additional_gids: Vec<u32>,
    /// The user's home in the image's /etc/passwd, "/" when it has no entry (runc's HOME).
    pub home: String,
}

/// How the requested supplemental groups combine with the image's /etc/group (CRI
/// SupplementalGroupsPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum GroupsPolicy {
    /// The user's groups in the image's /etc/group are added to the requested ones.
    #[default]
    Merge,
    /// Only the requested groups (and the primary gid).
    Strict,
}

/// The user parts of a CreateContainer request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserRequest {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub supplemental_groups: Vec<i64>,
    pub policy: GroupsPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The image's /etc/passwd and /etc/group, parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    passwd: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
}

impl UserDb {
    /// Reads etc/passwd and etc/group inside `rootfs`; a missing or unreadable file is empty.
    pub fn read(rootfs: &Path) -> UserDb {
        UserDb::parse(&read_in_root(rootfs, "etc/passwd"), &read_in_root(rootfs, "etc/group"))
    }

    pub fn parse(passwd: &str, group: &str) -> UserDb {
        let passwd = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let home = f.get(5).filter(|h| !h.is_empty()).unwrap_or(&"/").to_string();
                Some(PasswdEntry {
                    name: f.first()?.to_string(),
                    uid: f.get(2)?.parse().ok()?,
                    gid: f.get(3)?.parse().ok()?,
                    home,
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let members = f
                    .get(3)
                    .map(|m| m.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
                    .unwrap_or_default();
                Some(GroupEntry { name: f.first()?.to_string(), gid: f.get(2)?.parse().ok()?, members })
            })
            .collect();
        UserDb { passwd, groups }
    }

    fn by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|e| e.uid == uid)
    }

    fn by_name(&self, name: &str) -> Option<&PasswdEntry> {
        self.passwd.iter().find(|e| e.name == name)
    }

    fn group_by_name(&self, name: &str) -> Option<&GroupEntry> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Groups listing `user` as a member, except a group named like the user.
    fn memberships(&self, user: &str) -> impl Iterator<Item = u32> + '_ {
        let user = user.to_string();
        self.groups.iter().filter(move |g| g.name != user && g.members.contains(&user)).map(|g| g.gid)
    }
}

/// A file of the image read inside its rootfs, resolved by the kernel within it (symlinks
/// and `..` cannot lead out); empty when it is missing or unreadable.
fn read_in_root(rootfs: &Path, file: &str) -> String {
    let mut text = String::new();
    if let Ok(mut f) = common::path::open_in_root(rootfs, Path::new(file)) {
        use std::io::Read;
        if f.read_to_string(&mut text).is_err() {
            text.clear();
        }
    }
    text
}

fn id_of(what: &str, v: i64) -> Result<u32, String> {
    // Ids above 2^31-1 are refused by the kernel's setgroups/setuid users and by containerd.
    u32::try_from(v)
        .ok()
        .filter(|v| *v <= i32::MAX as u32)
        .ok_or_else(|| format!("{what} {v} is out of range (0 to {})", i32::MAX))
}

/// The user string the container runs as (containerd's rules): `run_as_username` wins over
/// `run_as_user`, `run_as_group` joins either as `:gid`, and only when the request names no
/// user does the image's `User` apply. A group without a user is refused.
pub fn user_string(req: &UserRequest, image_user: &str) -> Result<String, String> {
    let user = if !req.run_as_username.is_empty() {
        req.run_as_username.clone()
    } else if let Some(uid) = req.run_as_user {
        id_of("run_as_user", uid)?.to_string()
    } else {
        String::new()
    };
    let group = req.run_as_group.map(|g| id_of("run_as_group", g)).transpose()?;
    if user.is_empty() {
        if let Some(g) = group {
            return Err(format!(
                "run_as_group {g} is set without run_as_user or run_as_username: a group needs a user"
            ));
        }
        return Ok(image_user.to_string());
    }
    Ok(match group {
        Some(g) => format!("{user}:{g}"),
        None => user,
    })
}

/// Resolves the container's uid, gid and supplementary groups.
pub fn resolve(db: &UserDb, req: &UserRequest, image_user: &str) -> Result<User, String> {
    let spec = user_string(req, image_user)?;
    let extra = req
        .supplemental_groups
        .iter()
        .map(|g| id_of("supplemental group", *g))
        .collect::<Result<Vec<u32>, String>>()?;
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() > 2 {
        return Err(format!("invalid user {spec:?}: at most one ':'"));
    }
    let (user_part, group_part) = (parts[0], parts.get(1).copied().filter(|g| !g.is_empty()));
    // The user: a number needs no passwd entry (its gid is then 0), a name must have one.
    let entry = if user_part.is_empty() {
        db.by_uid(0)
    } else if let Ok(uid) = user_part.parse::<i64>() {
        db.by_uid(id_of("uid", uid)?)
    } else {
        Some(db.by_name(user_part).ok_or_else(|| format!("user {user_part:?} is not in the image's /etc/passwd"))?)
    };
    let uid = match (user_part.parse::<i64>(), entry) {
        (Ok(n), _) => id_of("uid", n)?,
        (Err(_), Some(e)) => e.uid,
        (Err(_), None) => 0,
    };
    // A number without a passwd entry runs with gid 0.
    let mut gid = entry.map(|e| e.gid).unwrap_or(0);
    let name = entry.map(|e| e.name.clone());
    let home = entry.map(|e| e.home.clone()).unwrap_or_else(|| "/".into());
    if let Some(g) = group_part {
        gid = match g.parse::<i64>() {
            Ok(n) => id_of("gid", n)?,
            Err(_) => db
                .group_by_name(g)
                .map(|e| e.gid)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        };
    }
    let mut groups = vec![gid];
    if req.policy == GroupsPolicy::Merge {
        // By the user's name (root's when no user is named), whatever the group.
        if let Some(n) = &name {
            groups.extend(db.memberships(n));
        }
    }
    groups.extend(extra);
    groups.sort_unstable();
    groups.dedup();
    Ok(User { uid, gid, additional_gids: groups, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0::/root:/bin/sh\ncorral:x:1000:1000::/home/corral:/bin/sh\ndefault-user:x:1000:1000::/:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\ncorral:x:1000:corral\nwheel:x:10:corral,other\ngroup-defined-in-image:x:50000:default-user\n";

    fn db() -> UserDb {
        UserDb::parse(PASSWD, GROUP)
    }

    fn req(uid: Option<i64>, gid: Option<i64>, name: &str, extra: &[i64], policy: GroupsPolicy) -> UserRequest {
        UserRequest {
            run_as_user: uid,
            run_as_group: gid,
            run_as_username: name.into(),
            supplemental_groups: extra.to_vec(),
            policy,
        }
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> User {
        let home = match uid {
            0 => "/root",
            1000 => "/home/corral",
            _ => "/",
        };
        User { uid, gid, additional_gids: groups.to_vec(), home: home.into() }
    }

    #[test]
    fn user_string_rules() {
        let none = UserRequest::default();
        assert_eq!(user_string(&none, "").unwrap(), "");
        assert_eq!(user_string(&none, "corral:wheel").unwrap(), "corral:wheel");
        assert_eq!(user_string(&req(Some(5), None, "", &[], GroupsPolicy::Merge), "corral").unwrap(), "5");
        assert_eq!(user_string(&req(Some(5), Some(6), "", &[], GroupsPolicy::Merge), "corral").unwrap(), "5:6");
        // The name wins over the uid.
        assert_eq!(user_string(&req(Some(5), Some(6), "corral", &[], GroupsPolicy::Merge), "").unwrap(), "corral:6");
        // A group without a user is refused, also when the image names a user.
        let err = user_string(&req(None, Some(6), "", &[], GroupsPolicy::Merge), "corral").unwrap_err();
        assert!(err.contains("run_as_group") && err.contains("run_as_user"), "{err}");
        assert!(user_string(&req(Some(-1), None, "", &[], GroupsPolicy::Merge), "")
            .unwrap_err()
            .contains("out of range"));
        assert!(user_string(&req(Some(1 << 31), None, "", &[], GroupsPolicy::Merge), "").is_err());
    }

    #[test]
    fn resolves_names_ids_and_groups() {
        let db = db();
        let merge =
            |uid, gid, name: &str, image: &str| resolve(&db, &req(uid, gid, name, &[], GroupsPolicy::Merge), image);
        assert_eq!(merge(None, None, "", "").unwrap(), user(0, 0, &[0]));
        assert_eq!(merge(None, None, "", "corral").unwrap(), user(1000, 1000, &[10, 1000]));
        assert_eq!(merge(Some(1000), None, "", "").unwrap(), user(1000, 1000, &[10, 1000]));
        // An unknown uid runs with gid 0; an unknown name is an error.
        assert_eq!(merge(Some(4242), None, "", "").unwrap(), user(4242, 0, &[0]));
        assert!(merge(None, None, "nobody", "").unwrap_err().contains("nobody"));
        // A group by name from the image, or by number.
        assert_eq!(merge(None, None, "", "corral:wheel").unwrap(), user(1000, 10, &[10]));
        assert_eq!(merge(Some(1), Some(2), "", "").unwrap(), user(1, 2, &[2]));
        assert!(merge(None, None, "", "corral:nogroup").unwrap_err().contains("nogroup"));
        // run_as_group changes the primary gid; memberships still count.
        assert_eq!(merge(Some(1000), Some(7), "", "").unwrap(), user(1000, 7, &[7, 10]));
        assert!(merge(None, None, "", "a:b:c").is_err());
    }

    #[test]
    fn supplemental_groups_policy() {
        let db = db();
        // The CRI validation suite's case: uid 1000 in group 50000 by /etc/group, 1234 requested.
        let default_user = |groups: &[u32]| User { home: "/".into(), ..user(1000, 1000, groups) };
        let merge = resolve(&db, &req(Some(1000), None, "default-user", &[1234], GroupsPolicy::Merge), "").unwrap();
        assert_eq!(merge, default_user(&[1000, 1234, 50000]));
        let strict = resolve(&db, &req(Some(1000), None, "default-user", &[1234], GroupsPolicy::Strict), "").unwrap();
        assert_eq!(strict, default_user(&[1000, 1234]));
        // A group named like the user is not a membership of its own.
        let corral = resolve(&db, &req(None, None, "corral", &[], GroupsPolicy::Merge), "").unwrap();
        assert_eq!(corral, user(1000, 1000, &[10, 1000]));
        // Duplicates collapse; negative groups are refused.
        assert_eq!(
            resolve(&db, &req(Some(0), None, "", &[0, 5, 5], GroupsPolicy::Strict), "").unwrap(),
            user(0, 0, &[0, 5])
        );
        assert!(resolve(&db, &req(Some(0), None, "", &[-3], GroupsPolicy::Merge), "").unwrap_err().contains("-3"));
    }

    #[test]
    fn passwd_symlinked_outside_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/group"), GROUP).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("etc/passwd")).unwrap();
        let db = UserDb::read(d.path());
        // The host's root entry must not be used to resolve a name.
        assert!(resolve(&db, &UserRequest { run_as_username: "root".into(), ..Default::default() }, "").is_err());
        assert_eq!(db.groups.len(), 4);
    }
}
