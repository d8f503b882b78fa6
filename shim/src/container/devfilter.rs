//! The OCI device rules (`linux.resources.devices`) on cgroup v2, which has no devices
//! controller: as runc and crun do, the rules become an eBPF program of type
//! BPF_PROG_TYPE_CGROUP_DEVICE attached to the container's cgroup (BPF_CGROUP_DEVICE). The
//! kernel runs it on every open and mknod of a device node by a process of the cgroup (or of a
//! cgroup below it) with `struct bpf_cgroup_dev_ctx`; it returns 1 to allow and 0 to deny.
//!
//! # Semantics
//!
//! Those of the cgroup v1 devices controller, as the kernel applies the rules written one by one
//! to `devices.allow` and `devices.deny` (what [`super::cgroup`] does on v1), emulated here
//! ([`State`]) and compiled from the end state:
//! - the cgroup starts allowing everything; an `a` rule (or no type), whatever its numbers and
//!   access, clears every exception and makes the default allow or deny;
//! - any other rule either adds an exception (an allow while the default is deny, a deny while
//!   it is allow), merged with an exception of the very same type, major and minor, or takes its
//!   access away from such an exception (removing it when none is left);
//! - with a deny default, a request is allowed when one exception holds all its access bits
//!   (a rule `c 1:3 r` does not let /dev/null be opened for writing); with an allow default, it
//!   is denied when an exception holds any of them. Major and minor absent or negative match any
//!   number, as `*` does.
//!
//! In the usual case, a deny of everything followed by allows, the last matching rule decides.
//! cgroup v1 departs from that where a rule would have to cut a hole in a different exception
//! (`allow c 1:* rwm` then `deny c 1:3 rwm`): the kernel only removes an identical exception
//! and silently keeps granting the rest. [`check`] finds such rules and [`apply`] refuses them
//! (as runc refuses them, also on v1) rather than leave a container with access its spec takes
//! away. [`apply`] also refuses what the v1 kernel refuses (unknown access letters, types `p`
//! and `u`, numbers beyond u32) and an allow of every device with numbers or a partial access,
//! which v1 reads as an allow of every access to every device.
//!
//! Where this differs from runc: runc's program matches a deny exception of an allow-default
//! cgroup only when it holds all of the request's access, so there `deny c 1:3 w` does not stop
//! an open for reading and writing; here, as in v1, it does. runc refuses a hole in a wider
//! exception but not a wide deny over a narrower allow (`allow c 1:3`, then `deny c 1:*`,
//! which v1 and runc leave granting c 1:3); [`check`] refuses both. Numbers of 2^31 and more
//! are compared as u32 (runc's immediates are sign-extended).
//!
//! # Program
//!
//! Straight-line code with forward jumps only: it loads the device type, access, major and minor
//! into r2..r5, then has one block per exception that jumps to the next block at the first
//! mismatch and otherwise returns the exception's verdict, and ends returning the default. At
//! most 10 instructions per exception, far below the verifier's limits for any rule list.
//!
//! # Loading, attaching, replacing
//!
//! [`apply`] loads the program (license "Apache-2.0", corral's: it calls no helper, GPL-only
//! or other; name `corral_devices`), attaches it with BPF_F_ALLOW_MULTI (so the programs of
//! ancestor cgroups keep applying as well) and closes its descriptor: the attachment holds the
//! program, and removing the cgroup releases it. Applying again (a later update of the
//! resources) replaces: the programs of ours already attached to that very cgroup (by type and
//! name, from BPF_PROG_QUERY) are detached *after* the new one is attached, so the container is
//! never without a filter; for that instant both apply, which can only deny more. Programs that
//! others attached to the cgroup stay. An empty rule list changes nothing (attaches nothing and
//! keeps what is attached), as on v1 where no rule is written.
//!
//! The system calls go through [`Bpf`], so the load/attach/replace sequence is tested without
//! root; [`Kernel`] makes them with bpf(2).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{errno_display, Context, Error, Result};
use crate::sys;

// struct bpf_cgroup_dev_ctx: access_type = (access << 16) | type.
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One eBPF instruction (struct bpf_insn): opcode, destination and source registers, offset,
/// immediate; 8 bytes once encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

// Opcode parts (linux/bpf_common.h, linux/bpf.h).
const BPF_LDX: u8 = 0x01;
const BPF_ALU: u8 = 0x04;
const BPF_JMP: u8 = 0x05;
const BPF_W: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_AND: u8 = 0x50;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_JEQ: u8 = 0x10;
const BPF_JNE: u8 = 0x50;
const BPF_EXIT: u8 = 0x90;

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn { code, dst, src, off, imm }
    }
    /// dst = *(u32 *)(src + off)
    const fn load_word(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(BPF_LDX | BPF_MEM | BPF_W, dst, src, off, 0)
    }
    /// dst = (u32)dst & imm (32-bit ALU: the upper half becomes 0)
    const fn and32(dst: u8, imm: i32) -> Insn {
        Insn::new(BPF_ALU | BPF_AND | BPF_K, dst, 0, 0, imm)
    }
    /// dst = (u32)dst >> imm
    const fn rsh32(dst: u8, imm: i32) -> Insn {
        Insn::new(BPF_ALU | BPF_RSH | BPF_K, dst, 0, 0, imm)
    }
    /// dst = (u32)src
    const fn mov32_reg(dst: u8, src: u8) -> Insn {
        Insn::new(BPF_ALU | BPF_MOV | BPF_X, dst, src, 0, 0)
    }
    /// dst = (u32)imm
    const fn mov32(dst: u8, imm: i32) -> Insn {
        Insn::new(BPF_ALU | BPF_MOV | BPF_K, dst, 0, 0, imm)
    }
    /// if dst != (s64)imm goto +off (64-bit compare)
    const fn jne(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JNE | BPF_K, dst, 0, off, imm)
    }
    /// if dst != src goto +off
    const fn jne_reg(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JNE | BPF_X, dst, src, off, 0)
    }
    /// if dst == (s64)imm goto +off
    const fn jeq(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JEQ | BPF_K, dst, 0, off, imm)
    }
    /// return r0
    const fn exit() -> Insn {
        Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
    }

    fn is_jump(&self) -> bool {
        self.code & 0x07 == BPF_JMP && self.code != BPF_JMP | BPF_EXIT
    }

    /// The kernel's struct bpf_insn: code, the registers as two 4-bit fields (dst_reg first:
    /// the low nibble on little-endian, the high one on big-endian), off, imm, in host order.
    pub fn encode(&self) -> [u8; 8] {
        let regs = if cfg!(target_endian = "little") {
            (self.src << 4) | (self.dst & 0x0f)
        } else {
            (self.dst << 4) | (self.src & 0x0f)
        };
        let off = self.off.to_ne_bytes();
        let imm = self.imm.to_ne_bytes();
        [self.code, regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3]]
    }
}

