//! Property tests across the whole frame engine: encode/decode identities,
//! agreement with serde_amqp, robustness against arbitrary bytes, and
//! independence from how the byte stream is chunked.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;
use serde_amqp::primitives::{Array, OrderedMap, Symbol, Timestamp, Uuid};
use serde_amqp::Value;
use serde_bytes::ByteBuf;

use crate::test_support::{decode_all, expected_header, frame_bytes};
use crate::types::definitions::{
    AmqpError, ConnectionError, Error, ErrorCondition, Fields, Handle, LinkError,
    ReceiverSettleMode, Role, SenderSettleMode, SessionError,
};
use crate::types::messaging::{
    Accepted, DeliveryState, DistributionMode, Modified, Outcome, Received, Rejected, Released,
    Source, Target, TargetArchetype, TerminusDurability, TerminusExpiryPolicy,
};
use crate::types::performatives::{
    Attach, Begin, Close, Detach, Disposition, End, Flow, Open, Transfer,
};
use crate::wire::{skip_value, Reader};
use crate::*;

/* ------------------------------ generators ------------------------------ */

fn arb_symbol() -> BoxedStrategy<Symbol> {
    "[a-z][a-z0-9:.-]{0,20}".prop_map(Symbol::from).boxed()
}

/// `multiple` fields: `None` or a non-empty array (an empty array decodes
/// as `None`, per spec part 1 section 1.4).
fn arb_symbols() -> BoxedStrategy<Option<Array<Symbol>>> {
    proptest::option::of(vec(arb_symbol(), 1..4).prop_map(Array::from)).boxed()
}

fn arb_leaf_value() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u8>().prop_map(Value::Ubyte),
        any::<u16>().prop_map(Value::Ushort),
        any::<u32>().prop_map(Value::Uint),
        any::<u64>().prop_map(Value::Ulong),
        any::<i8>().prop_map(Value::Byte),
        any::<i16>().prop_map(Value::Short),
        any::<i32>().prop_map(Value::Int),
        any::<i64>().prop_map(Value::Long),
        any::<f64>().prop_map(|f| Value::Double(f.into())),
        any::<char>().prop_map(Value::Char),
        any::<i64>().prop_map(|t| Value::Timestamp(Timestamp::from_milliseconds(t))),
        any::<[u8; 16]>().prop_map(|u| Value::Uuid(Uuid::from(u))),
        vec(any::<u8>(), 0..300).prop_map(|b| Value::Binary(ByteBuf::from(b))),
        ".{0,40}".prop_map(Value::String),
        arb_symbol().prop_map(Value::Symbol),
        vec(any::<u32>(), 1..5)
            .prop_map(|v| Value::Array(v.into_iter().map(Value::Uint).collect())),
    ]
    .boxed()
}

fn arb_value() -> BoxedStrategy<Value> {
    arb_leaf_value()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::List),
                vec((arb_symbol(), inner.clone()), 0..4).prop_map(|kv| {
                    Value::Map(kv.into_iter().map(|(k, v)| (Value::Symbol(k), v)).collect())
                }),
                (any::<u64>(), inner).prop_map(|(code, value)| {
                    Value::Described(Box::new(Described {
                        descriptor: Descriptor::Code(code),
                        value,
                    }))
                }),
            ]
        })
        .boxed()
}

fn arb_fields() -> BoxedStrategy<Option<Fields>> {
    proptest::option::of(
        vec((arb_symbol(), arb_value()), 0..4)
            .prop_map(|kv| kv.into_iter().collect::<OrderedMap<_, _>>()),
    )
    .boxed()
}

fn arb_error() -> BoxedStrategy<Option<Error>> {
    let condition = prop_oneof![
        Just(ErrorCondition::AmqpError(AmqpError::DecodeError)),
        Just(ErrorCondition::AmqpError(AmqpError::NotFound)),
        Just(ErrorCondition::ConnectionError(
            ConnectionError::FramingError
        )),
        Just(ErrorCondition::SessionError(SessionError::WindowViolation)),
        Just(ErrorCondition::LinkError(LinkError::DetachForced)),
        "x-tether:[a-z]{1,10}".prop_map(|s| ErrorCondition::Custom(Symbol::from(s))),
    ];
    proptest::option::of(
        (condition, proptest::option::of(".{0,30}"), arb_fields()).prop_map(
            |(condition, description, info)| Error {
                condition,
                description,
                info: info.map(Box::new),
            },
        ),
    )
    .boxed()
}

