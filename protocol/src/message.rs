//! Reading the routing fields of an encoded AMQP message without decoding
//! it: the router needs the `to` of a message sent on an anonymous-relay
//! link, and nothing else, so it walks the sections (spec 3.2) with the
//! validating skipper and reads one string.

use crate::wire::{skip_value, Reader};

/// Section descriptors (smallulong form) that may precede `properties`.
const HEADER: u64 = 0x70;
const DELIVERY_ANNOTATIONS: u64 = 0x71;
const MESSAGE_ANNOTATIONS: u64 = 0x72;
const PROPERTIES: u64 = 0x73;

/// Why [`message_to`] found no address.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageToError {
    /// The bytes are not a well-formed message start.
    Malformed(&'static str),
    /// No properties section, or its `to` is null or not a string.
    NoTo,
}

impl std::fmt::Display for MessageToError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageToError::Malformed(why) => write!(f, "malformed message: {why}"),
            MessageToError::NoTo => write!(f, "message has no `to` address"),
        }
    }
}

impl std::error::Error for MessageToError {}

/// The `to` field of the message's properties section. `payload` is the
/// start of the message (at least up to the end of its properties).
pub fn message_to(payload: &[u8]) -> Result<String, MessageToError> {
    let mut r = Reader::new(payload, 0);
    loop {
        if r.len() == 0 {
            return Err(MessageToError::NoTo);
        }
        let start = r.pos;
        let descriptor = section_descriptor(&mut r).map_err(MessageToError::Malformed)?;
        match descriptor {
            HEADER | DELIVERY_ANNOTATIONS | MESSAGE_ANNOTATIONS => {
                r.pos = start;
                skip_value(&mut r, 0).map_err(MessageToError::Malformed)?;
            }
            PROPERTIES => return properties_to(&mut r, payload),
            // Properties come before the bare message body: past them,
            // there is no `to`.
            _ => return Err(MessageToError::NoTo),
        }
    }
}

/// Reads `0x00` and a ulong descriptor, returning the code.
fn section_descriptor(r: &mut Reader<'_>) -> Result<u64, &'static str> {
    if r.u8()? != 0x00 {
        return Err("expected a described section");
    }
    match r.u8()? {
        0x53 => Ok(u64::from(r.u8()?)),
        0x80 => Ok(u64::from_be_bytes(r.array::<8>()?)),
        0x44 => Ok(0),
        _ => Err("section descriptor is not a ulong"),
    }
}

/// Reads the `to` field (index 2) of a properties list.
fn properties_to(r: &mut Reader<'_>, payload: &[u8]) -> Result<String, MessageToError> {
    let m = MessageToError::Malformed;
    let code = r.u8().map_err(m)?;
    let count = match code {
        0x45 => 0,
        0xc0 => {
            let _size = r.u8().map_err(m)?;
            u32::from(r.u8().map_err(m)?)
        }
        0xd0 => {
            let _size = r.u32().map_err(m)?;
            r.u32().map_err(m)?
        }
        _ => return Err(m("properties section is not a list")),
    };
    if count < 3 {
        return Err(MessageToError::NoTo);
    }
    // message-id, user-id
    skip_value(r, 1).map_err(m)?;
    skip_value(r, 1).map_err(m)?;
    let len = match r.u8().map_err(m)? {
        0x40 => return Err(MessageToError::NoTo),
        // `to` is an address: a string in practice (str8, str32).
        0xa1 => usize::from(r.u8().map_err(m)?),
        0xb1 => r.u32().map_err(m)? as usize,
        _ => return Err(MessageToError::NoTo),
    };
    let start = r.pos;
    r.skip(len).map_err(m)?;
    let bytes = &payload[start..start + len];
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| m("`to` is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp_types::messaging::{message::__private::Serializable, Message, Properties};
    use serde_amqp::to_vec;

    fn encode(msg: Message<fe2o3_amqp_types::messaging::AmqpValue<serde_amqp::Value>>) -> Vec<u8> {
        to_vec(&Serializable(msg)).expect("encode")
    }

    #[test]
    fn reads_to_behind_header_and_annotations() {
        let mut msg = Message::builder()
            .properties(Properties {
                to: Some("orders".into()),
                message_id: Some(fe2o3_amqp_types::messaging::MessageId::Ulong(7)),
                ..Default::default()
            })
            .value(serde_amqp::Value::String("hi".into()))
            .build();
        msg.header = Some(fe2o3_amqp_types::messaging::Header {
            durable: true,
            ..Default::default()
        });
        let bytes = encode(msg);
        assert_eq!(message_to(&bytes), Ok("orders".to_string()));
    }

    #[test]
    fn no_properties_or_no_to_is_no_to() {
        let msg = Message::builder()
            .value(serde_amqp::Value::String("hi".into()))
            .build();
        assert_eq!(message_to(&encode(msg)), Err(MessageToError::NoTo));
        let msg = Message::builder()
            .properties(Properties::default())
            .value(serde_amqp::Value::Uint(1))
            .build();
        assert_eq!(message_to(&encode(msg)), Err(MessageToError::NoTo));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[0x00][..],
            &[0x00, 0x53, 0x73, 0xc0, 0xff, 0x03][..],
            &[0x00, 0x53, 0x73, 0xd0, 0, 0, 0, 9, 0, 0, 0, 3, 0x40][..],
            &[0x00, 0x53, 0x73, 0xc0, 0x10, 0x03, 0x40, 0x40, 0xa1, 0xff][..],
            &[0x01, 0x02, 0x03][..],
        ] {
            let _ = message_to(bytes);
        }
    }
}
