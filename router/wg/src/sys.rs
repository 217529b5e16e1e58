//! Every `unsafe` call of the data plane lives here: TUN ioctls, `SO_MARK`, `fork`, signal
//! masks, and batched UDP I/O (`recvmmsg`/`sendmmsg`).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
struct IfReqInt {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

fn ifname(name: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes.len() >= libc::IFNAMSIZ
        || bytes.contains(&0)
        || bytes.contains(&b'/')
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1-15 bytes, no '/')"),
        ));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b as libc::c_char;
    }
    Ok(out)
}

const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;

/// Opens `/dev/net/tun` and attaches it to (creating if needed) the TUN interface `name`,
/// without packet information headers. With `vnet_hdr`, every read and write carries a
/// `struct virtio_net_hdr` and the kernel may hand us TCP super-packets and partial checksums
/// (`TUNSETOFFLOAD` CSUM|TSO4|TSO6); returns whether the offloads are on.
pub fn tun_create(name: &str, vnet_hdr: bool) -> io::Result<(File, bool)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: ifname(name)?,
        flags: IFF_TUN | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 },
        _pad: [0; 22],
    };
    // SAFETY: `file` is an open /dev/net/tun descriptor and `req` is a properly sized,
    // initialised `struct ifreq` that outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if !vnet_hdr {
        return Ok((file, false));
    }
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNSETOFFLOAD,
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
        )
    };
    Ok((file, rc == 0))
}

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before being wrapped.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own exclusively.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ip link set dev NAME mtu MTU`.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = ctl_socket()?;
    let mut req = IfReqInt {
        name: ifname(name)?,
        value: libc::c_int::try_from(mtu)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        _pad: [0; 20],
    };
    // SAFETY: `sock` is a valid socket and `req` a valid `struct ifreq` for SIOCSIFMTU.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFMTU,
            &mut req as *mut IfReqInt,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The MTU of interface `name` (`ip link show`).
pub fn get_mtu(name: &str) -> io::Result<u32> {
    let sock = ctl_socket()?;
    let mut req = IfReqInt {
        name: ifname(name)?,
        value: 0,
        _pad: [0; 20],
    };
    // SAFETY: `sock` is a valid socket and `req` a valid `struct ifreq` for SIOCGIFMTU.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCGIFMTU,
            &mut req as *mut IfReqInt,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(req.value).unwrap_or(0))
}

/// Sets `SO_MARK` on a socket (0 clears it).
pub fn set_fwmark(fd: RawFd, mark: u32) -> io::Result<()> {
    set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

fn set_sockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the duration of the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Enlarges a socket's kernel buffers (best effort, `SO_RCVBUFFORCE` needs root).
pub fn set_socket_buffers(fd: RawFd, bytes: i32) {
    let _ = set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes);
    let _ = set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes);
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and threads it spawns later), so
/// that [`wait_termination_signal`] can take them synchronously.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset fully initialises the zeroed set; sigaddset with valid signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Waits up to `timeout` for a blocked termination signal; returns its number.
pub fn wait_termination_signal(timeout: Duration) -> Option<i32> {
    let set = termination_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` and `ts` are valid for the call; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Forks into the background: the parent gets `true` (and should exit at once), the child gets
/// `false` after `setsid` and with stdin/stdout/stderr on /dev/null. Call before any thread is
/// spawned.
pub fn daemonize() -> io::Result<bool> {
    // SAFETY: the process is single-threaded here (documented precondition), so the child may
    // continue running arbitrary Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(true);
    }
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() };
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    Ok(false)
}

/// Exits the process immediately without running destructors (for the parent after fork).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(sin.sin_addr.s_addr).into(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                sin6.sin6_addr.s6_addr.into(),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: &SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Room for one cmsg carrying an int (UDP_GRO) or a u16 (UDP_SEGMENT), 8-byte aligned.
const CMSG_ROOM: usize = 32;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct CmsgBuf([u8; CMSG_ROOM]);