fn arb_delivery_state() -> BoxedStrategy<DeliveryState> {
    prop_oneof![
        Just(DeliveryState::Accepted(Accepted {})),
        Just(DeliveryState::Released(Released {})),
        arb_error().prop_map(|error| DeliveryState::Rejected(Rejected { error })),
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
            arb_fields()
        )
            .prop_map(|(f, u, a)| DeliveryState::Modified(Modified {
                delivery_failed: f,
                undeliverable_here: u,
                message_annotations: a,
            })),
        (any::<u32>(), any::<u64>()).prop_map(|(n, o)| DeliveryState::Received(Received {
            section_number: n,
            section_offset: o,
        })),
    ]
    .boxed()
}

fn arb_role() -> BoxedStrategy<Role> {
    prop_oneof![Just(Role::Sender), Just(Role::Receiver)].boxed()
}

fn arb_source() -> BoxedStrategy<Source> {
    (
        proptest::option::of("[a-z/]{0,20}"),
        prop_oneof![
            Just(TerminusDurability::None),
            Just(TerminusDurability::Configuration),
            Just(TerminusDurability::UnsettledState),
        ],
        prop_oneof![
            Just(TerminusExpiryPolicy::LinkDetach),
            Just(TerminusExpiryPolicy::SessionEnd),
            Just(TerminusExpiryPolicy::Never),
        ],
        any::<u32>(),
        any::<bool>(),
        proptest::option::of(prop_oneof![
            Just(DistributionMode::Move),
            Just(DistributionMode::Copy)
        ]),
        proptest::option::of(prop_oneof![
            Just(Outcome::Accepted(Accepted {})),
            Just(Outcome::Released(Released {})),
        ]),
        arb_symbols(),
        arb_symbols(),
    )
        .prop_map(
            |(address, durable, expiry_policy, timeout, dynamic, dm, outcome, outcomes, caps)| {
                Source {
                    address,
                    durable,
                    expiry_policy,
                    timeout,
                    dynamic,
                    dynamic_node_properties: None,
                    distribution_mode: dm,
                    filter: None,
                    default_outcome: outcome,
                    outcomes,
                    capabilities: caps,
                }
            },
        )
        .boxed()
}

fn arb_target() -> BoxedStrategy<Target> {
    (
        proptest::option::of("[a-z/]{0,20}"),
        any::<u32>(),
        any::<bool>(),
        arb_symbols(),
    )
        .prop_map(|(address, timeout, dynamic, capabilities)| Target {
            address,
            timeout,
            dynamic,
            capabilities,
            ..Target::default()
        })
        .boxed()
}

fn arb_open() -> BoxedStrategy<Performative> {
    (
        ".{0,30}",
        proptest::option::of("[a-z.]{1,20}"),
        any::<u32>(),
        any::<u16>(),
        proptest::option::of(any::<u32>()),
        arb_symbols(),
        arb_symbols(),
        arb_symbols(),
        arb_fields(),
    )
        .prop_map(
            |(id, host, mfs, cmax, idle, locales, offered, desired, props)| {
                Performative::Open(Open {
                    container_id: id,
                    hostname: host,
                    max_frame_size: mfs.into(),
                    channel_max: cmax.into(),
                    idle_time_out: idle,
                    outgoing_locales: locales.clone(),
                    incoming_locales: locales,
                    offered_capabilities: offered,
                    desired_capabilities: desired,
                    properties: props,
                })
            },
        )
        .boxed()
}

