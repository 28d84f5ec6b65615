//! Netlink message encoding shared by the rtnetlink and nf_tables clients: a builder for
//! one message (header, fixed family header, attributes with nesting) and an attribute
//! reader. Hand-written because the plugin needs a dozen message shapes, and the generic
//! codec crates cost more binary (and so start-up and resident memory) than the whole
//! plugin.

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_ERROR: u16 = 0x2;
pub const NLMSG_DONE: u16 = 0x3;
pub const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One netlink message being built.
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// Header with a zero length (set by [`Msg::finish`]) followed by `fixed`.
    pub fn new(kind: u16, flags: u16, seq: u32, fixed: &[u8]) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(fixed);
        let mut m = Msg {
            buf,
            nests: Vec::new(),
        };
        m.pad();
        m
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Raw bytes (a nested fixed header, e.g. the peer's ifinfomsg of a veth).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    pub fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    pub fn attr_u8(&mut self, kind: u16, v: u8) {
        self.attr(kind, &[v]);
    }

    pub fn attr_u16(&mut self, kind: u16, v: u16) {
        self.attr(kind, &v.to_ne_bytes());
    }

    pub fn attr_u32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_ne_bytes());
    }

    /// A NUL-terminated string.
    pub fn attr_str(&mut self, kind: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(kind, &v);
    }

    pub fn begin(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    pub fn end(&mut self) {
        let start = self.nests.pop().expect("balanced nesting");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Sets the sequence number (messages built before their place in a batch is known).
    pub fn set_seq(&mut self, seq: u32) {
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.pad();
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A received message: type, flags, sequence number and payload.
pub struct Received<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram into messages.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Received<'_>> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let m = Received {
            kind: u16::from_ne_bytes(buf[off + 4..off + 6].try_into().ok()?),
            flags: u16::from_ne_bytes(buf[off + 6..off + 8].try_into().ok()?),
            seq: u32::from_ne_bytes(buf[off + 8..off + 12].try_into().ok()?),
            payload: &buf[off + 16..off + len],
        };
        off += (len + 3) & !3;
        Some(m)
    })
}

/// The errno of an `NLMSG_ERROR` payload (0 for an ack).
pub fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .unwrap_or(-libc::EPROTO)
}

/// Iterates over the attributes in `buf` as (type without flags, value).
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & NLA_TYPE_MASK;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let v = &buf[off + 4..off + len];
        off += (len + 3) & !3;
        Some((kind, v))
    })
}

pub fn u32_of(v: &[u8]) -> Option<u32> {
    v.get(0..4)?.try_into().ok().map(u32::from_ne_bytes)
}

pub fn str_of(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read_back() {
        let mut m = Msg::new(16, NLM_F_REQUEST, 7, &[1, 2, 3]);
        m.attr_str(3, "eth0");
        m.begin(18);
        m.attr_u32(4, 1500);
        m.end();
        let buf = m.finish();
        assert_eq!(buf.len() % 4, 0);
        let msgs: Vec<Received> = messages(&buf).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].kind, msgs[0].seq), (16, 7));
        let body = &msgs[0].payload[4..]; // the 3-byte fixed part is padded to 4
        let a: Vec<(u16, &[u8])> = attrs(body).collect();
        assert_eq!(a[0].0, 3);
        assert_eq!(str_of(a[0].1), "eth0");
        assert_eq!(a[1].0, 18);
        let inner: Vec<(u16, &[u8])> = attrs(a[1].1).collect();
        assert_eq!(u32_of(inner[0].1), Some(1500));
    }
}
