//! Passing file descriptors over a unix socket (SCM_RIGHTS): the shim hands corrald the ends of
//! an exec's stdio or an attach's stdin this way, so the bytes of a session never pass through
//! the shim.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// Sends `data` on the stream socket `sock` with `fds` attached to its first byte, then the rest
/// of `data` if one sendmsg did not take it all.
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one message"));
    }
    if data.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "descriptors need at least one byte to travel with"));
    }
    // Room for MAX_FDS ints, aligned as cmsghdr wants.
    let mut space = [0u64; 8];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let needed = unsafe { libc::CMSG_SPACE(payload) } as usize;
        debug_assert!(needed <= std::mem::size_of_val(&space));
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = needed as _;
        // SAFETY: msg_control points at `space`, at least `needed` bytes long and aligned for
        // cmsghdr, so the first header and its data (CMSG_LEN(payload) bytes) lie inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
    }
    let sent = loop {
        // SAFETY: `msg` points at `iov` (over `data`) and `space`, all alive for the call.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut rest = &data[sent..];
    while !rest.is_empty() {
        // SAFETY: `rest` is valid for reads of its length.
        let n = unsafe { libc::send(sock, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        rest = &rest[n as usize..];
    }
    Ok(())
}

/// One recvmsg on `sock` into `buf`: (bytes read, descriptors received), the descriptors
/// close-on-exec. Ok((0, _)) is the end of the stream; WouldBlock comes back as an error.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&space) as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`, writable) and `space`, alive for the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_FIRSTHDR/NXTHDR stay within it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is a header inside the control buffer (checked non-null above).
        let (level, kind, len) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len as usize) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) only computes a size.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: the data holds `count` ints (cmsg_len says so); read unaligned.
                let fd = unsafe { libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i).read_unaligned() };
                // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as above; NXTHDR returns null past the end.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "descriptors were cut off (MSG_CTRUNC)"));
    }
    Ok((n, fds))
}

/// The raw numbers of `fds`, for [`send_with_fds`].
pub fn raw(fds: &[&dyn AsRawFd]) -> Vec<RawFd> {
    fds.iter().map(|f| f.as_raw_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_travel_with_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, mut w) = std::io::pipe().unwrap();
        let data = vec![7u8; 100_000];
        let fds = [w.as_raw_fd(), r.as_raw_fd()];
        let sender = std::thread::spawn({
            let data = data.clone();
            move || send_with_fds(a.as_raw_fd(), &data, &fds).unwrap()
        });
        let mut buf = vec![0u8; 4096];
        let (n, fds) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(fds.len(), 2);
        let mut got = buf[..n].to_vec();
        let mut rest = Vec::new();
        sender.join().unwrap();
        (&b).read_to_end(&mut rest).unwrap();
        got.extend(rest);
        assert_eq!(got, data);
        // The received writer is the pipe's: what goes in comes out of our reader.
        let mut passed = std::fs::File::from(fds.into_iter().next().unwrap());
        passed.write_all(b"hi").unwrap();
        w.write_all(b"!").unwrap();
        let mut out = [0u8; 3];
        r.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"hi!");
    }

    #[test]
    fn without_descriptors_and_at_the_end() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fds(a.as_raw_fd(), b"x", &[]).unwrap();
        drop(a);
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((n, fds.len()), (1, 0));
        assert_eq!(recv_with_fds(b.as_raw_fd(), &mut buf).unwrap().0, 0);
        assert!(send_with_fds(b.as_raw_fd(), b"", &[]).is_err());
        assert!(send_with_fds(b.as_raw_fd(), b"x", &[0; 5]).is_err());
    }
}
