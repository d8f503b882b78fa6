//! A small blocking D-Bus client: just enough of the D-Bus specification to call methods of
//! systemd's manager from a single-threaded process (corral-shim's forked child puts itself into
//! a transient scope this way) without an async runtime, threads or a D-Bus library.
//!
//! - Marshalling (spec, "Message Protocol" / "Marshaling (Wire Format)"): every value is aligned
//!   to its natural boundary counted from the start of the message (y g v: 1, n q: 2, b i u h s o
//!   and array lengths: 4, x t d and structs/dict entries: 8); padding bytes are zero. A string is
//!   a u32 byte count, the bytes and a NUL; a signature is a u8 count, the bytes and a NUL; an
//!   array is a u32 byte count of its elements (not counting the padding that aligns the first
//!   element, which is present even when the array is empty) followed by the elements; a variant
//!   is a signature of one complete type followed by the value. We always write little endian
//!   (`l`) and read both byte orders.
//! - A message is a 12-byte fixed header (endianness, type, flags, version 1, body length,
//!   serial), the header fields `a(yv)` (PATH o, INTERFACE s, MEMBER s, ERROR_NAME s,
//!   REPLY_SERIAL u, DESTINATION s, SENDER s, SIGNATURE g), padding to 8, then the body. Since the
//!   body starts 8-aligned and no alignment exceeds 8, it is marshalled on its own.
//! - Authentication (spec, "Authentication Protocol"): a NUL byte, then `AUTH EXTERNAL <hex of
//!   the decimal uid>`; the server answers `OK <guid>` (the kernel told it our uid through
//!   SO_PEERCRED), and `BEGIN` starts the binary protocol. No unix fd passing is negotiated.
//! - On a message bus the first call must be `org.freedesktop.DBus.Hello`; on systemd's private
//!   socket (peer to peer, root only) there is no bus and no Hello.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// systemd's private socket: peer to peer with PID 1, root only, works without dbus-daemon.
pub const SYSTEMD_PRIVATE_SOCKET: &str = "/run/systemd/private";
/// The system bus when `DBUS_SYSTEM_BUS_ADDRESS` does not name another.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";
/// How long a call waits for its reply unless [`Connection::set_timeout`] says otherwise (the
/// reference implementation's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);

const BUS_NAME: &str = "org.freedesktop.DBus";
const BUS_PATH: &str = "/org/freedesktop/DBus";
/// The spec's limits: a whole message 128 MiB, one array 64 MiB, 32 levels of arrays plus 32 of
/// structs.
const MAX_MESSAGE: usize = 1 << 27;
const MAX_ARRAY: usize = 1 << 26;
const MAX_DEPTH: usize = 64;
/// Signals kept for a later [`Connection::wait_signal`] while other replies are awaited.
const MAX_QUEUED_SIGNALS: usize = 256;

/// What can go wrong talking D-Bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("D-Bus authentication with {0}")]
    Auth(String),
    /// An ERROR reply: `name` is the D-Bus error name (e.g.
    /// `org.freedesktop.systemd1.NoSuchUnit`), `message` its first string argument.
    #[error("{name}: {message}")]
    Remote { name: String, message: String },
    #[error("malformed D-Bus message: {0}")]
    Protocol(String),
    #[error("invalid D-Bus value: {0}")]
    Invalid(String),
    #[error("no reply to {what} within {after:?}")]
    Timeout { what: String, after: Duration },
    #[error("the D-Bus peer closed the connection")]
    Closed,
    #[error("no D-Bus connection to systemd: private socket: {private}; system bus: {bus}")]
    Unavailable { private: Box<Error>, bus: Box<Error> },
}

impl Error {
    /// The D-Bus error name of an ERROR reply.
    pub fn dbus_name(&self) -> Option<&str> {
        match self {
            Error::Remote { name, .. } => Some(name),
            _ => None,
        }
    }

    fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One D-Bus value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// `y`
    Byte(u8),
    /// `b` (a u32 0 or 1 on the wire)
    Bool(bool),
    /// `n`
    I16(i16),
    /// `q`
    U16(u16),
    /// `i`
    I32(i32),
    /// `u`
    U32(u32),
    /// `x`
    I64(i64),
    /// `t`
    U64(u64),
    /// `d`
    Double(f64),
    /// `h`: an index into the message's descriptors (we pass none).
    UnixFd(u32),
    /// `s`
    Str(String),
    /// `o`
    ObjectPath(String),
    /// `g`
    Signature(String),
    /// `a…`: the element signature (so an empty array has a type) and the elements.
    Array(String, Vec<Arg>),
    /// `(…)`
    Struct(Vec<Arg>),
    /// `{kv}`: only as an array element.
    DictEntry(Box<Arg>, Box<Arg>),
    /// `v`
    Variant(Box<Arg>),
}

impl Arg {
    pub fn str(s: impl Into<String>) -> Arg {
        Arg::Str(s.into())
    }

    pub fn variant(a: Arg) -> Arg {
        Arg::Variant(Box::new(a))
    }

    /// This value's type signature.
    pub fn signature(&self) -> String {
        let mut s = String::new();
        self.write_signature(&mut s);
        s
    }

