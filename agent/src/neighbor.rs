//! Forgetting the node's neighbor (ARP) entry for an address handed to a new instance.
//!
//! Addresses are reused (the allocator wraps, or starts over): the node may still hold
//! the old instance's MAC for the address, as a stale entry it keeps sending to until
//! probes fail, 5 to 10 s later. The new instance is unreachable meanwhile and its health
//! check runs out. So the entry is deleted (RTM_DELNEIGH over rtnetlink) once the address
//! is assigned, and the kernel resolves it afresh on first use.

use std::net::Ipv4Addr;

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

const RTM_DELNEIGH: u16 = 29;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const NDA_DST: u16 = 1;

/// Deletes the neighbor entry of `ip` on `device`; none there is fine.
pub fn forget(device: &str, ip: Ipv4Addr) -> std::io::Result<()> {
    let index = nix::net::if_::if_nametoindex(device)?;
    let fd =
        socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
    let msg = request(index, ip);
    sendto(std::os::fd::AsRawFd::as_raw_fd(&fd), &msg, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
    let mut answer = [0u8; 256];
    let n = recv(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut answer, MsgFlags::empty())?;
    match ack_errno(&answer[..n]) {
        // ENOENT: there was no entry to forget.
        Some(0) | Some(2) | None => Ok(()),
        Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// An RTM_DELNEIGH request for `ip` on interface `index`: nlmsghdr, ndmsg, NDA_DST.
fn request(index: u32, ip: Ipv4Addr) -> Vec<u8> {
    let len: u32 = 16 + 12 + 8;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&RTM_DELNEIGH.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
                                              // ndmsg: family, 3 bytes of padding, ifindex, state, flags, type.
    m.extend_from_slice(&[AddressFamily::Inet as i32 as u8, 0, 0, 0]);
    m.extend_from_slice(&(index as i32).to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&[0, 0]);
    // NDA_DST: the address.
    m.extend_from_slice(&8u16.to_ne_bytes());
    m.extend_from_slice(&NDA_DST.to_ne_bytes());
    m.extend_from_slice(&ip.octets());
    m
}

/// The errno of a netlink acknowledgement (0 for success); `None` when it is not one.
fn ack_errno(answer: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    let error = i32::from_ne_bytes(answer.get(16..20)?.try_into().ok()?);
    Some(-error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_a_well_formed_rtm_delneigh() {
        let m = request(7, Ipv4Addr::new(10, 202, 0, 5));
        assert_eq!(m.len(), 36);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 36);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_DELNEIGH);
        assert_eq!(m[16], 2, "AF_INET");
        assert_eq!(i32::from_ne_bytes([m[20], m[21], m[22], m[23]]), 7);
        assert_eq!(&m[32..36], &[10, 202, 0, 5]);
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(ack_errno(&ack), Some(2));
    }
}