fn arb_begin() -> BoxedStrategy<Performative> {
    (
        proptest::option::of(any::<u16>()),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        arb_symbols(),
        arb_fields(),
    )
        .prop_map(|(rc, next, inw, outw, hmax, caps, props)| {
            Performative::Begin(Begin {
                remote_channel: rc,
                next_outgoing_id: next,
                incoming_window: inw,
                outgoing_window: outw,
                handle_max: Handle(hmax),
                offered_capabilities: caps,
                desired_capabilities: None,
                properties: props,
            })
        })
        .boxed()
}

fn arb_attach() -> BoxedStrategy<Performative> {
    (
        (".{0,30}", any::<u32>(), arb_role()),
        prop_oneof![
            Just(SenderSettleMode::Unsettled),
            Just(SenderSettleMode::Settled),
            Just(SenderSettleMode::Mixed),
        ],
        prop_oneof![
            Just(ReceiverSettleMode::First),
            Just(ReceiverSettleMode::Second)
        ],
        proptest::option::of(arb_source()),
        proptest::option::of(arb_target()),
        proptest::option::of(
            vec(
                (
                    vec(any::<u8>(), 0..8),
                    proptest::option::of(arb_delivery_state()),
                ),
                1..3,
            )
            .prop_map(|kv| {
                kv.into_iter()
                    .map(|(k, v)| (ByteBuf::from(k), v))
                    .collect::<OrderedMap<_, _>>()
            }),
        ),
        (
            any::<bool>(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u64>()),
        ),
        arb_symbols(),
        arb_fields(),
    )
        .prop_map(
            |(
                (name, handle, role),
                snd,
                rcv,
                source,
                target,
                unsettled,
                (inc, idc, mms),
                caps,
                props,
            )| {
                Performative::Attach(Attach {
                    name,
                    handle: Handle(handle),
                    role,
                    snd_settle_mode: snd,
                    rcv_settle_mode: rcv,
                    source: source.map(Box::new),
                    target: target.map(|t| Box::new(TargetArchetype::Target(t))),
                    unsettled,
                    incomplete_unsettled: inc,
                    initial_delivery_count: idc,
                    max_message_size: mms,
                    offered_capabilities: caps.clone(),
                    desired_capabilities: caps,
                    properties: props,
                })
            },
        )
        .boxed()
}

fn arb_flow() -> BoxedStrategy<Performative> {
    (
        proptest::option::of(any::<u32>()),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        any::<bool>(),
        arb_fields(),
    )
        .prop_map(
            |(nin, inw, nout, outw, h, dc, lc, av, drain, echo, props)| {
                Performative::Flow(Flow {
                    next_incoming_id: nin,
                    incoming_window: inw,
                    next_outgoing_id: nout,
                    outgoing_window: outw,
                    handle: h.map(Handle),
                    delivery_count: dc,
                    link_credit: lc,
                    available: av,
                    drain,
                    echo,
                    properties: props,
                })
            },
        )
        .boxed()
}

fn arb_disposition() -> BoxedStrategy<Performative> {
    (
        arb_role(),
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        proptest::option::of(arb_delivery_state()),
        any::<bool>(),
    )
        .prop_map(|(role, first, last, settled, state, batchable)| {
            Performative::Disposition(Disposition {
                role,
                first,
                last,
                settled,
                state,
                batchable,
            })
        })
        .boxed()
}

fn arb_performative() -> BoxedStrategy<Performative> {
    prop_oneof![
        arb_open(),
        arb_begin(),
        arb_attach(),
        arb_flow(),
        arb_disposition(),
        (any::<u32>(), any::<bool>(), arb_error()).prop_map(|(h, closed, error)| {
            Performative::Detach(Detach {
                handle: Handle(h),
                closed,
                error,
            })
        }),
        arb_error().prop_map(|error| Performative::End(End { error })),
        arb_error().prop_map(|error| Performative::Close(Close { error })),
    ]
    .boxed()
}

fn encoded_state(s: &DeliveryState) -> Bytes {
    Bytes::from(serde_amqp::to_vec(s).expect("state encodes"))
}