/// What a rule (other than `a`) applies to: block or char, major and minor (None: any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    typ: u32,
    major: Option<u32>,
    minor: Option<u32>,
}

impl Key {
    /// True when some device matches both keys.
    fn overlaps(&self, other: &Key) -> bool {
        let num = |a: Option<u32>, b: Option<u32>| a.is_none() || b.is_none() || a == b;
        self.typ == other.typ && num(self.major, other.major) && num(self.minor, other.minor)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let num = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let typ = if self.typ == DEV_BLOCK { 'b' } else { 'c' };
        write!(f, "{typ} {}:{}", num(self.major), num(self.minor))
    }
}

fn access_str(access: u32) -> String {
    [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')].iter().filter(|(b, _)| access & b != 0).map(|x| x.1).collect()
}

/// An exception of the v1 controller: the access it grants (deny default) or takes (allow
/// default) on the devices of its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Exception {
    key: Key,
    access: u32,
}

/// A rule as the v1 kernel reads it.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// `a`: every device; numbers and access play no part.
    All {
        allow: bool,
    },
    One {
        allow: bool,
        key: Key,
        access: u32,
    },
}

/// The v1 kernel's reading of a rule, or why it would refuse it.
fn parse(rule: &LinuxDeviceCgroup) -> std::result::Result<Parsed, String> {
    let typ = match rule.typ() {
        None | Some(LinuxDeviceType::A) => return Ok(Parsed::All { allow: rule.allow() }),
        Some(LinuxDeviceType::B) => DEV_BLOCK,
        Some(LinuxDeviceType::C) => DEV_CHAR,
        Some(t @ (LinuxDeviceType::U | LinuxDeviceType::P)) => {
            return Err(format!("type {:?} is not a device type of the devices cgroup (a, b or c)", t.as_str()))
        }
    };
    let num = |n: Option<i64>, what: &str| match n {
        None => Ok(None),
        Some(n) if n < 0 => Ok(None),
        // ~0 is the v1 kernel's own "any".
        Some(n) if n == i64::from(u32::MAX) => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| format!("{what} {n} is out of range")),
    };
    let major = num(rule.major(), "major")?;
    let minor = num(rule.minor(), "minor")?;
    Ok(Parsed::One { allow: rule.allow(), key: Key { typ, major, minor }, access: access(rule)? })
}

/// A rule's access bits (none given: all).
fn access(rule: &LinuxDeviceCgroup) -> std::result::Result<u32, String> {
    match rule.access().as_deref() {
        None => Ok(ACC_ALL),
        Some("") => Err("empty access".into()),
        Some(s) => s.chars().try_fold(0, |acc, c| match c {
            'r' => Ok(acc | ACC_READ),
            'w' => Ok(acc | ACC_WRITE),
            'm' => Ok(acc | ACC_MKNOD),
            _ => Err(format!("access {s:?} is not made of r, w and m")),
        }),
    }
}

/// How the rule reads in messages.
fn describe(rule: &LinuxDeviceCgroup) -> String {
    let num = |n: Option<i64>| n.filter(|n| *n >= 0).map_or("*".to_string(), |n| n.to_string());
    format!(
        "{} {} {}:{} {}",
        if rule.allow() { "allow" } else { "deny" },
        rule.typ().unwrap_or(LinuxDeviceType::A).as_str(),
        num(rule.major()),
        num(rule.minor()),
        rule.access().as_deref().unwrap_or("rwm"),
    )
}

/// The state of a v1 devices cgroup: the default and the exceptions, in the kernel's order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    default_allow: bool,
    exceptions: Vec<Exception>,
}

impl State {
    /// A new cgroup (below a root allowing everything): allow, no exception.
    fn new() -> State {
        State { default_allow: true, exceptions: Vec::new() }
    }

    /// dev_exception_add: merges into the exception of the same key, else appends.
    fn add(&mut self, key: Key, access: u32) {
        match self.exceptions.iter_mut().find(|e| e.key == key) {
            Some(e) => e.access |= access,
            None => self.exceptions.push(Exception { key, access }),
        }
    }

    /// dev_exception_rm: takes `access` from the exception of the same key only. Returns the
    /// other exceptions that still hold some of `access` on some of the key's devices: the
    /// part of the rule v1 leaves without effect.
    fn remove(&mut self, key: Key, access: u32) -> Vec<Exception> {
        for e in self.exceptions.iter_mut().filter(|e| e.key == key) {
            e.access &= !access;
        }
        self.exceptions.retain(|e| e.access != 0);
        self.exceptions
            .iter()
            .filter(|e| e.key != key && e.key.overlaps(&key) && e.access & access != 0)
            .copied()
            .collect()
    }

    /// Writes one rule, as to devices.allow or devices.deny. Returns what v1 leaves without
    /// effect (see [`State::remove`]).
    fn apply(&mut self, rule: Parsed) -> Vec<Exception> {
        match rule {
            Parsed::All { allow } => {
                *self = State { default_allow: allow, exceptions: Vec::new() };
                Vec::new()
            }
            Parsed::One { allow, key, access } => {
                if allow != self.default_allow {
                    self.add(key, access);
                    Vec::new()
                } else {
                    self.remove(key, access)
                }
            }
        }
    }

    /// The v1 kernel's decision on a request (__devcgroup_check_permission).
    #[cfg(test)]
    fn allows(&self, typ: u32, major: u32, minor: u32, access: u32) -> bool {
        let on = |e: &&Exception| {
            e.key.typ == typ && e.key.major.is_none_or(|m| m == major) && e.key.minor.is_none_or(|m| m == minor)
        };
        if self.default_allow {
            !self.exceptions.iter().filter(on).any(|e| access & e.access != 0)
        } else {
            self.exceptions.iter().filter(on).any(|e| access & !e.access == 0)
        }
    }
}

/// The v1 state after the rules, and what [`apply`] refuses: the rules v1 would reject
/// (skipped here, as the kernel's write fails) and the rules it would apply only in part.
fn emulate(rules: &[LinuxDeviceCgroup]) -> (State, Vec<String>) {
    let mut state = State::new();
    let mut problems = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let what = || format!("rule {} ({})", i + 1, describe(rule));
        let parsed = match parse(rule) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{}: {e}", what()));
                continue;
            }
        };
        if parsed == (Parsed::All { allow: true }) {
            let numbered = rule.major().is_some_and(|n| n >= 0) || rule.minor().is_some_and(|n| n >= 0);
            if numbered || access(rule) != Ok(ACC_ALL) {
                problems.push(format!("{}: cgroup v1 would allow every access to every device", what()));
            }
        }
        let bits = match &parsed {
            Parsed::One { access, .. } => *access,
            Parsed::All { .. } => 0,
        };
        let default_allow = state.default_allow;
        for e in state.apply(parsed) {
            let (verb, remains) = if default_allow { ("allow", "denies") } else { ("deny", "grants") };
            problems.push(format!(
                "{}: cgroup v1 cannot {verb} only part of what an earlier rule covers ({} {} still {remains} {})",
                what(),
                e.key,
                access_str(e.access),
                access_str(e.access & bits),
            ));
        }
    }
    (state, problems)
}

