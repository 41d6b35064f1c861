//! Error types of the frame engine.
//!
//! Every decode failure is fatal for the connection it came from: the router
//! maps a [`DecodeError`] to an AMQP error condition with
//! [`DecodeError::condition`], sends a `close` carrying it (see
//! [`crate::encode_close_with_error`]) and drops the socket. The variants are
//! therefore aimed at logging and at picking the right condition, not at
//! recovery.

/// `amqp:connection:framing-error`: the byte stream cannot be split into frames.
pub const CONDITION_FRAMING_ERROR: &str = "amqp:connection:framing-error";
/// `amqp:decode-error`: a frame was well delimited but its body is not valid AMQP.
pub const CONDITION_DECODE_ERROR: &str = "amqp:decode-error";
/// `amqp:frame-size-too-small`: we cannot fit what we must send into the agreed frame size.
pub const CONDITION_FRAME_SIZE_TOO_SMALL: &str = "amqp:frame-size-too-small";
/// `amqp:internal-error`: a local bug, not the peer's fault.
pub const CONDITION_INTERNAL_ERROR: &str = "amqp:internal-error";

/// Why bytes received from a peer could not be turned into frames.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame header announces more bytes than we agreed to accept.
    #[error("frame size {size} exceeds the maximum frame size {max}")]
    FrameTooLarge {
        /// Size field of the frame header.
        size: u32,
        /// Our current maximum frame size.
        max: u32,
    },
    /// The size field is smaller than the 8-byte frame header itself.
    #[error("frame size {size} is smaller than the 8-byte frame header")]
    FrameTooSmall {
        /// Size field of the frame header.
        size: u32,
    },
    /// The data offset is below 2 words or points past the end of the frame.
    #[error("bad data offset {doff} for frame size {size}")]
    BadDataOffset {
        /// DOFF field (in 4-byte words).
        doff: u8,
        /// Size field of the frame header.
        size: u32,
    },
    /// Frame type other than the one expected: AMQP (0x00) for
    /// [`crate::FrameDecoder`], SASL (0x01) for [`crate::decode_sasl_frame`].
    #[error("unsupported frame type {0:#04x}")]
    UnsupportedFrameType(u8),
    /// The peer did not open with an AMQP protocol header at all (TLS, HTTP, noise...).
    #[error("not an AMQP protocol header: {0:02x?}")]
    NotAmqp([u8; 8]),
    /// An AMQP protocol header for a protocol id or version we do not speak.
    #[error("unsupported AMQP protocol header: {0:02x?}")]
    UnsupportedProtocolHeader([u8; 8]),
    /// A non-transfer performative failed to decode (structure or serde_amqp error).
    #[error("malformed performative: {0}")]
    MalformedPerformative(String),
    /// The transfer fast path rejected the performative.
    #[error("malformed transfer: {0}")]
    MalformedTransfer(&'static str),
    /// A SASL frame whose body is not a valid SASL performative.
    #[error("malformed SASL frame: {0}")]
    MalformedSasl(String),
    /// A payload that was expected to be exactly one AMQP Data section was not.
    #[error("payload is not exactly one AMQP data section")]
    NotDataSection,
}

impl DecodeError {
    /// The AMQP error condition to close the connection with.
    ///
    /// Framing problems (we lost track of frame boundaries, or the peer is not
    /// speaking AMQP) map to `amqp:connection:framing-error`, as the spec
    /// demands for oversized frames; well-delimited frames with bad contents
    /// map to `amqp:decode-error`.
    pub fn condition(&self) -> &'static str {
        match self {
            DecodeError::FrameTooLarge { .. }
            | DecodeError::FrameTooSmall { .. }
            | DecodeError::BadDataOffset { .. }
            | DecodeError::UnsupportedFrameType(_)
            | DecodeError::NotAmqp(_)
            | DecodeError::UnsupportedProtocolHeader(_) => CONDITION_FRAMING_ERROR,
            DecodeError::MalformedPerformative(_)
            | DecodeError::MalformedTransfer(_)
            | DecodeError::MalformedSasl(_)
            | DecodeError::NotDataSection => CONDITION_DECODE_ERROR,
        }
    }
}

/// Why a frame could not be encoded. Nothing is left in the output buffer
/// when one of these is returned.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// serde_amqp refused the value (e.g. an array mixing element types).
    #[error("cannot serialize performative: {0}")]
    Serialize(String),
    /// The encoded frame does not fit the frame size limit it was encoded against.
    #[error("encoded frame of {size} bytes exceeds the maximum frame size {max}")]
    FrameTooLarge {
        /// Size the frame would have had.
        size: usize,
        /// Limit it was checked against.
        max: u32,
    },
}

impl EncodeError {
    /// The AMQP error condition that describes this failure when we have to
    /// close a connection because of it.
    pub fn condition(&self) -> &'static str {
        match self {
            EncodeError::Serialize(_) => CONDITION_INTERNAL_ERROR,
            EncodeError::FrameTooLarge { .. } => CONDITION_FRAME_SIZE_TOO_SMALL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        assert_eq!(
            DecodeError::FrameTooLarge { size: 9, max: 8 }.condition(),
            "amqp:connection:framing-error"
        );
        assert_eq!(
            DecodeError::FrameTooSmall { size: 3 }.condition(),
            "amqp:connection:framing-error"
        );
        assert_eq!(
            DecodeError::BadDataOffset { doff: 1, size: 8 }.condition(),
            "amqp:connection:framing-error"
        );
        assert_eq!(
            DecodeError::UnsupportedFrameType(1).condition(),
            "amqp:connection:framing-error"
        );
        assert_eq!(
            DecodeError::NotAmqp(*b"GET / HT").condition(),
            "amqp:connection:framing-error"
        );
        assert_eq!(
            DecodeError::MalformedPerformative("x".into()).condition(),
            "amqp:decode-error"
        );
        assert_eq!(
            DecodeError::MalformedTransfer("x").condition(),
            "amqp:decode-error"
        );
        assert_eq!(DecodeError::NotDataSection.condition(), "amqp:decode-error");
        assert_eq!(
            DecodeError::MalformedSasl("x".into()).condition(),
            "amqp:decode-error"
        );
        assert_eq!(
            EncodeError::FrameTooLarge {
                size: 600,
                max: 512
            }
            .condition(),
            "amqp:frame-size-too-small"
        );
        assert_eq!(
            EncodeError::Serialize("x".into()).condition(),
            "amqp:internal-error"
        );
    }

    #[test]
    fn display_is_informative() {
        let e = DecodeError::FrameTooLarge {
            size: 70000,
            max: 65536,
        };
        assert!(e.to_string().contains("70000"));
        assert!(e.to_string().contains("65536"));
    }
}