/// Asks the kernel to hand us coalesced UDP datagrams (UDP GRO) with their segment size.
pub fn enable_udp_gro(fd: RawFd) -> io::Result<()> {
    set_sockopt_int(fd, libc::SOL_UDP, UDP_GRO, 1)
}

/// One received message: its length, source, and segment size when the kernel coalesced
/// several datagrams of that size (UDP GRO).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecvMeta {
    /// Bytes in the buffer.
    pub len: usize,
    /// Source address.
    pub addr: Option<SocketAddr>,
    /// Segment size of a coalesced message (each datagram but the last has this size).
    pub gso_size: Option<usize>,
}

/// Receives up to `bufs.len()` messages in one `recvmmsg` call, blocking for the first.
/// Fills `meta` and returns how many arrived.
pub fn recv_batch(fd: RawFd, bufs: &mut [Vec<u8>], meta: &mut [RecvMeta]) -> io::Result<usize> {
    let n = bufs.len().min(meta.len());
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; n];
    let mut cmsgs = vec![CmsgBuf([0; CMSG_ROOM]); n];
    let mut iovs: Vec<libc::iovec> = bufs[..n]
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: all-zero is a valid msghdr; the pointers set below stay valid for the call.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = &mut storage[i] as *mut _ as *mut libc::c_void;
        hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &mut iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = cmsgs[i].0.as_mut_ptr() as *mut libc::c_void;
        hdr.msg_controllen = CMSG_ROOM;
        msgs.push(libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        });
    }
    // SAFETY: `msgs` holds `n` initialised headers whose buffers, iovecs, address storage and
    // control buffers outlive the call; MSG_WAITFORONE blocks only for the first message.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = rc as usize;
    for i in 0..got {
        let mut gso_size = None;
        let hdr = &msgs[i].msg_hdr;
        // SAFETY: the kernel filled `msg_control` (within CMSG_ROOM, as `msg_controllen` says);
        // CMSG_FIRSTHDR/NXTHDR stay within it and CMSG_DATA points at the cmsg payload.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                    if v > 0 {
                        gso_size = Some(v as usize);
                    }
                }
                c = libc::CMSG_NXTHDR(hdr, c);
            }
        }
        meta[i] = RecvMeta {
            len: msgs[i].msg_len as usize,
            addr: sockaddr_to_std(&storage[i]),
            gso_size,
        };
    }
    Ok(got)
}