fn arb_transfer_header() -> BoxedStrategy<TransferHeader> {
    (
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(prop_oneof![
            vec(any::<u8>(), 0..33),
            vec(any::<u8>(), 250..300)
        ]),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<bool>()),
        any::<bool>(),
        proptest::option::of(0u8..=1),
        proptest::option::of(arb_delivery_state()),
        any::<[bool; 3]>(),
    )
        .prop_map(
            |(handle, id, tag, fmt, settled, more, rsm, state, [resume, aborted, batchable])| {
                TransferHeader {
                    handle,
                    delivery_id: id,
                    delivery_tag: tag.map(Bytes::from),
                    message_format: fmt,
                    settled,
                    more,
                    rcv_settle_mode: rsm,
                    state: state.as_ref().map(encoded_state),
                    resume,
                    aborted,
                    batchable,
                }
            },
        )
        .boxed()
}

fn arb_serde_transfer() -> BoxedStrategy<Transfer> {
    (
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(vec(any::<u8>(), 0..40)),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<bool>()),
        any::<bool>(),
        proptest::option::of(prop_oneof![
            Just(ReceiverSettleMode::First),
            Just(ReceiverSettleMode::Second)
        ]),
        proptest::option::of(arb_delivery_state()),
        any::<[bool; 3]>(),
    )
        .prop_map(
            |(handle, id, tag, fmt, settled, more, rsm, state, [resume, aborted, batchable])| {
                Transfer {
                    handle: Handle(handle),
                    delivery_id: id,
                    delivery_tag: tag.map(ByteBuf::from),
                    message_format: fmt,
                    settled,
                    more,
                    rcv_settle_mode: rsm,
                    state,
                    resume,
                    aborted,
                    batchable,
                }
            },
        )
        .boxed()
}

/// One frame to put on a test stream.
#[derive(Debug, Clone)]
enum Item {
    Heartbeat,
    Performative(u16, Performative),
    Transfer(u16, TransferHeader, Vec<u8>),
    Slot(u16, u32, u32, bool, Vec<u8>),
}

fn arb_item() -> BoxedStrategy<Item> {
    prop_oneof![
        Just(Item::Heartbeat),
        (any::<u16>(), arb_performative()).prop_map(|(c, p)| Item::Performative(c, p)),
        (
            any::<u16>(),
            arb_transfer_header(),
            vec(any::<u8>(), 0..200)
        )
            .prop_map(|(c, t, p)| Item::Transfer(c, t, p)),
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            vec(any::<u8>(), 0..200)
        )
            .prop_map(|(c, h, d, s, p)| Item::Slot(c, h, d, s, p)),
    ]
    .boxed()
}

fn encode_item(out: &mut BytesMut, item: &Item) {
    match item {
        Item::Heartbeat => encode_heartbeat(out),
        Item::Performative(c, p) => encode_performative(out, *c, p).expect("encodes"),
        Item::Transfer(c, t, p) => encode_transfer(out, *c, t, p),
        Item::Slot(c, h, d, s, p) => {
            let slot = DataTransferSlot::begin(out);
            out.extend_from_slice(p);
            slot.finish(out, *c, *h, *d, *s);
        }
    }
}

/// Feeds `input` to a fresh decoder in the given chunks, collecting frames
/// and the first error.
fn decode_chunked(
    input: &[u8],
    chunks: impl IntoIterator<Item = usize>,
) -> (Vec<Frame>, Option<DecodeError>) {
    let dec = FrameDecoder::new(u32::MAX);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = input;
    for n in chunks {
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        match decode_all(&dec, &mut buf) {
            Ok(f) => frames.extend(f),
            Err(e) => return (frames, Some(e)),
        }
    }
    (frames, None)
}