/// Checks that the v1 kernel would apply every rule as written; else says which rules it would
/// refuse or apply only in part. [`apply`] checks first.
pub fn check(rules: &[LinuxDeviceCgroup]) -> std::result::Result<(), String> {
    let (_, problems) = emulate(rules);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The program enforcing `rules` as the v1 devices controller would (rules the kernel would
/// refuse are skipped: [`check`] reports them). No rule: a program allowing everything.
pub fn program(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    compile(&emulate(rules).0)
}

fn compile(state: &State) -> Vec<Insn> {
    let mut p = vec![
        // r2 = device type, r3 = access, r4 = major, r5 = minor (r1: the context).
        Insn::load_word(R2, R1, 0),
        Insn::and32(R2, 0xffff),
        Insn::load_word(R3, R1, 0),
        Insn::rsh32(R3, 16),
        Insn::load_word(R4, R1, 4),
        Insn::load_word(R5, R1, 8),
    ];
    for e in &state.exceptions {
        p.extend(block(e, !state.default_allow));
    }
    p.push(Insn::mov32(R0, state.default_allow as i32));
    p.push(Insn::exit());
    p
}

/// One exception: returns `verdict` when the request matches it, else falls through to the
/// next block. With an allow verdict (deny default) the exception must hold all the requested
/// access, with a deny verdict any of it. r1 is the scratch register.
fn block(e: &Exception, verdict: bool) -> Vec<Insn> {
    let mut b = vec![Insn::jne(R2, e.key.typ as i32, 0), Insn::mov32_reg(R1, R3)];
    if verdict {
        // Allowed only when no requested bit is outside the exception's access.
        b.extend([Insn::and32(R1, !(e.access as i32)), Insn::jne(R1, 0, 0)]);
    } else {
        b.extend([Insn::and32(R1, e.access as i32), Insn::jeq(R1, 0, 0)]);
    }
    for (reg, n) in [(R4, e.key.major), (R5, e.key.minor)] {
        match n {
            None => {}
            // A jump's immediate is sign-extended to 64 bits; the loaded numbers are not.
            Some(n) if n <= i32::MAX as u32 => b.push(Insn::jne(reg, n as i32, 0)),
            Some(n) => b.extend([Insn::mov32(R1, n as i32), Insn::jne_reg(reg, R1, 0)]),
        }
    }
    b.extend([Insn::mov32(R0, verdict as i32), Insn::exit()]);
    // Every jump goes to the end of the block.
    let len = b.len();
    for (i, insn) in b.iter_mut().enumerate() {
        if insn.is_jump() {
            insn.off = (len - i - 1) as i16;
        }
    }
    b
}

/// Enforces `rules` on the cgroup v2 dir `cgroup_dir` with a device program, replacing the one
/// an earlier call attached (see the module's doc). An empty list changes nothing.
pub fn apply(cgroup_dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    apply_with(&Kernel, cgroup_dir, rules)
}

/// The program name ours are known by (at most 15 characters).
const PROG_NAME: &str = "corral_devices";
const LICENSE: &str = "Apache-2.0";

/// A refused BPF_PROG_LOAD: the error and the verifier's log (may be empty).
#[derive(Debug)]
pub struct LoadError {
    pub error: io::Error,
    pub log: String,
}

/// The system calls of [`apply`].
pub trait Bpf {
    type Cgroup;
    type Prog;
    /// The cgroup dir, opened O_RDONLY|O_DIRECTORY.
    fn open_cgroup(&self, dir: &Path) -> io::Result<Self::Cgroup>;
    /// The ids of the BPF_CGROUP_DEVICE programs attached to this very cgroup.
    fn query(&self, cg: &Self::Cgroup) -> io::Result<Vec<u32>>;
    /// The program of id `id` (BPF_PROG_GET_FD_BY_ID).
    fn open_prog(&self, id: u32) -> io::Result<Self::Prog>;
    /// A program's type and name.
    fn prog_info(&self, prog: &Self::Prog) -> io::Result<(u32, String)>;
    /// Loads a BPF_PROG_TYPE_CGROUP_DEVICE program named [`PROG_NAME`].
    fn load(&self, insns: &[Insn]) -> std::result::Result<Self::Prog, LoadError>;
    /// Attaches with BPF_F_ALLOW_MULTI.
    fn attach(&self, cg: &Self::Cgroup, prog: &Self::Prog) -> io::Result<()>;
    fn detach(&self, cg: &Self::Cgroup, prog: &Self::Prog) -> io::Result<()>;
}

const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;

fn apply_with<B: Bpf>(bpf: &B, dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    if rules.is_empty() {
        return Ok(());
    }
    let at = || dir.display().to_string();
    check(rules).map_err(|e| Error::Msg(format!("device rules of cgroup {}: {e}", at())))?;
    let insns = program(rules);
    let cg = bpf.open_cgroup(dir).ctx(|| format!("opening cgroup {} for its device program", at()))?;
    let old = attached_ours(bpf, &cg).ctx(|| format!("listing the device programs of cgroup {}", at()))?;
    let prog = bpf.load(&insns).map_err(|LoadError { error, log }| {
        let context = format!("loading the device program ({} instructions) for cgroup {}", insns.len(), at());
        if log.is_empty() {
            Error::Io { context, source: error }
        } else {
            Error::Msg(format!("{context}: {}: verifier: {log}", errno_display(&error)))
        }
    })?;
    bpf.attach(&cg, &prog).ctx(|| format!("attaching the device program to cgroup {}", at()))?;
    for (id, old) in old {
        match bpf.detach(&cg, &old) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                return Err(e).ctx(|| format!("detaching the replaced device program {id} from cgroup {}", at()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The device programs of ours attached to `cg`, with their ids. Programs that went away
/// meanwhile, or that we may not open (an LSM's), are not ours.
fn attached_ours<B: Bpf>(bpf: &B, cg: &B::Cgroup) -> io::Result<Vec<(u32, B::Prog)>> {
    let mut ours = Vec::new();
    for id in bpf.query(cg)? {
        let prog = match bpf.open_prog(id) {
            Ok(p) => p,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM | libc::EACCES)) => continue,
            Err(e) => return Err(e),
        };
        if bpf.prog_info(&prog)? == (BPF_PROG_TYPE_CGROUP_DEVICE, PROG_NAME.to_string()) {
            ours.push((id, prog));
        }
    }
    Ok(ours)
}

// bpf(2) commands, attach type and flags (linux/bpf.h).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// union bpf_attr for BPF_PROG_LOAD, up to expected_attach_type (the kernel zero-fills the
/// fields it has beyond the size passed).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// For BPF_PROG_ATTACH and BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// For BPF_PROG_QUERY.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// For BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// For BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// struct bpf_prog_info up to the name (the kernel fills what fits in info_len).
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    typ: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

/// bpf(cmd, attr, sizeof attr).
///
/// # Safety
/// `T` is the `#[repr(C)]` layout of the union bpf_attr member for `cmd`, and every pointer in
/// `attr` points to live memory of the size the attribute says, writable where the kernel
/// writes (buffers for ids, logs, info), for the duration of the call.
unsafe fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, writable `T` of the size passed; the rest is the caller's
    // contract above.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A descriptor bpf(2) returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` is a descriptor the kernel just opened for us (BPF_PROG_LOAD and
    // BPF_PROG_GET_FD_BY_ID return a new one), owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The kernel, with bpf(2).
pub struct Kernel;

impl Kernel {
    fn load_once(&self, insns: &[[u8; 8]], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
        let license = std::ffi::CString::new(LICENSE).expect("no NUL");
        let mut name = [0u8; 16];
        name[..PROG_NAME.len()].copy_from_slice(PROG_NAME.as_bytes());
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..Default::default()
        };
        if let Some(log) = log {
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
        }
        // SAFETY: ProgLoadAttr is the BPF_PROG_LOAD layout; `insns` (insn_cnt encoded
        // instructions), `license` (NUL-terminated) and the log buffer (log_size bytes,
        // writable) are alive until the call returns.
        unsafe { bpf(BPF_PROG_LOAD, &mut attr) }.map(owned)
    }
}

impl Bpf for Kernel {
    type Cgroup = File;
    type Prog = OwnedFd;

    fn open_cgroup(&self, dir: &Path) -> io::Result<File> {
        File::options().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(dir)
    }

    fn query(&self, cg: &File) -> io::Result<Vec<u32>> {
        // At most 64 programs per cgroup and attach type (BPF_CGROUP_MAX_PROGS); ENOSPC says
        // how many there are when the buffer is too small.
        let mut cap = 64;
        for _ in 0..4 {
            let mut ids = vec![0u32; cap];
            let mut attr = QueryAttr {
                target_fd: cg.as_raw_fd() as u32,
                attach_type: BPF_CGROUP_DEVICE,
                prog_ids: ids.as_mut_ptr() as u64,
                prog_cnt: cap as u32,
                ..Default::default()
            };
            // SAFETY: QueryAttr is the BPF_PROG_QUERY layout; `ids` holds prog_cnt writable u32s
            // and is alive until the call returns.
            match unsafe { bpf(BPF_PROG_QUERY, &mut attr) } {
                Ok(_) => {
                    ids.truncate(attr.prog_cnt as usize);
                    return Ok(ids);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => cap = (attr.prog_cnt as usize).max(cap * 2),
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }

    fn open_prog(&self, id: u32) -> io::Result<OwnedFd> {
        let mut attr = GetFdAttr { prog_id: id, ..Default::default() };
        // SAFETY: GetFdAttr is the BPF_PROG_GET_FD_BY_ID layout; it holds no pointer.
        unsafe { bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) }.map(owned)
    }

    fn prog_info(&self, prog: &OwnedFd) -> io::Result<(u32, String)> {
        let mut info = ProgInfo::default();
        let mut attr = InfoAttr {
            bpf_fd: prog.as_raw_fd() as u32,
            info_len: std::mem::size_of::<ProgInfo>() as u32,
            info: &mut info as *mut ProgInfo as u64,
        };
        // SAFETY: InfoAttr is the BPF_OBJ_GET_INFO_BY_FD layout; `info` is a live, writable
        // ProgInfo of info_len bytes, whose own buffer pointers are null with zero lengths (the
        // kernel fills none of them).
        unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
        let end = info.name.iter().position(|b| *b == 0).unwrap_or(info.name.len());
        Ok((info.typ, String::from_utf8_lossy(&info.name[..end]).into_owned()))
    }

    fn load(&self, insns: &[Insn]) -> std::result::Result<OwnedFd, LoadError> {
        let code: Vec<[u8; 8]> = insns.iter().map(Insn::encode).collect();
        let first = match self.load_once(&code, None) {
            Ok(fd) => return Ok(fd),
            // Before 5.11 the kernel charges BPF memory to RLIMIT_MEMLOCK, summed over the user
            // (root: every shim): raised for the load only, so the container and the execs
            // the shim starts later keep the limit they would have had.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                let memlock = libc::RLIMIT_MEMLOCK;
                match sys::getrlimit(memlock) {
                    Ok(old) if sys::setrlimit(memlock, u64::MAX, u64::MAX).is_ok() => {
                        let r = self.load_once(&code, None);
                        let _ = sys::setrlimit(memlock, old.0, old.1);
                        match r {
                            Ok(fd) => return Ok(fd),
                            Err(e) => e,
                        }
                    }
                    _ => e,
                }
            }
            Err(e) => e,
        };
        // Again with a log, for the verifier's reason.
        let mut log = vec![0u8; 256 * 1024];
        if let Ok(fd) = self.load_once(&code, Some(&mut log)) {
            return Ok(fd);
        }
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        // The end of the log says why.
        let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
        Err(LoadError { error: first, log: tail })
    }

    fn attach(&self, cg: &File, prog: &OwnedFd) -> io::Result<()> {
        let mut attr = AttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            attach_flags: BPF_F_ALLOW_MULTI,
            ..Default::default()
        };
        // SAFETY: AttachAttr is the BPF_PROG_ATTACH layout; it holds no pointer.
        unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }.map(|_| ())
    }

    fn detach(&self, cg: &File, prog: &OwnedFd) -> io::Result<()> {
        let mut attr = AttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        // SAFETY: AttachAttr is the BPF_PROG_DETACH layout; it holds no pointer.
        unsafe { bpf(BPF_PROG_DETACH, &mut attr) }.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::ffi::CStr;
    use std::fs;
    use std::io::Read;
    use std::path::PathBuf;
    use std::time::{Duration, Instant, SystemTime};

    use super::*;

    /// A rule: type "" for none, numbers negative for "*".
    fn rule(allow: bool, typ: &str, major: i64, minor: i64, access: &str) -> LinuxDeviceCgroup {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(allow);
        r.set_typ(match typ {
            "" => None,
            "a" => Some(LinuxDeviceType::A),
            "b" => Some(LinuxDeviceType::B),
            "c" => Some(LinuxDeviceType::C),
            "u" => Some(LinuxDeviceType::U),
            "p" => Some(LinuxDeviceType::P),
            _ => panic!("type {typ}"),
        });
        r.set_major((major >= 0).then_some(major));
        r.set_minor((minor >= 0).then_some(minor));
        r.set_access(Some(access.to_string()));
        r
    }
    fn allow(typ: &str, major: i64, minor: i64, access: &str) -> LinuxDeviceCgroup {
        rule(true, typ, major, minor, access)
    }
    fn deny(typ: &str, major: i64, minor: i64, access: &str) -> LinuxDeviceCgroup {
        rule(false, typ, major, minor, access)
    }
    const ANY: i64 = -1;

    /// containerd's (and corrald's) rules for a container that is not privileged.
    fn containerd_default() -> Vec<LinuxDeviceCgroup> {
        let mut rules = vec![deny("", ANY, ANY, "rwm"), allow("c", ANY, ANY, "m"), allow("b", ANY, ANY, "m")];
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (10, 200)] {
            rules.push(allow("c", major, minor, "rwm"));
        }
        rules.push(allow("c", 136, ANY, "rwm"));
        rules
    }

    /// Runs `prog` on a context as the kernel would, for the opcodes `compile` emits, checking
    /// what the verifier would: registers read only once written, only r1 (the context) loaded
    /// from at the context's three words, forward jumps inside the program, r0 a 0/1 verdict.
    fn run(prog: &[Insn], typ: u32, access: u32, major: u32, minor: u32) -> bool {
        let ctx = [(access << 16) | typ, major, minor];
        let mut regs: [Option<u64>; 11] = [None; 11];
        let mut r1_is_ctx = true;
        let mut pc = 0usize;
        loop {
            let i = *prog.get(pc).unwrap_or_else(|| panic!("ran off the end at {pc}"));
            let (dst, src) = (i.dst as usize, i.src as usize);
            let get = |regs: &[Option<u64>; 11], r: usize| regs[r].unwrap_or_else(|| panic!("r{r} read unset at {pc}"));
            assert!(dst <= 10 && src <= 10, "register out of range at {pc}");
            if i.code != 0x61 && i.code != 0x95 {
                assert!(dst != 1 || !r1_is_ctx || matches!(i.code, 0xbc | 0xb4), "arithmetic on the context at {pc}");
            }
            let mut next = pc + 1;
            match i.code {
                0x61 => {
                    assert!(src == 1 && r1_is_ctx, "load from something else than the context at {pc}");
                    assert!(matches!(i.off, 0 | 4 | 8), "bad context offset {} at {pc}", i.off);
                    regs[dst] = Some(u64::from(ctx[i.off as usize / 4]));
                }
                0x54 => regs[dst] = Some(u64::from(get(&regs, dst) as u32 & i.imm as u32)),
                0x74 => regs[dst] = Some(u64::from((get(&regs, dst) as u32) >> i.imm)),
                0xbc => {
                    assert!(src != 1 || !r1_is_ctx, "pointer copied at {pc}");
                    regs[dst] = Some(u64::from(get(&regs, src) as u32));
                }
                0xb4 => regs[dst] = Some(u64::from(i.imm as u32)),
                0x55 | 0x5d | 0x15 => {
                    assert!(i.off >= 0, "backward jump at {pc}");
                    let a = get(&regs, dst);
                    let b = if i.code == 0x5d { get(&regs, src) } else { i.imm as i64 as u64 };
                    let taken = if i.code == 0x15 { a == b } else { a != b };
                    if taken {
                        next = pc + 1 + i.off as usize;
                    }
                    assert!(next < prog.len(), "jump out of the program at {pc}");
                }
                0x95 => {
                    let r0 = get(&regs, 0);
                    assert!(r0 <= 1, "verdict {r0}");
                    return r0 == 1;
                }
                c => panic!("opcode {c:#x} at {pc}"),
            }
            if dst == 1 && i.code != 0x95 && !matches!(i.code, 0x55 | 0x5d | 0x15) {
                r1_is_ctx = false;
            }
            pc = next;
        }
    }

    const B: u32 = DEV_BLOCK;
    const C: u32 = DEV_CHAR;
    const M: u32 = ACC_MKNOD;
    const R: u32 = ACC_READ;
    const W: u32 = ACC_WRITE;

    /// The program's verdict on (type, major, minor, access) for each case, and the same
    /// verdict from the v1 emulation.
    fn verdicts(rules: &[LinuxDeviceCgroup], cases: &[(u32, u32, u32, u32, bool)]) {
        let prog = program(rules);
        let state = emulate(rules).0;
        for &(typ, major, minor, access, want) in cases {
            let what = format!("{} {major}:{minor} {}", if typ == B { 'b' } else { 'c' }, access_str(access));
            assert_eq!(run(&prog, typ, access, major, minor), want, "program on {what}");
            assert_eq!(state.allows(typ, major, minor, access), want, "v1 emulation on {what}");
        }
    }

    #[test]
    fn containerd_default_rules() {
        let rules = containerd_default();
        assert_eq!(check(&rules), Ok(()));
        verdicts(
            &rules,
            &[
                (C, 1, 3, R, true),
                (C, 1, 3, W, true),
                (C, 1, 3, R | W, true),
                (C, 1, 3, M, true),
                (C, 1, 5, R | W, true),
                (C, 1, 7, R | W, true),
                (C, 1, 8, R, true),
                (C, 1, 9, R, true),
                (C, 5, 0, R | W, true),
                (C, 5, 1, R | W, true),
                (C, 5, 2, R | W, true),
                (C, 10, 200, R | W, true),
                (C, 136, 0, R | W, true),
                (C, 136, 42, R | W, true),
                // Anything else: mknod only.
                (C, 1, 4, R, false),
                (C, 1, 4, M, true),
                (C, 1, 1, R | W, false),
                (C, 5, 3, R, false),
                (C, 10, 229, R | W, false),
                (C, 4, 1, W, false),
                (C, 137, 0, R, false),
                (C, 3, 136, R, false),
                (B, 8, 0, R, false),
                (B, 8, 0, W, false),
                (B, 8, 0, M, true),
                // The type is part of the rule.
                (B, 1, 3, R, false),
                (B, 136, 1, R, false),
            ],
        );
    }

    #[test]
    fn partial_access() {
        let rules = [deny("a", ANY, ANY, "rwm"), allow("c", 1, 3, "r"), allow("c", 1, 5, "rw")];
        verdicts(
            &rules,
            &[
                (C, 1, 3, R, true),
                (C, 1, 3, W, false),
                (C, 1, 3, R | W, false),
                (C, 1, 3, M, false),
                (C, 1, 5, R | W, true),
                (C, 1, 5, W, true),
                (C, 1, 5, M, false),
                (C, 1, 5, R | M, false),
            ],
        );
        // Exceptions of the same device merge, as v1's do: then read and write together.
        let mut merged = rules.to_vec();
        merged.push(allow("c", 1, 3, "w"));
        verdicts(&merged, &[(C, 1, 3, R | W, true), (C, 1, 3, M, false)]);
        // Different keys do not: one exception must hold all the access (v1's match_exception).
        let split = [deny("a", ANY, ANY, "rwm"), allow("c", 1, ANY, "r"), allow("c", ANY, 3, "w")];
        verdicts(&split, &[(C, 1, 3, R, true), (C, 1, 3, W, true), (C, 1, 3, R | W, false), (C, 1, 4, W, false)]);
        // An access bit the kernel does not define is never granted.
        assert!(!run(&program(&containerd_default()), C, R | 8, 1, 3));
    }

    #[test]
    fn later_rules_override_earlier_ones() {
        // A later deny takes back what an allow gave.
        let rules = [deny("a", ANY, ANY, "rwm"), allow("c", 1, 3, "rwm"), deny("c", 1, 3, "w")];
        assert_eq!(check(&rules), Ok(()));
        verdicts(&rules, &[(C, 1, 3, R, true), (C, 1, 3, M, true), (C, 1, 3, W, false), (C, 1, 3, R | W, false)]);
        let rules = [deny("a", ANY, ANY, "rwm"), allow("c", 1, 3, "rwm"), deny("c", 1, 3, "rwm")];
        verdicts(&rules, &[(C, 1, 3, R, false), (C, 1, 3, M, false)]);
        // A later allow takes back what a deny took (allow default).
        let rules = [allow("a", ANY, ANY, "rwm"), deny("c", 1, 3, "rwm"), allow("c", 1, 3, "r")];
        assert_eq!(check(&rules), Ok(()));
        verdicts(
            &rules,
            &[(C, 1, 3, R, true), (C, 1, 3, R | W, false), (C, 1, 3, M, false), (C, 1, 5, R | W | M, true)],
        );
        // An `a` rule drops the exceptions before it.
        let rules = [deny("a", ANY, ANY, "rwm"), allow("c", 1, 3, "rwm"), deny("a", ANY, ANY, "rwm")];
        verdicts(&rules, &[(C, 1, 3, R, false), (B, 8, 0, M, false)]);
        let rules = [deny("", ANY, ANY, "rwm"), allow("c", 1, 3, "rwm"), allow("", ANY, ANY, "rwm")];
        verdicts(&rules, &[(C, 1, 3, R, true), (C, 4, 1, R | W, true), (B, 8, 0, R | W | M, true)]);
        // Allow default: a deny exception stops a request holding any of its access (as v1,
        // not as runc's program, which lets an open for reading and writing through).
        let rules = [allow("a", ANY, ANY, "rwm"), deny("c", 1, 3, "w")];
        verdicts(&rules, &[(C, 1, 3, R, true), (C, 1, 3, W, false), (C, 1, 3, R | W, false), (C, 1, 5, W, true)]);
        // `deny a` with a partial access or numbers still denies everything, as in v1.
        verdicts(&[deny("a", 1, 3, "r")], &[(C, 4, 1, W, false), (B, 8, 0, M, false)]);
    }

    #[test]
    fn wildcards() {
        let rules = [deny("a", ANY, ANY, "rwm"), allow("b", 8, ANY, "rw"), allow("c", ANY, 1, "r")];
        verdicts(
            &rules,
            &[
                (B, 8, 0, R, true),
                (B, 8, 16, R | W, true),
                (B, 8, 16, M, false),
                (B, 9, 0, R, false),
                (C, 4, 1, R, true),
                (C, 1, 1, R, true),
                (C, 4, 2, R, false),
                (C, 4, 1, W, false),
                (B, 4, 1, R, false),
                (C, 8, 0, R, false),
            ],
        );
        // Negative numbers, absent ones and ~0 (v1's own "*") are all wildcards.
        let mut absent = allow("c", ANY, ANY, "r");
        absent.set_major(None);
        absent.set_minor(None);
        let mut negative = allow("c", ANY, ANY, "r");
        negative.set_major(Some(-5));
        negative.set_minor(Some(-1));
        let mut all_ones = allow("c", ANY, ANY, "r");
        all_ones.set_major(Some(i64::from(u32::MAX)));
        all_ones.set_minor(Some(i64::from(u32::MAX)));
        for r in [absent, negative, all_ones] {
            verdicts(&[deny("a", ANY, ANY, "rwm"), r], &[(C, 7, 9, R, true), (C, 0, 0, R, true), (C, 7, 9, W, false)]);
        }
        // Numbers past i32::MAX compare as u32, not sign-extended.
        let big = 3_000_000_000;
        let rules = [deny("a", ANY, ANY, "rwm"), allow("c", big, big + 1, "r")];
        verdicts(&rules, &[(C, big as u32, big as u32 + 1, R, true), (C, big as u32, big as u32, R, false)]);
    }

    #[test]
    fn no_rules_allow_everything() {
        let prog = program(&[]);
        assert_eq!(prog.len(), 8);
        for (typ, access) in [(B, R), (C, W), (C, M), (B, R | W | M)] {
            assert!(run(&prog, typ, access, 1, 3));
        }
        assert_eq!(check(&[]), Ok(()));
    }

    /// Random rule lists from a small universe: the program and the v1 emulation agree on
    /// every request of that universe.
    #[test]
    fn program_matches_the_v1_emulation() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let types = ["a", "b", "c", ""];
        let nums = [ANY, 1, 3];
        let accesses = ["r", "w", "m", "rw", "rm", "wm", "rwm"];
        for _ in 0..400 {
            let n = 1 + rnd(8) as usize;
            let rules: Vec<_> = (0..n)
                .map(|_| {
                    rule(
                        rnd(2) == 0,
                        types[rnd(4) as usize],
                        nums[rnd(3) as usize],
                        nums[rnd(3) as usize],
                        accesses[rnd(7) as usize],
                    )
                })
                .collect();
            let (state, _) = emulate(&rules);
            let prog = program(&rules);
            assert!(prog.len() <= 8 + 10 * state.exceptions.len());
            for typ in [B, C] {
                for major in [1, 2, 3] {
                    for minor in [1, 2, 3] {
                        for access in 1..=7 {
                            assert_eq!(
                                run(&prog, typ, access, major, minor),
                                state.allows(typ, major, minor, access),
                                "{rules:?} on {typ} {major}:{minor} {access}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rules_v1_would_not_apply_as_written_are_refused() {
        let refused = |rules: &[LinuxDeviceCgroup], want: &str| {
            let e = check(rules).unwrap_err();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        };
        // Holes in a wider exception, or a wide deny over a narrower allow: v1 would keep
        // granting.
        refused(&[deny("a", ANY, ANY, "rwm"), allow("c", 1, ANY, "rwm"), deny("c", 1, 3, "w")], "rule 3");
        refused(&[deny("a", ANY, ANY, "rwm"), allow("c", 1, 3, "rwm"), deny("c", 1, ANY, "rwm")], "c 1:3 rwm");
        refused(&[allow("a", ANY, ANY, "rwm"), deny("c", ANY, ANY, "rw"), allow("c", 1, 3, "r")], "rule 3");
        // Not overlapping in access, or identical keys: fine.
        assert_eq!(check(&[deny("a", ANY, ANY, "rwm"), allow("c", 1, ANY, "r"), deny("c", 1, 3, "w")]), Ok(()));
        assert_eq!(check(&[deny("a", ANY, ANY, "rwm"), allow("b", 1, ANY, "r"), deny("c", 1, 3, "r")]), Ok(()));
        // What the kernel refuses.
        refused(&[deny("a", ANY, ANY, "rwm"), allow("p", 1, 3, "rwm")], "type \"p\"");
        refused(&[allow("u", 1, 3, "rwm")], "type \"u\"");
        refused(&[allow("c", 1, 3, "rx")], "not made of r, w and m");
        refused(&[allow("c", 1, 3, "")], "empty access");
        refused(&[allow("c", 1 << 33, 3, "r")], "major 8589934592 is out of range");
        // An allow of every device meant as less.
        refused(&[deny("a", ANY, ANY, "rwm"), allow("a", ANY, ANY, "r")], "every access to every device");
        refused(&[deny("a", ANY, ANY, "rwm"), allow("a", 1, 3, "rwm")], "every access to every device");
        refused(&[allow("", ANY, ANY, "rx")], "every access to every device");
        assert_eq!(check(&[deny("", 1, 3, "r"), allow("", ANY, ANY, "rwm")]), Ok(()));
        // A refused rule is skipped by the program, as the kernel's write fails.
        let rules = [deny("a", ANY, ANY, "rwm"), allow("c", 1, 3, "rx"), allow("c", 1, 5, "r")];
        verdicts(&rules, &[(C, 1, 3, R, false), (C, 1, 5, R, true)]);
    }

    #[test]
    fn instruction_encoding() {
        if cfg!(target_endian = "little") {
            assert_eq!(Insn::load_word(R2, R1, 8).encode(), [0x61, 0x12, 8, 0, 0, 0, 0, 0]);
            assert_eq!(Insn::mov32(R0, 1).encode(), [0xb4, 0x00, 0, 0, 1, 0, 0, 0]);
            assert_eq!(Insn::jne(R4, 136, 3).encode(), [0x55, 0x04, 3, 0, 136, 0, 0, 0]);
            assert_eq!(Insn::jne_reg(R5, R1, 2).encode(), [0x5d, 0x15, 2, 0, 0, 0, 0, 0]);
            assert_eq!(Insn::and32(R1, !(R as i32)).encode(), [0x54, 0x01, 0, 0, 0xfd, 0xff, 0xff, 0xff]);
            assert_eq!(Insn::exit().encode(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        }
        // Each block jumps to its own end.
        let prog = program(&containerd_default());
        // Prologue 6, end 2; blocks of 6 (no numbers), 7 (major only), 8 (both).
        assert_eq!(prog.len(), 6 + 2 + 2 * 6 + 7 + 9 * 8);
        for (i, insn) in prog.iter().enumerate().filter(|(_, i)| i.is_jump()) {
            let target = i + 1 + insn.off as usize;
            assert_eq!(prog[target - 1], Insn::exit(), "jump at {i} lands after a block's end");
        }
    }

    /// A kernel in memory: programs by id with their type and name, the ones attached to the
    /// one cgroup, and the calls made.
    #[derive(Default)]
    struct Fake {
        progs: RefCell<BTreeMap<u32, (u32, String)>>,
        attached: RefCell<Vec<u32>>,
        calls: RefCell<Vec<String>>,
        /// Ids open_prog refuses with EPERM (an LSM's).
        hidden: Vec<u32>,
        load_fails: bool,
        attach_fails: bool,
    }

    impl Fake {
        fn with(progs: &[(u32, &str)]) -> Fake {
            let f = Fake::default();
            for (id, name) in progs {
                f.progs.borrow_mut().insert(*id, (BPF_PROG_TYPE_CGROUP_DEVICE, name.to_string()));
                f.attached.borrow_mut().push(*id);
            }
            f
        }
        fn call(&self, c: String) {
            self.calls.borrow_mut().push(c);
        }
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl Bpf for Fake {
        type Cgroup = ();
        type Prog = u32;
        fn open_cgroup(&self, dir: &Path) -> io::Result<()> {
            self.call(format!("open {}", dir.display()));
            Ok(())
        }
        fn query(&self, _: &()) -> io::Result<Vec<u32>> {
            self.call("query".into());
            Ok(self.attached.borrow().clone())
        }
        fn open_prog(&self, id: u32) -> io::Result<u32> {
            if self.hidden.contains(&id) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            self.progs.borrow().get(&id).map(|_| id).ok_or(io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn prog_info(&self, prog: &u32) -> io::Result<(u32, String)> {
            Ok(self.progs.borrow()[prog].clone())
        }
        fn load(&self, insns: &[Insn]) -> std::result::Result<u32, LoadError> {
            self.call(format!("load {}", insns.len()));
            if self.load_fails {
                let error = io::Error::from_raw_os_error(libc::EACCES);
                return Err(LoadError { error, log: "0: (61) r2 = *(u32 *)(r1 +0) | R0 !read_ok".into() });
            }
            let id = self.progs.borrow().keys().last().map_or(1, |k| k + 1);
            self.progs.borrow_mut().insert(id, (BPF_PROG_TYPE_CGROUP_DEVICE, PROG_NAME.into()));
            Ok(id)
        }
        fn attach(&self, _: &(), prog: &u32) -> io::Result<()> {
            self.call(format!("attach {prog}"));
            if self.attach_fails {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            self.attached.borrow_mut().push(*prog);
            Ok(())
        }
        fn detach(&self, _: &(), prog: &u32) -> io::Result<()> {
            self.call(format!("detach {prog}"));
            self.attached.borrow_mut().retain(|p| p != prog);
            Ok(())
        }
    }

    const DIR: &str = "/sys/fs/cgroup/corral/pod/ctr";

    #[test]
    fn apply_attaches_a_new_program() {
        let f = Fake::default();
        apply_with(&f, Path::new(DIR), &containerd_default()).unwrap();
        assert_eq!(f.calls(), [format!("open {DIR}"), "query".into(), "load 99".into(), "attach 1".into()]);
        assert_eq!(*f.attached.borrow(), [1]);
    }

    #[test]
    fn apply_again_replaces_ours_only_after_attaching() {
        // 1: ours; 2: someone else's device program; 3: ours but hidden from us.
        let mut f = Fake::with(&[(1, PROG_NAME), (2, "systemd_devices"), (3, PROG_NAME)]);
        f.hidden = vec![3];
        apply_with(&f, Path::new(DIR), &containerd_default()).unwrap();
        let calls = f.calls();
        assert_eq!(calls[2..], ["load 99".to_string(), "attach 4".into(), "detach 1".into()]);
        assert_eq!(*f.attached.borrow(), [2, 3, 4]);
    }

    #[test]
    fn apply_of_no_rules_changes_nothing() {
        let f = Fake::with(&[(1, PROG_NAME)]);
        apply_with(&f, Path::new(DIR), &[]).unwrap();
        assert!(f.calls().is_empty());
        assert_eq!(*f.attached.borrow(), [1]);
    }

    #[test]
    fn apply_refuses_rules_before_any_call() {
        let f = Fake::default();
        let rules = [deny("a", ANY, ANY, "rwm"), allow("c", 1, ANY, "rwm"), deny("c", 1, 3, "rwm")];
        let e = apply_with(&f, Path::new(DIR), &rules).unwrap_err().to_string();
        assert!(e.starts_with(&format!("device rules of cgroup {DIR}: rule 3 (deny c 1:3 rwm)")), "{e}");
        assert!(f.calls().is_empty());
    }

    #[test]
    fn failures_keep_the_old_program_and_say_where() {
        let f = Fake { load_fails: true, ..Fake::with(&[(1, PROG_NAME)]) };
        let e = apply_with(&f, Path::new(DIR), &containerd_default()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "loading the device program (99 instructions) for cgroup {DIR}: EACCES: verifier: 0: (61) r2 = \
                 *(u32 *)(r1 +0) | R0 !read_ok"
            )
        );
        assert_eq!(*f.attached.borrow(), [1]);

        let f = Fake { attach_fails: true, ..Fake::with(&[(1, PROG_NAME)]) };
        let e = apply_with(&f, Path::new(DIR), &containerd_default()).unwrap_err().to_string();
        assert_eq!(e, format!("attaching the device program to cgroup {DIR}: EPERM"));
        assert_eq!(*f.attached.borrow(), [1]);
    }

    /// The cgroup2 hierarchy to test in: the hybrid layout's /sys/fs/cgroup/unified, else a
    /// unified /sys/fs/cgroup.
    fn cgroup2_root() -> Option<PathBuf> {
        let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let fstype = |at: &str| {
            mi.lines()
                .filter_map(|l| {
                    let (pre, post) = l.split_once(" - ")?;
                    (pre.split(' ').nth(4) == Some(at)).then(|| post.split(' ').next().unwrap_or("").to_string())
                })
                .next_back()
        };
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|at| fstype(at).as_deref() == Some("cgroup2"))
            .map(PathBuf::from)
    }

    /// Removes the test's cgroup, its processes gone.
    struct Remove(PathBuf);

    impl Drop for Remove {
        fn drop(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(&self.0) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        eprintln!("removing {}: {e}", self.0.display());
                        break;
                    }
                    _ => break,
                }
            }
        }
    }

    /// What the probe opens after joining the cgroup.
    const OPENS: [(&CStr, i32); 3] =
        [(c"/dev/null", libc::O_RDWR), (c"/dev/zero", libc::O_RDONLY), (c"/dev/zero", libc::O_WRONLY)];

    /// Forks a child that joins the cgroup of `procs` and opens [`OPENS`]; returns the errno of
    /// the join and of each open (0: success). The child only makes system calls (the test
    /// harness has other threads), and is reaped before this returns.
    fn probe(procs: &CStr) -> [i32; 4] {
        let (mut r, w) = std::io::pipe().unwrap();
        match sys::fork().unwrap() {
            sys::Fork::Child => {
                let errno = |e: io::Error| e.raw_os_error().unwrap_or(-1);
                let mut out = [0i32; 4];
                out[0] = sys::write_file(procs, b"0").err().map_or(0, errno);
                if out[0] == 0 {
                    for (i, (path, flags)) in OPENS.iter().enumerate() {
                        // SAFETY: `path` is a NUL-terminated literal; open takes no other pointer.
                        let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
                        out[i + 1] = if fd < 0 { errno(io::Error::last_os_error()) } else { 0 };
                        if fd >= 0 {
                            sys::close(fd);
                        }
                    }
                }
                let mut bytes = [0u8; 16];
                for (i, v) in out.iter().enumerate() {
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
                }
                let _ = sys::write_all_raw(w.as_raw_fd(), &bytes);
                sys::exit_now(0);
            }
            sys::Fork::Parent(pid) => {
                drop(w);
                let mut bytes = [0u8; 16];
                let read = r.read_exact(&mut bytes);
                let _ = sys::waitpid(pid, false);
                read.expect("the probe's report");
                std::array::from_fn(|i| i32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap()))
            }
        }
    }

    fn is_root() -> bool {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    }

    /// The kernel's verifier refuses a program reading a register never written, and says so.
    #[test]
    fn verifier_rejections_carry_its_log() {
        if !is_root() {
            eprintln!("skipping verifier_rejections_carry_its_log: needs root");
            return;
        }
        let bad = [Insn::mov32_reg(R0, 6), Insn::exit()];
        let Err(LoadError { error, log }) = Kernel.load(&bad) else { panic!("the verifier took a bad program") };
        assert_eq!(error.raw_os_error(), Some(libc::EACCES), "{error}");
        assert!(log.contains("R6 !read_ok"), "{log}");
        // And a good one loads.
        Kernel.load(&program(&containerd_default())).unwrap();
    }

    /// Loads, attaches and replaces for real in a child cgroup of `corral` in the cgroup2
    /// hierarchy (on a cgroup v1 host, the hybrid layout's: its device programs apply besides
    /// v1's devices controller).
    #[test]
    fn the_kernel_enforces_the_program() {
        if !is_root() {
            eprintln!("skipping the_kernel_enforces_the_program: needs root");
            return;
        }
        let Some(root) = cgroup2_root() else {
            eprintln!("note: the_kernel_enforces_the_program: no cgroup2 hierarchy mounted, nothing to test");
            return;
        };
        let parent = root.join("corral");
        match fs::create_dir(&parent) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => panic!("creating {}: {e}", parent.display()),
            _ => {}
        }
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = parent.join(format!("devfilter-test-{}-{nanos}", std::process::id()));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let _remove = Remove(dir.clone());
        let procs = sys::cstring(&dir.join("cgroup.procs")).unwrap();
        let eperm = libc::EPERM;

        apply(&dir, &[deny("a", ANY, ANY, "rwm"), allow("c", 1, 3, "rw")]).unwrap();
        // Joined; /dev/null read-write; /dev/zero (c 1:5) neither read nor written.
        assert_eq!(probe(&procs), [0, 0, eperm, eperm]);

        // Applied again: replaced, /dev/zero readable now, and one program of ours attached.
        apply(&dir, &[deny("a", ANY, ANY, "rwm"), allow("c", 1, 3, "rw"), allow("c", 1, 5, "r")]).unwrap();
        assert_eq!(probe(&procs), [0, 0, 0, eperm]);
        let cg = Kernel.open_cgroup(&dir).unwrap();
        assert_eq!(attached_ours(&Kernel, &cg).unwrap().len(), 1);

        // A rule list v1 would apply only in part attaches nothing.
        let e = apply(&dir, &[deny("a", ANY, ANY, "rwm"), allow("c", 1, ANY, "rw"), deny("c", 1, 5, "r")]);
        assert!(e.is_err());
        assert_eq!(probe(&procs), [0, 0, 0, eperm]);
    }
}
