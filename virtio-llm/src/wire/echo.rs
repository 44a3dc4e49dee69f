//! Echo: a diagnostic round trip through the request and response queues. The device sends
//! bytes, the driver returns them unchanged. It carries nothing private (the host chose the
//! bytes), and it is how the transport is tested and benchmarked under KVM without a model.

use alloc::vec::Vec;

use crate::error::WireError;
use crate::spec::MAX_ECHO_BYTES;
use crate::wire::Message;
use crate::wire::codec::{Reader, Writer, check_len, len_u32};

/// Message types of the echo pair.
pub mod msg_type {
    /// [`super::EchoRequest`], on the request queue.
    pub const ECHO_REQUEST: u16 = 0x0303;
    /// [`super::EchoReply`], on the response queue.
    pub const ECHO_REPLY: u16 = 0x0404;
}

/// Both echo messages: an id and 1..=`MAX_ECHO_BYTES` bytes; only the type differs.
macro_rules! echo_message {
    ($(#[$doc:meta])* $name:ident, $ty:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// Chosen by the device; the reply carries it back.
            pub request_id: u64,
            /// 1..=`MAX_ECHO_BYTES` bytes.
            pub data: Vec<u8>,
        }

        impl Message<'_> for $name {
            const TYPE: u16 = $ty;
            fn encode_body(&self, w: &mut Writer<'_>) {
                w.u64(self.request_id);
                w.u32(len_u32(self.data.len()));
                w.u32(0);
                w.bytes(&self.data);
            }
            fn decode_body(r: &mut Reader<'_>) -> Result<Self, WireError> {
                let request_id = r.u64()?;
                let len = r.u32()? as usize;
                r.reserved(4, "echo reserved")?;
                check_len("echo data", len, MAX_ECHO_BYTES)?;
                let data = r.bytes(len)?.to_vec();
                Ok(Self { request_id, data })
            }
            fn validate(&self) -> Result<(), WireError> {
                check_len("echo data", self.data.len(), MAX_ECHO_BYTES)?;
                crate::wire::ensure(!self.data.is_empty(), "echo data length", 0)
            }
        }
    };
}

echo_message!(
    /// Bytes for the driver to send back.
    EchoRequest,
    msg_type::ECHO_REQUEST
);
echo_message!(
    /// The driver's answer to an [`EchoRequest`]: the same id and bytes.
    EchoReply,
    msg_type::ECHO_REPLY
);

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn echo_round_trips_and_bounds_are_enforced() {
        for len in [1, 2, 4095, MAX_ECHO_BYTES] {
            let m = EchoRequest {
                request_id: len as u64,
                data: (0..len).map(|i| i as u8).collect(),
            };
            let mut buf = Vec::new();
            m.encode(&mut buf).unwrap();
            assert_eq!(buf.len(), 8 + 16 + len);
            assert_eq!(EchoRequest::decode(&buf).unwrap(), m);
            assert_eq!(
                EchoReply::decode(&buf),
                Err(WireError::UnknownType(msg_type::ECHO_REQUEST))
            );
        }
        let empty = EchoReply {
            request_id: 1,
            data: vec![],
        };
        assert!(matches!(
            empty.encode(&mut Vec::new()),
            Err(WireError::FieldOutOfRange { .. })
        ));
        let big = EchoReply {
            request_id: 1,
            data: vec![0; MAX_ECHO_BYTES + 1],
        };
        assert!(matches!(
            big.encode(&mut Vec::new()),
            Err(WireError::TooLong { .. })
        ));
        // A declared length larger than the limit is refused before reading the data.
        let mut buf = Vec::new();
        EchoReply {
            request_id: 9,
            data: vec![7; 8],
        }
        .encode(&mut buf)
        .unwrap();
        buf[16..20].copy_from_slice(&(MAX_ECHO_BYTES as u32 + 1).to_le_bytes());
        assert!(matches!(
            EchoReply::decode(&buf),
            Err(WireError::TooLong { .. })
        ));
        buf[16..20].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            EchoReply::decode(&buf),
            Err(WireError::Truncated { .. })
        ));
    }
}