/// Runs the decoder over arbitrary input the way a connection would (and
/// the other entry points too), asserting only that nothing panics and
/// that serde_amqp did not panic under the hood either.
fn hammer(input: &[u8], max: u32) {
    let dec = FrameDecoder::new(max);
    let mut buf = BytesMut::from(input);
    let mut consumed = 0usize;
    loop {
        let before = buf.len();
        match dec.decode(&mut buf) {
            Ok(Some(Frame {
                body: FrameBody::Transfer { payload, .. },
                ..
            })) => {
                let _ = data_section_body(&payload);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(DecodeError::MalformedPerformative(m)) => {
                assert!(
                    !m.contains("panicked"),
                    "serde_amqp panicked on {input:02x?}"
                );
                break;
            }
            Err(_) => break,
        }
        consumed += before - buf.len();
        assert!(buf.len() < before, "progress");
    }
    assert!(consumed <= input.len());
    let _ = decode_protocol_header(&mut BytesMut::from(input));
    let _ = data_section_body(&Bytes::copy_from_slice(input));
}

/* ------------------------------ properties ------------------------------ */

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn transfer_round_trip(
        channel in any::<u16>(),
        t in arb_transfer_header(),
        payload in vec(any::<u8>(), 0..2048),
    ) {
        let mut out = BytesMut::new();
        encode_transfer(&mut out, channel, &t, &payload);
        prop_assert_eq!(out.len(), transfer_frame_overhead(&t) + payload.len());
        let f = FrameDecoder::new(u32::MAX).decode(&mut out)?;
        prop_assert!(out.is_empty());
        prop_assert_eq!(
            f,
            Some(Frame {
                channel,
                body: FrameBody::Transfer { transfer: t, payload: Bytes::from(payload) },
            })
        );
    }

    #[test]
    fn fast_path_agrees_with_serde(
        t in arb_serde_transfer(),
        payload in vec(any::<u8>(), 0..64),
    ) {
        let mut body = serde_amqp::to_vec(&t).expect("serde encodes");
        body.extend_from_slice(&payload);
        let mut buf = BytesMut::from(&frame_bytes(1, &body)[..]);
        let f = FrameDecoder::new(u32::MAX).decode(&mut buf)?;
        prop_assert_eq!(
            f,
            Some(Frame {
                channel: 1,
                body: FrameBody::Transfer {
                    transfer: expected_header(&t),
                    payload: Bytes::from(payload),
                },
            })
        );
        // And serde_amqp reads our encoding of the same transfer back.
        let mut ours = BytesMut::new();
        encode_transfer(&mut ours, 0, &expected_header(&t), b"");
        let back: Transfer = serde_amqp::from_slice(&ours[8..]).expect("serde decodes ours");
        prop_assert_eq!(back, t);
    }

    #[test]
    fn data_slot_round_trip(
        prefix in vec(any::<u8>(), 0..16),
        channel in any::<u16>(),
        handle in any::<u32>(),
        delivery_id in any::<u32>(),
        settled in any::<bool>(),
        payload in vec(any::<u8>(), 0..4096),
    ) {
        let mut out = BytesMut::from(&prefix[..]);
        let slot = DataTransferSlot::begin(&mut out);
        out.extend_from_slice(&payload);
        prop_assert_eq!(slot.payload_len(&out), payload.len());
        slot.finish(&mut out, channel, handle, delivery_id, settled);
        prop_assert_eq!(out.len(), prefix.len() + DATA_TRANSFER_OVERHEAD + payload.len());
        let mut frame = out.split_off(prefix.len());
        prop_assert_eq!(&out[..], &prefix[..]);
        let f = FrameDecoder::new(u32::MAX).decode(&mut frame)?;
        prop_assert!(frame.is_empty());
        let Some(Frame { channel: ch, body: FrameBody::Transfer { transfer, payload: p } }) = f
        else {
            return Err(TestCaseError::fail("not a transfer"));
        };
        prop_assert_eq!(ch, channel);
        prop_assert_eq!(
            transfer,
            TransferHeader {
                handle,
                delivery_id: Some(delivery_id),
                delivery_tag: Some(Bytes::copy_from_slice(&delivery_id.to_be_bytes())),
                message_format: Some(0),
                settled: Some(settled),
                ..TransferHeader::default()
            }
        );
        prop_assert_eq!(&data_section_body(&p)?[..], &payload[..]);
    }

    #[test]
    fn performative_round_trip(channel in any::<u16>(), p in arb_performative()) {
        let mut out = BytesMut::new();
        encode_performative(&mut out, channel, &p)?;
        let f = FrameDecoder::new(u32::MAX).decode(&mut out)?;
        prop_assert!(out.is_empty());
        prop_assert_eq!(f, Some(Frame { channel, body: FrameBody::Performative(p) }));
    }

    #[test]
    fn skip_value_spans_exactly_one_serde_value(v in arb_value(), tail in vec(any::<u8>(), 0..4)) {
        let mut bytes = serde_amqp::to_vec(&v).expect("value encodes");
        let len = bytes.len();
        bytes.extend_from_slice(&tail);
        let mut r = Reader::new(&bytes, 0);
        prop_assert_eq!(skip_value(&mut r, 0), Ok(()));
        prop_assert_eq!(r.pos, len);
    }

    #[test]
    fn data_section_body_reads_serde_data_sections(body in vec(any::<u8>(), 0..600)) {
        let section = crate::types::messaging::Data(ByteBuf::from(body.clone()));
        let bytes = Bytes::from(serde_amqp::to_vec(&section).expect("encodes"));
        prop_assert_eq!(&data_section_body(&bytes)?[..], &body[..]);
    }

    #[test]
    fn stream_split_at_every_point(items in vec(arb_item(), 1..6)) {
        let mut stream = BytesMut::new();
        for item in &items {
            encode_item(&mut stream, item);
        }
        let whole = decode_chunked(&stream, [stream.len()]);
        prop_assert!(whole.1.is_none(), "{:?}", whole.1);
        prop_assert_eq!(whole.0.len(), items.len());
        for split in 0..=stream.len() {
            let (frames, err) = decode_chunked(&stream, [split, stream.len() - split]);
            prop_assert!(err.is_none());
            prop_assert_eq!(&frames, &whole.0, "split at {}", split);
        }
        let (frames, err) = decode_chunked(&stream, std::iter::repeat_n(1, stream.len()));
        prop_assert!(err.is_none());
        prop_assert_eq!(&frames, &whole.0, "byte by byte");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(input in vec(any::<u8>(), 0..512), max in 0u32..2048) {
        hammer(&input, max);
    }

    /// Random bodies behind a valid header reach the performative decoders.
    #[test]
    fn arbitrary_bodies_never_panic(
        prefix in prop_oneof![
            Just(vec![]),
            Just(vec![0x00, 0x53, 0x14]),
            Just(vec![0x00, 0x53, 0x14, 0xc0]),
            Just(vec![0x00, 0x53, 0x10]),
            Just(vec![0x00, 0x53, 0x12, 0xc0]),
            Just(vec![0x00, 0x53, 0x13]),
            Just(vec![0x00, 0x53, 0x15, 0xc0]),
            Just(vec![0x00, 0x53, 0x18, 0xc0]),
        ],
        body in vec(any::<u8>(), 0..256),
    ) {
        let mut b = prefix;
        b.extend_from_slice(&body);
        hammer(&frame_bytes(0, &b), u32::MAX);
    }

    /// Valid frames with a few bytes corrupted explore the space near
    /// well-formed input, where parsers tend to break.
    #[test]
    fn corrupted_frames_never_panic(
        item in arb_item(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut out = BytesMut::new();
        encode_item(&mut out, &item);
        for (i, b) in flips {
            // Keep the header intact so the body gets parsed.
            if out.len() > 8 {
                let at = 8 + i.index(out.len() - 8);
                out[at] = b;
            }
        }
        hammer(&out, u32::MAX);
    }
}

/* --------------------------------- SASL --------------------------------- */

fn arb_binary() -> BoxedStrategy<crate::types::primitives::Binary> {
    vec(any::<u8>(), 0..200)
        .prop_map(crate::types::primitives::Binary::from)
        .boxed()
}

fn arb_sasl_frame() -> BoxedStrategy<SaslFrame> {
    use crate::types::sasl::{
        SaslChallenge, SaslCode, SaslInit, SaslMechanisms, SaslOutcome, SaslResponse,
    };
    prop_oneof![
        vec(arb_symbol(), 1..4).prop_map(|m| SaslFrame::Mechanisms(SaslMechanisms {
            sasl_server_mechanisms: Array::from(m),
        })),
        (
            arb_symbol(),
            proptest::option::of(arb_binary()),
            proptest::option::of("[a-z.]{0,30}")
        )
            .prop_map(|(mechanism, initial_response, hostname)| {
                SaslFrame::Init(SaslInit {
                    mechanism,
                    initial_response,
                    hostname,
                })
            }),
        arb_binary().prop_map(|challenge| SaslFrame::Challenge(SaslChallenge { challenge })),
        arb_binary().prop_map(|response| SaslFrame::Response(SaslResponse { response })),
        (
            prop_oneof![
                Just(SaslCode::Ok),
                Just(SaslCode::Auth),
                Just(SaslCode::Sys),
                Just(SaslCode::SysPerm),
                Just(SaslCode::SysTemp),
            ],
            proptest::option::of(arb_binary())
        )
            .prop_map(|(code, additional_data)| SaslFrame::Outcome(SaslOutcome {
                code,
                additional_data,
            })),
    ]
    .boxed()
}

/// Feeds arbitrary bytes to the SASL decoder the way the client-connection
/// engine does: it must never panic, and serde_amqp must not have panicked
/// under the hood.
fn hammer_sasl(input: &[u8], max: u32) {
    let mut buf = BytesMut::from(input);
    loop {
        let before = buf.len();
        match decode_sasl_frame(&mut buf, max) {
            Ok(Some(_)) => assert!(buf.len() < before, "progress"),
            Ok(None) => break,
            Err(DecodeError::MalformedSasl(m)) => {
                assert!(
                    !m.contains("panicked"),
                    "serde_amqp panicked on {input:02x?}"
                );
                // The bad frame was consumed; the caller would close here,
                // but keep going to exercise what follows.
                if buf.len() == before {
                    break;
                }
            }
            Err(_) => break,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn sasl_round_trip(frame in arb_sasl_frame(), split in any::<prop::sample::Index>()) {
        let mut out = BytesMut::new();
        encode_sasl_frame(&mut out, &frame).expect("encodes");
        // Any prefix is incomplete, the whole frame decodes to the same value.
        let cut = split.index(out.len());
        let mut part = BytesMut::from(&out[..cut]);
        prop_assert!(decode_sasl_frame(&mut part, u32::MAX)?.is_none());
        let back = decode_sasl_frame(&mut out, u32::MAX)?.expect("whole frame");
        prop_assert!(out.is_empty());
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        encode_sasl_frame(&mut a, &frame).expect("encodes");
        encode_sasl_frame(&mut b, &back).expect("encodes");
        prop_assert_eq!(a, b);
    }

    #[test]
    fn sasl_garbage_never_panics(input in vec(any::<u8>(), 0..600), max in 0u32..2048) {
        hammer_sasl(&input, max);
    }

    /// Random bodies behind a valid SASL frame header reach serde_amqp.
    #[test]
    fn sasl_bodies_never_panic(
        prefix in prop_oneof![
            Just(vec![]),
            Just(vec![0x00, 0x53, 0x40]),
            Just(vec![0x00, 0x53, 0x41, 0xc0]),
            Just(vec![0x00, 0x53, 0x43]),
            Just(vec![0x00, 0x53, 0x44, 0xc0]),
        ],
        body in vec(any::<u8>(), 0..256),
    ) {
        let mut b = prefix;
        b.extend_from_slice(&body);
        let mut frame = frame_bytes(0, &b);
        frame[5] = FRAME_TYPE_SASL;
        hammer_sasl(&frame, u32::MAX);
    }

    /// Valid SASL frames with bytes corrupted.
    #[test]
    fn corrupted_sasl_frames_never_panic(
        frame in arb_sasl_frame(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut out = BytesMut::new();
        encode_sasl_frame(&mut out, &frame).expect("encodes");
        for (i, b) in flips {
            if out.len() > 8 {
                let at = 8 + i.index(out.len() - 8);
                out[at] = b;
            }
        }
        hammer_sasl(&out, u32::MAX);
    }
}