    fn write_signature(&self, s: &mut String) {
        match self {
            Arg::Byte(_) => s.push('y'),
            Arg::Bool(_) => s.push('b'),
            Arg::I16(_) => s.push('n'),
            Arg::U16(_) => s.push('q'),
            Arg::I32(_) => s.push('i'),
            Arg::U32(_) => s.push('u'),
            Arg::I64(_) => s.push('x'),
            Arg::U64(_) => s.push('t'),
            Arg::Double(_) => s.push('d'),
            Arg::UnixFd(_) => s.push('h'),
            Arg::Str(_) => s.push('s'),
            Arg::ObjectPath(_) => s.push('o'),
            Arg::Signature(_) => s.push('g'),
            Arg::Array(elem, _) => {
                s.push('a');
                s.push_str(elem);
            }
            Arg::Struct(fields) => {
                s.push('(');
                fields.iter().for_each(|f| f.write_signature(s));
                s.push(')');
            }
            Arg::DictEntry(k, v) => {
                s.push('{');
                k.write_signature(s);
                v.write_signature(s);
                s.push('}');
            }
            Arg::Variant(_) => s.push('v'),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Arg::Str(s) | Arg::ObjectPath(s) | Arg::Signature(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Arg::U32(v) => Some(*v),
            _ => None,
        }
    }
}

/// The signature of a whole argument list.
pub fn signature_of(args: &[Arg]) -> String {
    let mut s = String::new();
    args.iter().for_each(|a| a.write_signature(&mut s));
    s
}

/// Alignment of the type that starts with `code`.
fn alignment(code: u8) -> usize {
    match code {
        b'n' | b'q' => 2,
        b'b' | b'i' | b'u' | b'h' | b's' | b'o' | b'a' => 4,
        b'x' | b't' | b'd' | b'(' | b'{' => 8,
        _ => 1, // y g v
    }
}

/// The length of the single complete type at the start of `sig`.
fn single_type_len(sig: &[u8], depth: usize) -> Result<usize> {
    let bad = || Error::Invalid(format!("bad signature {:?}", String::from_utf8_lossy(sig)));
    if depth > MAX_DEPTH {
        return Err(Error::Invalid("signature nests too deep".into()));
    }
    match sig.first().ok_or_else(bad)? {
        b'y' | b'b' | b'n' | b'q' | b'i' | b'u' | b'x' | b't' | b'd' | b'h' | b's' | b'o' | b'g' | b'v' => Ok(1),
        b'a' => {
            if sig.get(1) == Some(&b'{') {
                // {key value}: the key a basic type.
                let key = *sig.get(2).ok_or_else(bad)?;
                if !b"ybnqiuxtdhsog".contains(&key) {
                    return Err(bad());
                }
                let value = single_type_len(&sig[3..], depth + 1)?;
                if sig.get(3 + value) != Some(&b'}') {
                    return Err(bad());
                }
                Ok(4 + value)
            } else {
                Ok(1 + single_type_len(&sig[1..], depth + 1)?)
            }
        }
        b'(' => {
            let mut i = 1;
            while sig.get(i).ok_or_else(bad)? != &b')' {
                i += single_type_len(&sig[i..], depth + 1)?;
            }
            if i == 1 {
                return Err(bad()); // "()" is not a type
            }
            Ok(i + 1)
        }
        _ => Err(bad()),
    }
}

/// Splits a signature into its complete types.
pub fn split_signature(sig: &str) -> Result<Vec<&str>> {
    if sig.len() > 255 {
        return Err(Error::Invalid("signature longer than 255 bytes".into()));
    }
    let mut out = Vec::new();
    let mut rest = sig;
    while !rest.is_empty() {
        let n = single_type_len(rest.as_bytes(), 0)?;
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    Ok(out)
}

/// An object path as the spec allows: `/`, or `/` separated non-empty elements of
/// `[A-Za-z0-9_]`, no trailing `/`.
pub fn valid_object_path(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && p[1..].split('/').all(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')))
}

/// Marshals values little endian into a buffer whose offset 0 is 8-aligned in the message.
struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn pad(&mut self, align: usize) {
        self.buf.resize(self.buf.len().next_multiple_of(align), 0);
    }

    fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, s: &str) -> Result<()> {
        if s.contains('\0') {
            return Err(Error::Invalid(format!("string with a NUL: {s:?}")));
        }
        self.u32(u32::try_from(s.len()).map_err(|_| Error::Invalid("string too long".into()))?);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn signature(&mut self, s: &str) -> Result<()> {
        split_signature(s)?;
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn arg(&mut self, a: &Arg, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::Invalid("value nests too deep".into()));
        }
        match a {
            Arg::Byte(v) => self.buf.push(*v),
            Arg::Bool(v) => self.u32(*v as u32),
            Arg::I16(v) => {
                self.pad(2);
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
            Arg::U16(v) => {
                self.pad(2);
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
            Arg::I32(v) => {
                self.pad(4);
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
            Arg::U32(v) | Arg::UnixFd(v) => self.u32(*v),
            Arg::I64(v) => {
                self.pad(8);
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
            Arg::U64(v) => {
                self.pad(8);
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
            Arg::Double(v) => {
                self.pad(8);
                self.buf.extend_from_slice(&v.to_le_bytes());
            }
            Arg::Str(s) => self.string(s)?,
            Arg::ObjectPath(p) => {
                if !valid_object_path(p) {
                    return Err(Error::Invalid(format!("bad object path {p:?}")));
                }
                self.string(p)?
            }
            Arg::Signature(s) => self.signature(s)?,
            Arg::Array(elem, items) => {
                if single_type_len(format!("a{elem}").as_bytes(), depth)? != 1 + elem.len() {
                    return Err(Error::Invalid(format!("array element signature {elem:?} is not one type")));
                }
                self.u32(0);
                let len_at = self.buf.len() - 4;
                self.pad(alignment(elem.as_bytes()[0]));
                let start = self.buf.len();
                for item in items {
                    let is_entry = matches!(item, Arg::DictEntry(..));
                    if item.signature() != *elem || (is_entry != elem.starts_with('{')) {
                        return Err(Error::Invalid(format!("{} element in an array of {elem}", item.signature())));
                    }
                    self.arg(item, depth + 1)?;
                }
                let len = self.buf.len() - start;
                if len > MAX_ARRAY {
                    return Err(Error::Invalid("array longer than 64 MiB".into()));
                }
                self.buf[len_at..len_at + 4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            Arg::Struct(fields) => {
                if fields.is_empty() {
                    return Err(Error::Invalid("empty struct".into()));
                }
                self.pad(8);
                for f in fields {
                    self.arg(f, depth + 1)?;
                }
            }
            Arg::DictEntry(k, v) => {
                if !matches!(
                    **k,
                    Arg::Byte(_)
                        | Arg::Bool(_)
                        | Arg::I16(_)
                        | Arg::U16(_)
                        | Arg::I32(_)
                        | Arg::U32(_)
                        | Arg::I64(_)
                        | Arg::U64(_)
                        | Arg::Double(_)
                        | Arg::UnixFd(_)
                        | Arg::Str(_)
                        | Arg::ObjectPath(_)
                        | Arg::Signature(_)
                ) {
                    return Err(Error::Invalid("dict entry key is not a basic type".into()));
                }
                self.pad(8);
                self.arg(k, depth + 1)?;
                self.arg(v, depth + 1)?;
            }
            Arg::Variant(inner) => {
                if matches!(**inner, Arg::DictEntry(..)) {
                    return Err(Error::Invalid("a dict entry cannot be a variant's value".into()));
                }
                self.signature(&inner.signature())?;
                self.arg(inner, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// Marshals `args` as a message body (offset 0 is the 8-aligned start of the body).
pub fn marshal(args: &[Arg]) -> Result<Vec<u8>> {
    let mut e = Encoder { buf: Vec::new() };
    for a in args {
        e.arg(a, 0)?;
    }
    Ok(e.buf)
}

/// Reads values from a buffer whose offset 0 is 8-aligned in the message.
struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    big_endian: bool,
}

impl<'a> Decoder<'a> {
    fn short() -> Error {
        Error::Protocol("message ends inside a value".into())
    }

    fn align(&mut self, a: usize) -> Result<()> {
        let next = self.pos.next_multiple_of(a);
        if next > self.buf.len() {
            return Err(Self::short());
        }
        if self.buf[self.pos..next].iter().any(|b| *b != 0) {
            return Err(Error::Protocol("non-zero padding".into()));
        }
        self.pos = next;
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(Self::short)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.align(N)?;
        let mut b: [u8; N] = self.take(N)?.try_into().expect("N bytes");
        if self.big_endian {
            b.reverse(); // to little endian
        }
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed()?))
    }

    fn utf8(&mut self, n: usize) -> Result<String> {
        let bytes = self.take(n)?;
        if self.take(1)? != [0] {
            return Err(Error::Protocol("string not NUL-terminated".into()));
        }
        let s = std::str::from_utf8(bytes).map_err(|_| Error::Protocol("string not UTF-8".into()))?;
        if s.contains('\0') {
            return Err(Error::Protocol("string with a NUL".into()));
        }
        Ok(s.to_string())
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        self.utf8(n)
    }

    fn signature(&mut self) -> Result<String> {
        let n = self.take(1)?[0] as usize;
        let s = self.utf8(n)?;
        split_signature(&s).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(s)
    }

    /// One value of the single complete type `sig`.
    fn arg(&mut self, sig: &str, depth: usize) -> Result<Arg> {
        if depth > MAX_DEPTH {
            return Err(Error::Protocol("value nests too deep".into()));
        }
        let b = sig.as_bytes();
        Ok(match b[0] {
            b'y' => Arg::Byte(self.take(1)?[0]),
            b'b' => match self.u32()? {
                0 => Arg::Bool(false),
                1 => Arg::Bool(true),
                v => return Err(Error::Protocol(format!("boolean {v}"))),
            },
            b'n' => Arg::I16(i16::from_le_bytes(self.fixed()?)),
            b'q' => Arg::U16(u16::from_le_bytes(self.fixed()?)),
            b'i' => Arg::I32(i32::from_le_bytes(self.fixed()?)),
            b'u' => Arg::U32(self.u32()?),
            b'h' => Arg::UnixFd(self.u32()?),
            b'x' => Arg::I64(i64::from_le_bytes(self.fixed()?)),
            b't' => Arg::U64(u64::from_le_bytes(self.fixed()?)),
            b'd' => Arg::Double(f64::from_le_bytes(self.fixed()?)),
            b's' => Arg::Str(self.string()?),
            b'o' => {
                let p = self.string()?;
                if !valid_object_path(&p) {
                    return Err(Error::Protocol(format!("bad object path {p:?}")));
                }
                Arg::ObjectPath(p)
            }
            b'g' => Arg::Signature(self.signature()?),
            b'v' => {
                let s = self.signature()?;
                if split_signature(&s).map_err(|e| Error::Protocol(e.to_string()))?.len() != 1 {
                    return Err(Error::Protocol(format!("variant signature {s:?} is not one type")));
                }
                Arg::variant(self.arg(&s, depth + 1)?)
            }
            b'a' => {
                let elem = &sig[1..];
                let len = self.u32()? as usize;
                if len > MAX_ARRAY {
                    return Err(Error::Protocol("array longer than 64 MiB".into()));
                }
                self.align(alignment(elem.as_bytes()[0]))?;
                let end = self.pos.checked_add(len).filter(|e| *e <= self.buf.len()).ok_or_else(Self::short)?;
                let mut items = Vec::new();
                while self.pos < end {
                    items.push(self.arg(elem, depth + 1)?);
                }
                if self.pos != end {
                    return Err(Error::Protocol("array elements overrun its length".into()));
                }
                Arg::Array(elem.to_string(), items)
            }
            b'(' => {
                self.align(8)?;
                let mut fields = Vec::new();
                let mut rest = &sig[1..sig.len() - 1];
                while !rest.is_empty() {
                    let n = single_type_len(rest.as_bytes(), depth + 1)?;
                    fields.push(self.arg(&rest[..n], depth + 1)?);
                    rest = &rest[n..];
                }
                Arg::Struct(fields)
            }
            b'{' => {
                self.align(8)?;
                let inner = &sig[1..sig.len() - 1];
                let k = single_type_len(inner.as_bytes(), depth + 1)?;
                let key = self.arg(&inner[..k], depth + 1)?;
                let value = self.arg(&inner[k..], depth + 1)?;
                Arg::DictEntry(Box::new(key), Box::new(value))
            }
            c => return Err(Error::Protocol(format!("type code {:?}", c as char))),
        })
    }
}

/// Unmarshals a message body of signature `sig`.
pub fn unmarshal(body: &[u8], sig: &str, big_endian: bool) -> Result<Vec<Arg>> {
    let mut d = Decoder { buf: body, pos: 0, big_endian };
    let mut out = Vec::new();
    for t in split_signature(sig).map_err(|e| Error::Protocol(e.to_string()))? {
        out.push(d.arg(t, 0)?);
    }
    if d.pos != body.len() {
        return Err(Error::Protocol(format!("{} bytes after the body's values", body.len() - d.pos)));
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    MethodCall,
    MethodReturn,
    Error,
    Signal,
    /// A type this implementation does not know (the spec says to ignore such messages).
    Other(u8),
}

impl MessageType {
    fn code(self) -> u8 {
        match self {
            MessageType::MethodCall => 1,
            MessageType::MethodReturn => 2,
            MessageType::Error => 3,
            MessageType::Signal => 4,
            MessageType::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> MessageType {
        match c {
            1 => MessageType::MethodCall,
            2 => MessageType::MethodReturn,
            3 => MessageType::Error,
            4 => MessageType::Signal,
            c => MessageType::Other(c),
        }
    }
}

/// Header flag: the sender wants no reply.
pub const FLAG_NO_REPLY_EXPECTED: u8 = 0x1;

const FIELD_PATH: u8 = 1;
const FIELD_INTERFACE: u8 = 2;
const FIELD_MEMBER: u8 = 3;
const FIELD_ERROR_NAME: u8 = 4;
const FIELD_REPLY_SERIAL: u8 = 5;
const FIELD_DESTINATION: u8 = 6;
const FIELD_SENDER: u8 = 7;
const FIELD_SIGNATURE: u8 = 8;

/// One D-Bus message, as sent or received.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: MessageType,
    pub flags: u8,
    /// Set by [`Connection::send`] when 0.
    pub serial: u32,
    pub path: Option<String>,
    pub interface: Option<String>,
    pub member: Option<String>,
    pub error_name: Option<String>,
    pub reply_serial: Option<u32>,
    pub destination: Option<String>,
    pub sender: Option<String>,
    /// The body; its signature is the concatenation of the values' signatures.
    pub body: Vec<Arg>,
}

impl Message {
    fn new(kind: MessageType) -> Message {
        Message {
            kind,
            flags: 0,
            serial: 0,
            path: None,
            interface: None,
            member: None,
            error_name: None,
            reply_serial: None,
            destination: None,
            sender: None,
            body: Vec::new(),
        }
    }

    pub fn method_call(
        destination: Option<&str>,
        path: &str,
        interface: &str,
        member: &str,
        body: Vec<Arg>,
    ) -> Message {
        Message {
            path: Some(path.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            destination: destination.map(Into::into),
            body,
            ..Message::new(MessageType::MethodCall)
        }
    }

    pub fn method_return(reply_serial: u32, body: Vec<Arg>) -> Message {
        Message { reply_serial: Some(reply_serial), body, ..Message::new(MessageType::MethodReturn) }
    }

    pub fn error(reply_serial: u32, name: &str, text: &str) -> Message {
        Message {
            reply_serial: Some(reply_serial),
            error_name: Some(name.into()),
            body: vec![Arg::str(text)],
            ..Message::new(MessageType::Error)
        }
    }

    pub fn signal(path: &str, interface: &str, member: &str, body: Vec<Arg>) -> Message {
        Message {
            path: Some(path.into()),
            interface: Some(interface.into()),
            member: Some(member.into()),
            body,
            ..Message::new(MessageType::Signal)
        }
    }

    /// The body's signature.
    pub fn signature(&self) -> String {
        signature_of(&self.body)
    }

    /// Whether this is the signal `interface.member`.
    pub fn is_signal(&self, interface: &str, member: &str) -> bool {
        self.kind == MessageType::Signal
            && self.interface.as_deref() == Some(interface)
            && self.member.as_deref() == Some(member)
    }

    /// The wire form, little endian. The serial must be set (non-zero).
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.serial == 0 {
            return Err(Error::Invalid("serial 0".into()));
        }
        let sig = self.signature();
        let body = marshal(&self.body)?;
        let mut fields = Vec::new();
        let mut field = |code: u8, v: Arg| fields.push(Arg::Struct(vec![Arg::Byte(code), Arg::variant(v)]));
        if let Some(p) = &self.path {
            field(FIELD_PATH, Arg::ObjectPath(p.clone()));
        }
        if let Some(i) = &self.interface {
            field(FIELD_INTERFACE, Arg::str(i));
        }
        if let Some(m) = &self.member {
            field(FIELD_MEMBER, Arg::str(m));
        }
        if let Some(e) = &self.error_name {
            field(FIELD_ERROR_NAME, Arg::str(e));
        }
        if let Some(r) = self.reply_serial {
            field(FIELD_REPLY_SERIAL, Arg::U32(r));
        }
        if let Some(d) = &self.destination {
            field(FIELD_DESTINATION, Arg::str(d));
        }
        if let Some(s) = &self.sender {
            field(FIELD_SENDER, Arg::str(s));
        }
        if !sig.is_empty() {
            field(FIELD_SIGNATURE, Arg::Signature(sig));
        }
        let body_len = u32::try_from(body.len()).map_err(|_| Error::Invalid("body too long".into()))?;
        let mut e = Encoder { buf: Vec::with_capacity(64 + body.len()) };
        e.buf.extend_from_slice(&[b'l', self.kind.code(), self.flags, 1]);
        e.buf.extend_from_slice(&body_len.to_le_bytes());
        e.buf.extend_from_slice(&self.serial.to_le_bytes());
        e.arg(&Arg::Array("(yv)".into(), fields), 0)?;
        e.pad(8);
        e.buf.extend_from_slice(&body);
        if e.buf.len() > MAX_MESSAGE {
            return Err(Error::Invalid("message longer than 128 MiB".into()));
        }
        Ok(e.buf)
    }

    /// The length of the whole message whose first 16 bytes are `head`.
    pub fn wire_len(head: &[u8; 16]) -> Result<usize> {
        let big = match head[0] {
            b'l' => false,
            b'B' => true,
            c => return Err(Error::Protocol(format!("endianness byte {c:#x}"))),
        };
        let word = |at: usize| {
            let b: [u8; 4] = head[at..at + 4].try_into().expect("4 bytes");
            (if big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }) as usize
        };
        let (body, fields) = (word(4), word(12));
        let total = (16 + fields).next_multiple_of(8) + body;
        if total > MAX_MESSAGE {
            return Err(Error::Protocol(format!("message of {total} bytes")));
        }
        Ok(total)
    }

    /// Parses one whole message.
    pub fn decode(buf: &[u8]) -> Result<Message> {
        let head: &[u8; 16] = buf.get(..16).and_then(|h| h.try_into().ok()).ok_or_else(Decoder::short)?;
        if Message::wire_len(head)? != buf.len() {
            return Err(Error::Protocol("length does not match the header".into()));
        }
        let big_endian = buf[0] == b'B';
        if buf[3] != 1 {
            return Err(Error::Protocol(format!("protocol version {}", buf[3])));
        }
        let mut m = Message::new(MessageType::from_code(buf[1]));
        m.flags = buf[2];
        let mut d = Decoder { buf, pos: 4, big_endian };
        let body_len = d.u32()? as usize;
        m.serial = d.u32()?;
        if m.serial == 0 {
            return Err(Error::Protocol("serial 0".into()));
        }
        let Arg::Array(_, fields) = d.arg("a(yv)", 0)? else { unreachable!("an array signature gives an array") };
        d.align(8)?;
        if d.pos + body_len != buf.len() {
            return Err(Error::Protocol("body length does not match".into()));
        }
        let mut sig = String::new();
        for f in fields {
            let Arg::Struct(f) = f else { unreachable!() };
            let (Arg::Byte(code), Arg::Variant(v)) = (&f[0], &f[1]) else { unreachable!() };
            let wrong = || Error::Protocol(format!("header field {code} of type {}", v.signature()));
            let text = || v.as_str().map(str::to_string);
            match (*code, &**v) {
                (FIELD_PATH, Arg::ObjectPath(p)) => m.path = Some(p.clone()),
                (FIELD_INTERFACE | FIELD_MEMBER | FIELD_ERROR_NAME | FIELD_DESTINATION | FIELD_SENDER, Arg::Str(_)) => {
                    let slot = match *code {
                        FIELD_INTERFACE => &mut m.interface,
                        FIELD_MEMBER => &mut m.member,
                        FIELD_ERROR_NAME => &mut m.error_name,
                        FIELD_DESTINATION => &mut m.destination,
                        _ => &mut m.sender,
                    };
                    *slot = text();
                }
                (FIELD_REPLY_SERIAL, Arg::U32(r)) => m.reply_serial = Some(*r),
                (FIELD_SIGNATURE, Arg::Signature(s)) => sig = s.clone(),
                (FIELD_PATH..=FIELD_SIGNATURE, _) => return Err(wrong()),
                _ => {} // unknown fields are ignored, as the spec says
            }
        }
        let missing = |what: &str| Error::Protocol(format!("{:?} without {what}", m.kind));
        match m.kind {
            MessageType::MethodCall if m.path.is_none() || m.member.is_none() => return Err(missing("path or member")),
            MessageType::MethodReturn if m.reply_serial.is_none() => return Err(missing("reply serial")),
            MessageType::Error if m.reply_serial.is_none() || m.error_name.is_none() => {
                return Err(missing("reply serial or error name"))
            }
            MessageType::Signal if m.path.is_none() || m.interface.is_none() || m.member.is_none() => {
                return Err(missing("path, interface or member"))
            }
            _ => {}
        }
        m.body = unmarshal(&buf[d.pos..], &sig, big_endian)?;
        Ok(m)
    }
}

/// A server's answer to an AUTH command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslReply {
    /// `OK <server guid>`
    Ok(String),
    /// `REJECTED <mechanisms the server offers>`
    Rejected(Vec<String>),
    /// `DATA <hex>`
    Data(String),
    /// `ERROR [text]`
    Error(String),
}

/// Parses one line (without its CRLF) the server sent during authentication.
pub fn parse_sasl_reply(line: &str) -> Result<SaslReply> {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    match cmd {
        "OK" if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(SaslReply::Ok(rest.into())),
        "REJECTED" => Ok(SaslReply::Rejected(rest.split_ascii_whitespace().map(Into::into).collect())),
        "DATA" => Ok(SaslReply::Data(rest.into())),
        "ERROR" => Ok(SaslReply::Error(rest.into())),
        _ => Err(Error::Auth(format!("unexpected server line {line:?}"))),
    }
}

/// The AUTH line for the EXTERNAL mechanism: the uid in decimal, hex-encoded.
pub fn sasl_external_line(uid: u32) -> String {
    let hex: String = uid.to_string().bytes().map(|b| format!("{b:02x}")).collect();
    format!("AUTH EXTERNAL {hex}\r\n")
}

/// Where a unix socket address leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddr {
    Path(String),
    Abstract(Vec<u8>),
}

/// The first `unix:path=` or `unix:abstract=` address of a D-Bus address list
/// (`transport:key=value,…;…`, values %-escaped).
pub fn parse_address(addrs: &str) -> Option<SocketAddr> {
    fn unescape(v: &str) -> Option<Vec<u8>> {
        let b = v.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        Some(out)
    }
    for addr in addrs.split(';') {
        let Some(("unix", params)) = addr.split_once(':') else { continue };
        for kv in params.split(',') {
            match kv.split_once('=') {
                Some(("path", v)) => {
                    if let Some(p) = unescape(v).and_then(|p| String::from_utf8(p).ok()) {
                        return Some(SocketAddr::Path(p));
                    }
                }
                Some(("abstract", v)) => return unescape(v).map(SocketAddr::Abstract),
                _ => {}
            }
        }
    }
    None
}

fn euid() -> u32 {
    crate::sys::euid()
}

#[derive(Debug)]
struct Watch {
    interface: String,
    member: String,
    sender: Option<String>,
}

impl Watch {
    fn matches(&self, m: &Message) -> bool {
        m.is_signal(&self.interface, &self.member)
            && self.sender.as_deref().is_none_or(|s| m.sender.as_deref() == Some(s))
    }
}

/// A blocking connection to a D-Bus peer: systemd directly, or a message bus.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    rbuf: Vec<u8>,
    last_serial: u32,
    timeout: Duration,
    unique_name: Option<String>,
    /// Signals kept while waiting for replies, and the only ones [`Connection::wait_signal`]
    /// returns.
    watched: Vec<Watch>,
    queued: VecDeque<Message>,
    what: String,
}

impl Connection {
    /// systemd's manager: its private socket when this process may use it (root), else the
    /// system bus.
    pub fn system() -> Result<Connection> {
        match Connection::systemd_private() {
            Ok(c) => Ok(c),
            Err(private) => Connection::system_bus()
                .map_err(|bus| Error::Unavailable { private: Box::new(private), bus: Box::new(bus) }),
        }
    }

    /// systemd's private socket: peer to peer, no bus, no Hello.
    pub fn systemd_private() -> Result<Connection> {
        Connection::open(&SocketAddr::Path(SYSTEMD_PRIVATE_SOCKET.into()), false)
    }

    /// The system bus, at `DBUS_SYSTEM_BUS_ADDRESS` if that names a unix socket, with Hello.
    pub fn system_bus() -> Result<Connection> {
        let addr = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .ok()
            .and_then(|a| parse_address(&a))
            .unwrap_or_else(|| SocketAddr::Path(SYSTEM_BUS_SOCKET.into()));
        Connection::open(&addr, true)
    }

    /// Connects and authenticates; on a bus (`hello`) also registers with Hello.
    pub fn open(addr: &SocketAddr, hello: bool) -> Result<Connection> {
        let what = match addr {
            SocketAddr::Path(p) => p.clone(),
            SocketAddr::Abstract(a) => format!("@{}", String::from_utf8_lossy(a)),
        };
        let stream = match addr {
            SocketAddr::Path(p) => UnixStream::connect(Path::new(p)),
            SocketAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| UnixStream::connect_addr(&a))
            }
        }
        .map_err(|e| Error::io(format!("connecting to {what}"), e))?;
        let mut c = Connection {
            stream,
            rbuf: Vec::new(),
            last_serial: 0,
            timeout: DEFAULT_TIMEOUT,
            unique_name: None,
            watched: Vec::new(),
            queued: VecDeque::new(),
            what,
        };
        c.authenticate()?;
        if hello {
            let reply = c.call(Some(BUS_NAME), BUS_PATH, BUS_NAME, "Hello", vec![])?;
            c.unique_name = reply.body.first().and_then(Arg::as_str).map(str::to_string);
        }
        Ok(c)
    }

    fn authenticate(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let mut hello = vec![0u8];
        hello.extend_from_slice(sasl_external_line(euid()).as_bytes());
        self.write_all(&hello)?;
        let line = self.read_line(deadline)?;
        match parse_sasl_reply(&line)? {
            SaslReply::Ok(_) => self.write_all(b"BEGIN\r\n"),
            SaslReply::Rejected(m) => {
                Err(Error::Auth(format!("{} rejected EXTERNAL (it offers {})", self.what, m.join(" "))))
            }
            SaslReply::Error(e) => Err(Error::Auth(format!("{}: {e}", self.what))),
            SaslReply::Data(_) => Err(Error::Auth(format!("{} asked for more data", self.what))),
        }
    }

    /// Whether this is a connection to a message bus (rather than to systemd directly).
    pub fn is_bus(&self) -> bool {
        self.unique_name.is_some()
    }

    /// Our name on the bus (from Hello).
    pub fn unique_name(&self) -> Option<&str> {
        self.unique_name.as_deref()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long [`call`](Self::call) waits for a reply (and systemd's helpers for a job).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    fn write_all(&mut self, b: &[u8]) -> Result<()> {
        self.stream
            .set_write_timeout(Some(self.timeout.max(Duration::from_millis(1))))
            .and_then(|()| self.stream.write_all(b))
            .map_err(|e| Error::io(format!("writing to {}", self.what), e))
    }

    /// Reads more bytes into `rbuf`, waiting until `deadline` at most.
    fn fill(&mut self, deadline: Instant, what: &str) -> Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout { what: what.into(), after: self.timeout });
            }
            self.stream.set_read_timeout(Some(left)).map_err(|e| Error::io("setting a read timeout", e))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(Error::io(format!("reading from {}", self.what), e)),
            }
        }
    }

    fn read_line(&mut self, deadline: Instant) -> Result<String> {
        loop {
            if let Some(i) = self.rbuf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.rbuf.drain(..i + 2).take(i).collect();
                return String::from_utf8(line).map_err(|_| Error::Auth("a non-ASCII line".into()));
            }
            if self.rbuf.len() > 16 * 1024 {
                return Err(Error::Auth("an over-long line".into()));
            }
            self.fill(deadline, "the authentication")?;
        }
    }

    /// The next message from the peer, waiting until `deadline` at most.
    fn read_message(&mut self, deadline: Instant, what: &str) -> Result<Message> {
        loop {
            if let Some(head) = self.rbuf.get(..16) {
                let len = Message::wire_len(head.try_into().expect("16 bytes"))?;
                if self.rbuf.len() >= len {
                    let m = Message::decode(&self.rbuf[..len]);
                    self.rbuf.drain(..len);
                    return m;
                }
            }
            self.fill(deadline, what)?;
        }
    }

    /// Sends a message, giving it the next serial if it has none; returns the serial.
    pub fn send(&mut self, msg: &mut Message) -> Result<u32> {
        if msg.serial == 0 {
            self.last_serial = self.last_serial.checked_add(1).unwrap_or(1);
            msg.serial = self.last_serial;
        }
        let bytes = msg.encode()?;
        self.write_all(&bytes)?;
        Ok(msg.serial)
    }

    fn is_watched(&self, m: &Message) -> bool {
        m.kind == MessageType::Signal && self.watched.iter().any(|w| w.matches(m))
    }

    fn keep(&mut self, m: Message) {
        if self.is_watched(&m) {
            if self.queued.len() == MAX_QUEUED_SIGNALS {
                self.queued.pop_front();
            }
            self.queued.push_back(m);
        }
        // Anything else (other signals, stale replies, calls to us: we export nothing) is dropped.
    }

    /// Calls a method and waits for its reply; an ERROR reply is [`Error::Remote`]. Signals that
    /// arrive meanwhile are kept if [watched](Self::watch_signal).
    pub fn call(
        &mut self,
        destination: Option<&str>,
        path: &str,
        interface: &str,
        member: &str,
        args: Vec<Arg>,
    ) -> Result<Message> {
        let mut msg = Message::method_call(destination, path, interface, member, args);
        let serial = self.send(&mut msg)?;
        let deadline = Instant::now() + self.timeout;
        let what = format!("{interface}.{member}");
        loop {
            let m = self.read_message(deadline, &what)?;
            if m.reply_serial != Some(serial) {
                self.keep(m);
                continue;
            }
            return match m.kind {
                MessageType::MethodReturn => Ok(m),
                MessageType::Error => Err(Error::Remote {
                    name: m.error_name.unwrap_or_default(),
                    message: m.body.first().and_then(Arg::as_str).unwrap_or_default().to_string(),
                }),
                _ => continue,
            };
        }
    }

    /// Keeps the signal `interface.member` (from `sender` only, when given: on a bus anyone may
    /// send us a signal) for [`wait_signal`](Self::wait_signal) from now on. On a bus the daemon
    /// forwards only the broadcast signals that match a rule: see [`add_match`](Self::add_match).
    pub fn watch_signal(&mut self, interface: &str, member: &str, sender: Option<&str>) {
        self.watched.retain(|w| w.interface != interface || w.member != member);
        self.watched.push(Watch { interface: interface.into(), member: member.into(), sender: sender.map(Into::into) });
    }

    /// Whether `interface.member` is watched.
    pub fn is_watching(&self, interface: &str, member: &str) -> bool {
        self.watched.iter().any(|w| w.interface == interface && w.member == member)
    }

    /// On a bus, asks the daemon to forward messages matching `rule`
    /// (`type='signal',interface='…',…`); a no-op peer to peer, where the peer sends what it
    /// sends.
    pub fn add_match(&mut self, rule: &str) -> Result<()> {
        if self.is_bus() {
            self.call(Some(BUS_NAME), BUS_PATH, BUS_NAME, "AddMatch", vec![Arg::str(rule)])?;
        }
        Ok(())
    }

    /// The first [watched](Self::watch_signal) signal, kept or arriving before `timeout`, for
    /// which `pred` holds; kept signals it passes over stay kept.
    pub fn wait_signal(&mut self, timeout: Duration, mut pred: impl FnMut(&Message) -> bool) -> Result<Message> {
        if let Some(i) = self.queued.iter().position(&mut pred) {
            return Ok(self.queued.remove(i).expect("index found"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let m = match self.read_message(deadline, "a signal") {
                Err(Error::Timeout { what, .. }) => return Err(Error::Timeout { what, after: timeout }),
                r => r?,
            };
            if self.is_watched(&m) && pred(&m) {
                return Ok(m);
            }
            self.keep(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Arg {
        Arg::str(v)
    }

    fn prop(name: &str, v: Arg) -> Arg {
        Arg::Struct(vec![s(name), Arg::variant(v)])
    }

    /// StartTransientUnit("a.scope", "fail", [("PIDs", <au [42]>), ("MemoryMax", <t 1 MiB>)], [])
    /// to systemd with serial 7, derived by hand from the spec. Offsets count from the start of
    /// the message; each value starts at a multiple of its alignment (strings, array lengths,
    /// u32: 4; structs, u64: 8; bytes, signatures, variants: 1) and padding is zero.
    #[rustfmt::skip]
    const START_TRANSIENT_UNIT: &[u8] = &[
        // 0: 'l' little endian, 1 METHOD_CALL, flags 0, protocol version 1
        b'l', 1, 0, 1,
        // 4: body length 96 (see the end); 8: serial 7
        96, 0, 0, 0,  7, 0, 0, 0,
        // 12: byte length of the header fields a(yv): they start at 16 (already 8-aligned)
        // and the last ends at 198, so 182
        182, 0, 0, 0,
        // 16: (y 1 PATH, v: signature [1 'o' NUL] at 17..20, then o: u32 length 25 at 20,
        // "/org/freedesktop/systemd1" at 24..49, NUL at 49)
        1,  1, b'o', 0,  25, 0, 0, 0,
        b'/', b'o', b'r', b'g', b'/', b'f', b'r', b'e', b'e', b'd', b'e', b's', b'k', b't',
        b'o', b'p', b'/', b's', b'y', b's', b't', b'e', b'm', b'd', b'1', 0,
        // 50..56: padding to the next struct; 56: (2 INTERFACE, v s: length 32 at 60,
        // "org.freedesktop.systemd1.Manager" at 64..96, NUL at 96)
        0, 0, 0, 0, 0, 0,
        2,  1, b's', 0,  32, 0, 0, 0,
        b'o', b'r', b'g', b'.', b'f', b'r', b'e', b'e', b'd', b'e', b's', b'k', b't', b'o', b'p',
        b'.', b's', b'y', b's', b't', b'e', b'm', b'd', b'1', b'.', b'M', b'a', b'n', b'a', b'g',
        b'e', b'r', 0,
        // 97..104: padding; 104: (3 MEMBER, v s: length 18 at 108, "StartTransientUnit" at
        // 112..130, NUL at 130)
        0, 0, 0, 0, 0, 0, 0,
        3,  1, b's', 0,  18, 0, 0, 0,
        b'S', b't', b'a', b'r', b't', b'T', b'r', b'a', b'n', b's', b'i', b'e', b'n', b't', b'U',
        b'n', b'i', b't', 0,
        // 131..136: padding; 136: (6 DESTINATION, v s: length 24 at 140,
        // "org.freedesktop.systemd1" at 144..168, NUL at 168)
        0, 0, 0, 0, 0,
        6,  1, b's', 0,  24, 0, 0, 0,
        b'o', b'r', b'g', b'.', b'f', b'r', b'e', b'e', b'd', b'e', b's', b'k', b't', b'o', b'p',
        b'.', b's', b'y', b's', b't', b'e', b'm', b'd', b'1', 0,
        // 169..176: padding; 176: (8 SIGNATURE, v g: signature [1 'g' NUL] at 177..180, then the
        // g itself, 1-aligned: length byte 16 at 180, "ssa(sv)a(sa(sv))" at 181..197, NUL at
        // 197); the fields end at 198
        0, 0, 0, 0, 0, 0, 0,
        8,  1, b'g', 0,  16,
        b's', b's', b'a', b'(', b's', b'v', b')', b'a', b'(', b's', b'a', b'(', b's', b'v', b')',
        b')', 0,
        // 198..200: padding: the body starts 8-aligned, at 200. Body offsets below count from
        // there (200 is a multiple of 8, so alignment is the same counted either way).
        0, 0,
        // b0: s "a.scope": length 7, bytes at 4..11, NUL at 11
        7, 0, 0, 0,  b'a', b'.', b's', b'c', b'o', b'p', b'e', 0,
        // b12: s "fail": length 4, bytes at 16..20, NUL at 20
        4, 0, 0, 0,  b'f', b'a', b'i', b'l', 0,
        // b21..24: padding; b24: a(sv) byte length 56 (elements from 32 to 88); b28..32:
        // padding to the 8-aligned first struct (not counted in the length)
        0, 0, 0,  56, 0, 0, 0,  0, 0, 0, 0,
        // b32: ("PIDs": length 4 at 32, bytes 36..40, NUL 40; v: signature [2 'a' 'u' NUL] at
        // 41..45; au: padding 45..48, byte length 4 at 48, u32 42 at 52..56)
        4, 0, 0, 0,  b'P', b'I', b'D', b's', 0,  2, b'a', b'u', 0,  0, 0, 0,
        4, 0, 0, 0,  42, 0, 0, 0,
        // b56: ("MemoryMax": length 9 at 56, bytes 60..69, NUL 69; v: signature [1 't' NUL] at
        // 70..73; t: padding 73..80, 1048576 = 0x100000 at 80..88)
        9, 0, 0, 0,  b'M', b'e', b'm', b'o', b'r', b'y', b'M', b'a', b'x', 0,
        1, b't', 0,  0, 0, 0, 0, 0, 0, 0,
        0, 0, 0x10, 0, 0, 0, 0, 0,
        // b88: a(sa(sv)), empty: byte length 0, then b92..96 padding to the (absent) first
        // struct, which the spec requires even for an empty array. The body ends at 96.
        0, 0, 0, 0,  0, 0, 0, 0,
    ];

    fn start_transient_unit_msg() -> Message {
        let mut m = Message::method_call(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "StartTransientUnit",
            vec![
                s("a.scope"),
                s("fail"),
                Arg::Array(
                    "(sv)".into(),
                    vec![
                        prop("PIDs", Arg::Array("u".into(), vec![Arg::U32(42)])),
                        prop("MemoryMax", Arg::U64(1 << 20)),
                    ],
                ),
                Arg::Array("(sa(sv))".into(), vec![]),
            ],
        );
        m.serial = 7;
        m
    }

    #[test]
    fn start_transient_unit_bytes() {
        let m = start_transient_unit_msg();
        assert_eq!(m.signature(), "ssa(sv)a(sa(sv))");
        let got = m.encode().unwrap();
        assert_eq!(got, START_TRANSIENT_UNIT);
        assert_eq!(Message::decode(&got).unwrap(), m);
    }

    /// The same call as sent by sd-bus (`busctl call … StartTransientUnit 'ssa(sv)a(sa(sv))'
    /// a.scope fail 2 PIDs au 1 42 MemoryMax t 1048576 0`, systemd 252), captured from a fake
    /// server: serial 2, flag 0x4 (ALLOW_INTERACTIVE_AUTHORIZATION), header fields in another
    /// order (PATH, MEMBER, INTERFACE, …), so the same length; the body is byte for byte ours.
    const SD_BUS_CAPTURE: &str = "6c0104016000000002000000b600000001016f00190000002f6f72672f667265656465736b746f702f\
        73797374656d643100000000000000030173001200000053746172745472616e7369656e74556e69740000000000000201\
        7300200000006f72672e667265656465736b746f702e73797374656d64312e4d616e61676572000000000000000006017300\
        180000006f72672e667265656465736b746f702e73797374656d643100000000000000000801670010737361287376296128\
        7361287376292900000007000000612e73636f706500040000006661696c000000003800000000000000040000005049447\
        30002617500000000040000002a000000090000004d656d6f72794d6178000174000000000000000000001000000000000000\
        000000000000";

    fn unhex(h: &str) -> Vec<u8> {
        let h: Vec<u8> = h.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        h.chunks(2).map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap()).collect()
    }

    #[test]
    fn sd_bus_agrees() {
        let theirs = unhex(SD_BUS_CAPTURE);
        let mut want = start_transient_unit_msg();
        want.serial = 2;
        want.flags = 0x4;
        assert_eq!(Message::decode(&theirs).unwrap(), want);
        let ours = want.encode().unwrap();
        assert_eq!(ours.len(), theirs.len());
        assert_eq!(ours[200..], theirs[200..], "bodies");
    }

    #[test]
    fn replies_round_trip() {
        let mut r = Message::method_return(7, vec![Arg::ObjectPath("/org/freedesktop/systemd1/job/1234".into())]);
        r.serial = 99;
        r.sender = Some(":1.1".into());
        r.destination = Some(":1.42".into());
        assert_eq!(Message::decode(&r.encode().unwrap()).unwrap(), r);

        let mut e = Message::error(8, "org.freedesktop.systemd1.UnitExists", "Unit corral-abc.scope already exists.");
        e.serial = 100;
        let back = Message::decode(&e.encode().unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.kind, MessageType::Error);
        assert_eq!(back.reply_serial, Some(8));

        let mut sig = Message::signal(
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "JobRemoved",
            vec![
                Arg::U32(1234),
                Arg::ObjectPath("/org/freedesktop/systemd1/job/1234".into()),
                Arg::str("a.scope"),
                Arg::str("done"),
            ],
        );
        sig.serial = 5;
        let back = Message::decode(&sig.encode().unwrap()).unwrap();
        assert!(back.is_signal("org.freedesktop.systemd1.Manager", "JobRemoved"));
        assert_eq!(back.signature(), "uoss");
        assert_eq!(back, sig);

        // A body with every type, nested.
        let all = vec![
            Arg::Byte(0xfe),
            Arg::Bool(true),
            Arg::I16(-2),
            Arg::U16(65535),
            Arg::I32(-3),
            Arg::U32(4),
            Arg::I64(-5),
            Arg::U64(u64::MAX),
            Arg::Double(1.5),
            Arg::UnixFd(0),
            Arg::str("ß"),
            Arg::ObjectPath("/".into()),
            Arg::Signature("a{sv}".into()),
            Arg::Array(
                "{sv}".into(),
                vec![
                    Arg::DictEntry(Box::new(Arg::str("k")), Box::new(Arg::variant(Arg::Array("t".into(), vec![])))),
                    Arg::DictEntry(
                        Box::new(Arg::str("l")),
                        Box::new(Arg::variant(Arg::Struct(vec![Arg::Byte(1), Arg::U64(2)]))),
                    ),
                ],
            ),
            Arg::variant(Arg::variant(Arg::Byte(3))),
        ];
        let mut m = Message::method_call(None, "/a/b_c", "x.y", "Z", all);
        m.serial = 1;
        assert_eq!(m.signature(), "ybnqiuxtdhsoga{sv}v");
        assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn alignment_edges() {
        // A u64 after a byte: 7 bytes of padding.
        assert_eq!(marshal(&[Arg::Byte(1), Arg::U64(2)]).unwrap(), [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        // An empty array of u64 after a byte: length at 4, padded to 8 though no element follows.
        assert_eq!(marshal(&[Arg::Byte(1), Arg::Array("t".into(), vec![])]).unwrap(), [1, 0, 0, 0, 0, 0, 0, 0]);
        // An empty array of u32 needs no padding after its length.
        assert_eq!(marshal(&[Arg::Array("u".into(), vec![])]).unwrap(), [0, 0, 0, 0]);
        // The array length does not count the padding before the first element.
        assert_eq!(
            marshal(&[Arg::Array("t".into(), vec![Arg::U64(9)])]).unwrap(),
            [8, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]
        );
        // ay: no padding at all; a signature is 1-aligned.
        assert_eq!(
            marshal(&[
                Arg::Byte(7),
                Arg::Array("y".into(), vec![Arg::Byte(1), Arg::Byte(2)]),
                Arg::Signature("u".into())
            ])
            .unwrap(),
            [7, 0, 0, 0, 2, 0, 0, 0, 1, 2, 1, b'u', 0]
        );
        // A variant's value aligns to its own type, counted from the start.
        assert_eq!(marshal(&[Arg::variant(Arg::U32(5))]).unwrap(), [1, b'u', 0, 0, 5, 0, 0, 0]);
        assert_eq!(
            marshal(&[Arg::Byte(0), Arg::variant(Arg::Struct(vec![Arg::Byte(9)]))]).unwrap(),
            [0, 3, b'(', b'y', b')', 0, 0, 0, 9]
        );
        // Booleans are u32 0/1; anything else is refused on reading.
        assert_eq!(marshal(&[Arg::Bool(true)]).unwrap(), [1, 0, 0, 0]);
        assert!(unmarshal(&[2, 0, 0, 0], "b", false).is_err());
        // Non-zero padding and bytes left over are refused.
        assert!(unmarshal(&[1, 1, 0, 0, 5, 0, 0, 0], "yu", false).is_err());
        assert!(unmarshal(&[5, 0, 0, 0, 0], "u", false).is_err());
        // Elements overrunning the array's length.
        assert!(unmarshal(&[6, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0], "au", false).is_err());
        // Big endian reads.
        assert_eq!(
            unmarshal(&[0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "ut", true).unwrap(),
            [Arg::U32(5), Arg::U64(256)]
        );
    }

    #[test]
    fn big_endian_messages() {
        // METHOD_RETURN, serial 3, reply to 2, signature "s", body "ok", written big endian by hand.
        #[rustfmt::skip]
        let m: &[u8] = &[
            b'B', 2, 0, 1,  0, 0, 0, 7,  0, 0, 0, 3,  0, 0, 0, 15,
            5, 1, b'u', 0,  0, 0, 0, 2,   8, 1, b'g', 0,  1, b's', 0,  0,
            0, 0, 0, 2,  b'o', b'k', 0,
        ];
        let back = Message::decode(m).unwrap();
        assert_eq!(back.kind, MessageType::MethodReturn);
        assert_eq!((back.serial, back.reply_serial), (3, Some(2)));
        assert_eq!(back.body, [Arg::str("ok")]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let good = start_transient_unit_msg().encode().unwrap();
        for n in 0..good.len() {
            assert!(Message::decode(&good[..n]).is_err());
        }
        // Every single-byte corruption either fails cleanly or decodes.
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = Message::decode(&b);
            }
        }
        assert!(Message::wire_len(&[b'X'; 16]).is_err());
        let mut huge = [0u8; 16];
        huge[0] = b'l';
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Message::wire_len(&huge).is_err());
        // Refused on writing.
        assert!(marshal(&[Arg::str("a\0b")]).is_err());
        assert!(marshal(&[Arg::ObjectPath("/a/".into())]).is_err());
        assert!(marshal(&[Arg::ObjectPath("a".into())]).is_err());
        assert!(marshal(&[Arg::Array("u".into(), vec![Arg::str("x")])]).is_err());
        assert!(marshal(&[Arg::Array("uu".into(), vec![])]).is_err());
        assert!(marshal(&[Arg::Struct(vec![])]).is_err());
        assert!(marshal(&[Arg::Array("{vs}".into(), vec![])]).is_err());
    }

    #[test]
    fn signatures() {
        assert_eq!(split_signature("ssa(sv)a(sa(sv))").unwrap(), ["s", "s", "a(sv)", "a(sa(sv))"]);
        assert_eq!(split_signature("a{sv}uoss").unwrap(), ["a{sv}", "u", "o", "s", "s"]);
        assert_eq!(split_signature("").unwrap(), Vec::<&str>::new());
        for bad in ["a", "(", "()", "(s", "{sv}", "a{vs}", "a{s}", "a{svs}", "z", "a(s))"] {
            assert!(split_signature(bad).is_err(), "{bad:?}");
        }
        assert!(split_signature(&"a".repeat(100)).is_err(), "too deep");
        assert!(valid_object_path("/org/freedesktop/systemd1/job/12"));
        assert!(!valid_object_path("//"));
        assert!(!valid_object_path("/a-b"));
    }

    #[test]
    fn sasl_lines() {
        assert_eq!(sasl_external_line(0), "AUTH EXTERNAL 30\r\n");
        assert_eq!(sasl_external_line(1000), "AUTH EXTERNAL 31303030\r\n");
        assert_eq!(
            parse_sasl_reply("OK 1234deadbeef5678deadbeef5678dead").unwrap(),
            SaslReply::Ok("1234deadbeef5678deadbeef5678dead".into())
        );
        assert_eq!(
            parse_sasl_reply("REJECTED EXTERNAL DBUS_COOKIE_SHA1").unwrap(),
            SaslReply::Rejected(vec!["EXTERNAL".into(), "DBUS_COOKIE_SHA1".into()])
        );
        assert_eq!(parse_sasl_reply("REJECTED").unwrap(), SaslReply::Rejected(vec![]));
        assert_eq!(parse_sasl_reply("ERROR").unwrap(), SaslReply::Error(String::new()));
        assert_eq!(parse_sasl_reply("ERROR bad line").unwrap(), SaslReply::Error("bad line".into()));
        assert_eq!(parse_sasl_reply("DATA").unwrap(), SaslReply::Data(String::new()));
        for bad in ["", "OK", "OK not-hex", "ok 12", "AGREE_UNIX_FD", "BEGIN"] {
            assert!(parse_sasl_reply(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("unix:path=/run/dbus/system_bus_socket"),
            Some(SocketAddr::Path(SYSTEM_BUS_SOCKET.into()))
        );
        assert_eq!(parse_address("tcp:host=x,port=1;unix:path=/a%20b,guid=12"), Some(SocketAddr::Path("/a b".into())));
        assert_eq!(
            parse_address("unix:guid=1,abstract=/tmp/dbus-X"),
            Some(SocketAddr::Abstract(b"/tmp/dbus-X".to_vec()))
        );
        assert_eq!(parse_address("unix:tmpdir=/tmp"), None);
        assert_eq!(parse_address(""), None);
    }

    /// A fake peer on a real socket: authentication, Hello, a reply preceded by signals (one
    /// watched, one not, one spoofed), an error reply, a timeout and a hang-up.
    #[test]
    fn connection_against_a_fake_bus() {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("bus");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let read_until = |s: &mut UnixStream, buf: &mut Vec<u8>, done: &dyn Fn(&[u8]) -> Option<usize>| loop {
                if let Some(n) = done(buf) {
                    return buf.drain(..n).collect::<Vec<u8>>();
                }
                let mut chunk = [0u8; 512];
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "client hung up");
                buf.extend_from_slice(&chunk[..n]);
            };
            let line = |b: &[u8]| b.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
            let auth = read_until(&mut s, &mut buf, &line);
            assert_eq!(auth, format!("\0{}", sasl_external_line(euid())).as_bytes());
            s.write_all(b"OK 0123456789abcdef0123456789abcdef\r\n").unwrap();
            assert_eq!(read_until(&mut s, &mut buf, &line), b"BEGIN\r\n");
            let message = |b: &[u8]| {
                let head: &[u8; 16] = b.get(..16)?.try_into().ok()?;
                let n = Message::wire_len(head).ok()?;
                (b.len() >= n).then_some(n)
            };
            let mut recv = |s: &mut UnixStream| Message::decode(&read_until(s, &mut buf, &message)).unwrap();
            let mut serial = 100;
            let mut send = |s: &mut UnixStream, mut m: Message| {
                serial += 1;
                m.serial = serial;
                s.write_all(&m.encode().unwrap()).unwrap();
            };
            let hello = recv(&mut s);
            assert_eq!(hello.member.as_deref(), Some("Hello"));
            assert_eq!(hello.destination.as_deref(), Some(BUS_NAME));
            send(&mut s, Message::method_return(hello.serial, vec![Arg::str(":1.42")]));
            send(&mut s, Message::signal(BUS_PATH, BUS_NAME, "NameAcquired", vec![Arg::str(":1.42")]));
            let add = recv(&mut s);
            assert_eq!((add.member.as_deref(), add.body.clone()), (Some("AddMatch"), vec![Arg::str("type='signal'")]));
            send(&mut s, Message::method_return(add.serial, vec![]));
            let start = recv(&mut s);
            assert_eq!(start.signature(), "s");
            let job = |n: u32, from: &str| {
                let mut m = Message::signal(
                    "/j",
                    "org.example.M",
                    "JobRemoved",
                    vec![Arg::U32(n), Arg::ObjectPath(format!("/j/{n}")), Arg::str("u"), Arg::str("done")],
                );
                m.sender = Some(from.into());
                m
            };
            send(&mut s, job(1, ":1.99")); // not from the watched sender: dropped
            send(&mut s, job(1, ":1.1"));
            send(&mut s, Message::signal("/j", "org.example.M", "Other", vec![]));
            send(&mut s, Message::method_return(start.serial, vec![Arg::ObjectPath("/j/1".into())]));
            let fail = recv(&mut s);
            send(&mut s, Message::error(fail.serial, "org.example.Error.Nope", "no such thing"));
            let _slow = recv(&mut s); // never answered
            send(&mut s, job(2, ":1.1"));
            let _ = recv(&mut s); // the client's last call; hang up instead of answering
        });

        let mut c = Connection::open(&SocketAddr::Path(sock.to_str().unwrap().into()), true).unwrap();
        assert!(c.is_bus());
        assert_eq!(c.unique_name(), Some(":1.42"));
        c.add_match("type='signal'").unwrap();
        c.watch_signal("org.example.M", "JobRemoved", Some(":1.1"));
        assert!(c.is_watching("org.example.M", "JobRemoved"));
        let reply = c.call(Some("org.example"), "/", "org.example.M", "Start", vec![Arg::str("x")]).unwrap();
        let job = reply.body[0].as_str().unwrap().to_string();
        // The job's signal came before the reply: kept, found at once.
        let sig = c.wait_signal(Duration::ZERO, |m| m.body.get(1).and_then(Arg::as_str) == Some(&job)).unwrap();
        assert_eq!(sig.sender.as_deref(), Some(":1.1"));
        let err = c.call(None, "/", "org.example.M", "Fail", vec![]).unwrap_err();
        assert_eq!(err.dbus_name(), Some("org.example.Error.Nope"));
        assert_eq!(err.to_string(), "org.example.Error.Nope: no such thing");
        c.set_timeout(Duration::from_millis(100));
        let t = Instant::now();
        assert!(matches!(c.call(None, "/", "org.example.M", "Slow", vec![]), Err(Error::Timeout { .. })));
        assert!(t.elapsed() >= Duration::from_millis(100));
        // The signal that arrives after the timed-out call is still found; its late reply would
        // be dropped.
        let sig = c.wait_signal(Duration::from_secs(5), |m| m.body.first() == Some(&Arg::U32(2))).unwrap();
        assert_eq!(sig.body[1], Arg::ObjectPath("/j/2".into()));
        c.set_timeout(Duration::from_secs(5));
        assert!(matches!(c.call(None, "/", "org.example.M", "Last", vec![]), Err(Error::Closed)));
        server.join().unwrap();
    }
}
