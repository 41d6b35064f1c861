//! Tether's inter-router wire protocol: a pure (no I/O) AMQP 1.0 frame
//! engine over byte buffers.
//!
//! Routers talk AMQP 1.0 to each other. The router's connection tasks feed
//! received bytes to [`FrameDecoder`] and write outgoing frames with the
//! `encode_*` functions; adaptors use [`DataTransferSlot`] and
//! [`data_section_body`] to move stream bytes in and out of transfers
//! without copying.
//!
//! Performatives other than `transfer` are the `fe2o3-amqp-types` structs,
//! encoded and decoded with `serde_amqp` (re-exported as [`types`] so
//! callers need no direct dependency). `transfer`, the only per-message
//! performative, has a hand-written fast path ([`TransferHeader`]) that is
//! an order of magnitude faster and keeps tags, state and payload as
//! zero-copy [`bytes::Bytes`] slices of the receive buffer.
//!
//! SASL (part 5.3) frames, which a client may exchange before the AMQP
//! connection, have their own [`decode_sasl_frame`]/[`encode_sasl_frame`].
//!
//! All decoding treats its input as hostile: no panics, no allocation or
//! recursion sized by the input beyond the frame itself, and every error
//! maps to the AMQP condition to close the connection with.

mod data;
mod error;
mod frame;
mod message;
mod sasl;
mod transfer;
mod wire;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_support;

pub use fe2o3_amqp_types as types;
pub use fe2o3_amqp_types::performatives::Performative;

pub use data::{data_section_body, DataTransferSlot, DATA_TRANSFER_OVERHEAD};
pub use error::{
    DecodeError, EncodeError, CONDITION_DECODE_ERROR, CONDITION_FRAME_SIZE_TOO_SMALL,
    CONDITION_FRAMING_ERROR, CONDITION_INTERNAL_ERROR,
};
pub use frame::{
    decode_protocol_header, encode_close_with_error, encode_heartbeat, encode_performative,
    encode_performative_limited, Frame, FrameBody, FrameDecoder, AMQP_PROTOCOL_HEADER,
    FRAME_HEADER_LEN, MAX_CLOSE_DESCRIPTION, MIN_MAX_FRAME_SIZE,
};
pub use message::{message_to, MessageToError};
pub use sasl::{
    decode_sasl_frame, encode_sasl_frame, SaslFrame, FRAME_TYPE_SASL, SASL_PROTOCOL_HEADER,
};
pub use transfer::{
    encode_transfer, encode_transfer_header, transfer_frame_overhead, TransferHeader,
};
