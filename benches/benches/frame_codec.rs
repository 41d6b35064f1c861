//! Criterion micro-benchmarks of the `tether-protocol` frame engine: the
//! per-message paths (transfer encode/decode, the data-transfer slot) and
//! the most frequent non-transfer performative (flow). serde_amqp's own
//! Transfer decode is measured alongside as the baseline the hand-written
//! fast path replaces.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tether_protocol::types::performatives::{Flow, Transfer};
use tether_protocol::{
    data_section_body, encode_performative, encode_transfer, DataTransferSlot, Frame, FrameBody,
    FrameDecoder, Performative, TransferHeader,
};

/// Frames per receive buffer in the decode benchmarks.
const FRAMES_PER_BUFFER: u64 = 256;

/// Measures decoding `frame` the way a connection does: many frames back to
/// back in one receive buffer, split off one at a time. Building the buffer
/// is not timed; dropping the decoded frames is.
fn decode_stream(frame: &[u8]) -> impl FnMut(u64) -> Duration + '_ {
    move |iters| {
        let dec = FrameDecoder::new(u32::MAX);
        let mut total = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(FRAMES_PER_BUFFER);
            left -= n;
            let mut buf = BytesMut::with_capacity(frame.len() * n as usize);
            for _ in 0..n {
                buf.extend_from_slice(frame);
            }
            let start = Instant::now();
            for _ in 0..n {
                let f = dec.decode(black_box(&mut buf));
                assert!(matches!(f, Ok(Some(_))), "benchmark frames decode");
                // By reference: moving a Frame into black_box would add a
                // memcpy the router does not do.
                black_box(&f);
            }
            total += start.elapsed();
        }
        total
    }
}

fn sample_transfer() -> TransferHeader {
    TransferHeader {
        handle: 3,
        delivery_id: Some(123_456),
        delivery_tag: Some(Bytes::from_static(&[0, 1, 226, 64])),
        message_format: Some(0),
        settled: Some(false),
        ..TransferHeader::default()
    }
}

fn sample_flow() -> Performative {
    Performative::Flow(Flow {
        next_incoming_id: Some(1_000),
        incoming_window: 2_048,
        next_outgoing_id: 5_000,
        outgoing_window: u32::MAX,
        handle: Some(3.into()),
        delivery_count: Some(4_900),
        link_credit: Some(250),
        available: Some(0),
        drain: false,
        echo: false,
        properties: None,
    })
}

fn transfer(c: &mut Criterion) {
    let header = sample_transfer();
    for (name, size) in [("1KiB", 1024usize), ("64KiB", 64 * 1024)] {
        let payload = vec![0xa5u8; size];
        let mut g = c.benchmark_group(format!("transfer_{name}"));
        g.throughput(Throughput::Bytes(size as u64));

        let mut out = BytesMut::with_capacity(size + 64);
        g.bench_function("encode", |b| {
            b.iter(|| {
                out.clear();
                encode_transfer(&mut out, 1, black_box(&header), black_box(&payload));
                black_box(out.len());
            })
        });

        let mut frame = BytesMut::new();
        encode_transfer(&mut frame, 1, &header, &payload);
        g.bench_function("decode", |b| b.iter_custom(decode_stream(&frame)));
        g.finish();
    }

    // The baseline: serde_amqp decoding the same transfer performative.
    let mut frame = BytesMut::new();
    encode_transfer(&mut frame, 1, &header, b"");
    let performative = frame.split_off(8).freeze();
    c.bench_function("transfer_performative_decode_serde_amqp", |b| {
        b.iter(|| {
            let t: Transfer =
                serde_amqp::from_slice(black_box(&performative[..])).expect("serde decodes");
            black_box(t)
        })
    });
}

fn data_slot(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_transfer_slot");
    let mut out = BytesMut::with_capacity(2048);
    g.bench_function("begin_finish_empty", |b| {
        b.iter(|| {
            out.clear();
            let slot = DataTransferSlot::begin(&mut out);
            slot.finish(&mut out, 1, black_box(3), black_box(42), true);
            black_box(out.len());
        })
    });
    let payload = vec![0x5au8; 1024];
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("begin_fill_finish_1KiB", |b| {
        b.iter(|| {
            out.clear();
            let slot = DataTransferSlot::begin(&mut out);
            out.extend_from_slice(black_box(&payload));
            slot.finish(&mut out, 1, black_box(3), black_box(42), true);
            black_box(out.len());
        })
    });
    out.clear();
    let slot = DataTransferSlot::begin(&mut out);
    out.extend_from_slice(&payload);
    slot.finish(&mut out, 1, 3, 42, true);
    let frame = out.clone().freeze();
    let dec = FrameDecoder::new(u32::MAX);
    g.bench_function("data_section_body", |b| {
        let mut buf = BytesMut::from(&frame[..]);
        let Ok(Some(Frame {
            body: FrameBody::Transfer { payload, .. },
            ..
        })) = dec.decode(&mut buf)
        else {
            unreachable!("slot frames decode to transfers");
        };
        b.iter(|| black_box(data_section_body(black_box(&payload))))
    });
    g.finish();
}

fn flow(c: &mut Criterion) {
    let flow = sample_flow();
    let mut g = c.benchmark_group("flow");
    let mut out = BytesMut::with_capacity(256);
    g.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encode_performative(&mut out, 1, black_box(&flow)).expect("encodes");
            black_box(out.len());
        })
    });
    let mut frame = BytesMut::new();
    encode_performative(&mut frame, 1, &flow).expect("encodes");
    g.bench_function("decode", |b| b.iter_custom(decode_stream(&frame)));
    g.finish();
}

criterion_group!(benches, transfer, data_slot, flow);
criterion_main!(benches);