/// Sends datagrams, coalescing runs of equal-size datagrams to the same destination into one
/// UDP GSO message (`UDP_SEGMENT`) when `gso` is true. Returns the number of datagrams the
/// kernel took, or `Err` with the error of a GSO message so the caller can turn GSO off and
/// retry from the datagram index it carries (older kernels and devices without UDP
/// segmentation say EIO or EINVAL).
pub fn send_batch_gso(
    fd: RawFd,
    packets: &[(&[u8], SocketAddr)],
) -> Result<usize, (usize, io::Error)> {
    let n = packets.len();
    if n == 0 {
        return Ok(0);
    }
    // Group: same destination; every datagram but the last of a group has the group's size;
    // the last may be shorter; at most 64 segments and 64 KiB.
    let mut groups: Vec<(usize, usize, usize)> = Vec::new(); // (start, count, seg)
    let mut i = 0;
    while i < n {
        let (first, addr) = packets[i];
        let seg = first.len();
        let mut count = 1;
        let mut total = seg;
        while i + count < n && count < 64 {
            let (next, next_addr) = packets[i + count];
            if next_addr != addr || next.len() > seg || total + next.len() > 65000 || seg == 0 {
                break;
            }
            total += next.len();
            count += 1;
            if next.len() < seg {
                break;
            }
        }
        groups.push((i, count, seg));
        i += count;
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: Vec<libc::sockaddr_storage> =
        vec![unsafe { std::mem::zeroed() }; groups.len()];
    let mut cmsgs = vec![CmsgBuf([0; CMSG_ROOM]); groups.len()];
    let iovs: Vec<libc::iovec> = packets
        .iter()
        .map(|(b, _)| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(groups.len());
    for (g, &(start, count, seg)) in groups.iter().enumerate() {
        let namelen = std_to_sockaddr(&packets[start].1, &mut storage[g]);
        // SAFETY: all-zero is a valid msghdr; the pointers set below stay valid for the call.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = &mut storage[g] as *mut _ as *mut libc::c_void;
        hdr.msg_namelen = namelen;
        hdr.msg_iov = iovs[start..].as_ptr() as *mut libc::iovec;
        hdr.msg_iovlen = count;
        if count > 1 {
            hdr.msg_control = cmsgs[g].0.as_mut_ptr() as *mut libc::c_void;
            // SAFETY: CMSG_SPACE is a pure size computation.
            hdr.msg_controllen =
                unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
            // SAFETY: the control buffer is CMSG_ROOM (>= CMSG_SPACE(2)) bytes, 8-byte aligned,
            // and `msg_controllen` covers exactly one cmsg carrying a u16.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg as u16);
            }
        }
        msgs.push(libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        });
    }
    let mut done = 0; // messages
    let mut sent = 0; // datagrams
    while done < msgs.len() {
        // SAFETY: `msgs[done..]` are initialised headers pointing at buffers (borrowed from
        // `packets`, only read by the kernel), iovecs, addresses and control data that outlive
        // the call.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                msgs[done..].as_mut_ptr(),
                (msgs.len() - done) as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if groups[done].1 > 1
                && matches!(
                    err.raw_os_error(),
                    Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                )
            {
                return Err((groups[done].0, err));
            }
            // Skip the message that failed (e.g. unreachable destination) and go on.
            done += 1;
            continue;
        }
        for g in &groups[done..done + rc as usize] {
            sent += g.1;
        }
        done += rc as usize;
    }
    Ok(sent)
}

/// Sends each `(buffer, destination)` pair with as few `sendmmsg` calls as possible. Returns
/// the number of datagrams the kernel took; the rest are dropped (UDP semantics).
pub fn send_batch(fd: RawFd, packets: &[(&[u8], SocketAddr)]) -> usize {
    let n = packets.len();
    if n == 0 {
        return 0;
    }
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; n];
    let mut lens = Vec::with_capacity(n);
    for (i, (_, addr)) in packets.iter().enumerate() {
        lens.push(std_to_sockaddr(addr, &mut storage[i]));
    }
    let mut iovs: Vec<libc::iovec> = packets
        .iter()
        .map(|(b, _)| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: all-zero is a valid msghdr; the pointers set below stay valid for the call.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_name = &mut storage[i] as *mut _ as *mut libc::c_void;
        hdr.msg_namelen = lens[i];
        hdr.msg_iov = &mut iovs[i];
        hdr.msg_iovlen = 1;
        msgs.push(libc::mmsghdr {
            msg_hdr: hdr,
            msg_len: 0,
        });
    }
    let mut sent = 0;
    let mut skipped = 0;
    while sent < n {
        // SAFETY: `msgs[sent..]` are initialised headers pointing at buffers (borrowed from
        // `packets`, only read by the kernel), iovecs and addresses that outlive the call.
        let rc =
            unsafe { libc::sendmmsg(fd, msgs[sent..].as_mut_ptr(), (n - sent) as libc::c_uint, 0) };
        if rc < 0 {
            // Skip the datagram that failed (e.g. unreachable destination) and go on.
            sent += 1;
            skipped += 1;
            continue;
        }
        sent += rc as usize;
    }
    sent - skipped
}

/// Puts a descriptor into non-blocking mode.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller owns; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is readable.
pub fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(rc > 0)
}

/// Waits until one of two descriptors is readable or `timeout` passes; returns which are.
pub fn poll_readable2(a: RawFd, b: RawFd, timeout: Duration) -> io::Result<(bool, bool)> {
    let mut pfds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfds` is an array of two valid pollfds for the duration of the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok((false, false));
        }
        return Err(err);
    }
    let ready = |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    Ok((ready(&pfds[0]), ready(&pfds[1])))
}
