//! The `$management` node inside the router: an in-process consumer of
//! `$management` (this router only) and `_topo/0/<router-id>/$management`
//! (advertised, so any router in the network reaches it through its own).
//!
//! Requests arrive like deliveries to any consumer (through
//! [`MessageCore`]); they are answered on a local task, not inside the
//! delivery call (the messaging core is mid-borrow there), a QUERY's rows
//! a slice per turn of the router's thread, and the answer
//! enters the messaging core like a message from a client sender:
//! pre-settled, to the request's `reply_to`, routed like any message (so
//! the reply crosses the network when the requester is elsewhere).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::protocol::{self, DecodeError, Started};
use super::store::RouterStore;
use crate::core::Router;
use crate::messages::{accepted, rejected, Consumer, ConsumerLink, MessageCore, Msg, Upstream};

/// The management address every router answers locally.
pub const MANAGEMENT: &str = "$management";
/// Requests queued and not yet answered at most (the consumer's credit).
const QUEUE_LIMIT: usize = 256;
/// Reply payloads go out in frames of at most this size (inter-router
/// frames are capped at 1 MiB; a 10,000-entity answer is larger).
const REPLY_CHUNK: usize = 32 * 1024;

/// The network-wide address of `router`'s management node.
pub fn topo_address(router: &str) -> String {
    format!("_topo/0/{router}/{MANAGEMENT}")
}

/// One of the agent's two consumers (local and network address).
struct AgentLink {
    agent: Weak<Agent>,
    consumer: RefCell<Option<Rc<Consumer>>>,
    /// Frames of the request being received, by delivery.
    partial: RefCell<HashMap<u64, BytesMut>>,
    next_delivery: Cell<u64>,
}

/// A request received and waiting to be answered.
struct Pending {
    consumer: Rc<Consumer>,
    delivery: u64,
    settled: bool,
    payload: Bytes,
}

/// See the module documentation.
pub struct Agent {
    router: Weak<Router>,
    queue: RefCell<VecDeque<Pending>>,
    wake: Notify,
    links: RefCell<Vec<Rc<AgentLink>>>,
    pub answered: Cell<u64>,
}

impl Agent {
    /// Registers the management node's consumers and starts its task.
    pub fn start(router: &Rc<Router>) -> Rc<Agent> {
        let agent = Rc::new(Agent {
            router: Rc::downgrade(router),
            queue: RefCell::new(VecDeque::new()),
            wake: Notify::new(),
            links: RefCell::new(Vec::new()),
            answered: Cell::new(0),
        });
        for (i, address) in [MANAGEMENT.to_string(), topo_address(&router.id)]
            .into_iter()
            .enumerate()
        {
            let link = Rc::new(AgentLink {
                agent: Rc::downgrade(&agent),
                consumer: RefCell::new(None),
                partial: RefCell::new(HashMap::new()),
                next_delivery: Cell::new(0),
            });
            // Keys far above client consumers' (which count from 1).
            let consumer = Consumer::new(
                u64::MAX - i as u64,
                address,
                link.clone() as Rc<dyn ConsumerLink>,
            );
            *link.consumer.borrow_mut() = Some(consumer.clone());
            router.messages.add_consumer(consumer);
            agent.links.borrow_mut().push(link);
        }
        router.update_local_addresses();
        tokio::task::spawn_local(run(agent.clone()));
        agent
    }

    fn messages(&self) -> Option<(Rc<Router>, Rc<MessageCore>)> {
        let r = self.router.upgrade()?;
        let m = r.messages.clone();
        Some((r, m))
    }
}

impl ConsumerLink for AgentLink {
    fn credit(&self) -> u32 {
        match self.agent.upgrade() {
            Some(a) => QUEUE_LIMIT.saturating_sub(a.queue.borrow().len()) as u32,
            None => 0,
        }
    }

    fn send(&self, msg: &Msg, frame: &[u8], more: bool, continuing: Option<u64>) -> Option<u64> {
        let agent = self.agent.upgrade()?;
        let id = match continuing {
            Some(id) => id,
            None => {
                let id = self.next_delivery.get() + 1;
                self.next_delivery.set(id);
                id
            }
        };
        let payload = {
            let mut partial = self.partial.borrow_mut();
            if more {
                partial.entry(id).or_default().extend_from_slice(frame);
                return Some(id);
            }
            match partial.remove(&id) {
                Some(mut buf) => {
                    buf.extend_from_slice(frame);
                    buf.freeze()
                }
                None => Bytes::copy_from_slice(frame),
            }
        };
        let consumer = self.consumer.borrow().clone()?;
        agent.queue.borrow_mut().push_back(Pending {
            consumer,
            delivery: id,
            settled: msg.settled,
            payload,
        });
        agent.wake.notify_one();
        Some(id)
    }

    fn abort(&self, delivery: u64) {
        self.partial.borrow_mut().remove(&delivery);
    }

    fn drain_done(&self) {}

    fn draining(&self) -> bool {
        false
    }

    fn backlog(&self) -> usize {
        0
    }

    fn when_drained(&self, f: Box<dyn FnOnce()>) {
        f()
    }
}

/// Answers queued requests, one at a time, in arrival order.
async fn run(agent: Rc<Agent>) {
    loop {
        agent.wake.notified().await;
        // Bounded per wake-up so a flood of requests cannot starve the
        // data path; the rest wait for the next turn.
        for _ in 0..64 {
            let Some(p) = agent.queue.borrow_mut().pop_front() else {
                break;
            };
            let Some((router, messages)) = agent.messages() else {
                return;
            };
            agent.answered.set(agent.answered.get() + 1);
            answer(&router, &messages, &p, agent.answered.get()).await;
            messages.consumer_credit(&p.consumer);
        }
        if !agent.queue.borrow().is_empty() {
            agent.wake.notify_one();
            tokio::task::yield_now().await;
        }
    }
}

/// Rows of a QUERY built per turn of the router's thread (~0.1-0.2 ms
/// here), so a 500-row page (skstat's) does not hold forwarding up for a
/// millisecond. Smaller slices were measured: 20 rows cut the p99 latency
/// the data path gains under 100 requests/s of 100-row pages (+110% to
/// +34..75%), but each turn costs ~25 µs of wake-ups, which raised the
/// router's CPU per request from 0.29 to 0.42 ms and the bulk throughput
/// lost from ~3-4% to ~6-8% (benches/README.md).
const ROWS_PER_TURN: usize = 100;

async fn answer(router: &Rc<Router>, messages: &Rc<MessageCore>, p: &Pending, seq: u64) {
    let outcome = match protocol::decode_request(&p.payload) {
        Err(DecodeError(why)) => {
            tracing::debug!("management: undecodable request: {why}");
            rejected(
                "amqp:decode-error",
                &format!("not a management request: {why}"),
            )
        }
        Ok(req) => match req.reply_to.clone().filter(|r| !r.is_empty()) {
            None => rejected(
                "amqp:invalid-field",
                "management request without reply_to: nowhere to answer",
            ),
            Some(reply_to) => {
                let started = std::time::Instant::now();
                let store = RouterStore::new(router);
                let resp = match protocol::start(&store, &req) {
                    Started::Answered(r) => r,
                    Started::Query(mut q) => {
                        // The rows are read slice by slice, between turns
                        // of the data path (an entity that goes meanwhile
                        // is not in the answer, as between pages).
                        while !q.add_rows(&store, ROWS_PER_TURN) {
                            tokio::task::yield_now().await;
                        }
                        q.finish()
                    }
                };
                let status = resp.status;
                let payload = protocol::encode_response(&req, resp);
                tracing::debug!(
                    op = %req.operation,
                    status,
                    bytes = payload.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "management request answered"
                );
                send_reply(router, messages, &reply_to, seq, payload);
                accepted()
            }
        },
    };
    if !p.settled {
        messages.consumer_disposition(&p.consumer, p.delivery, Some(outcome), true);
    }
}

/// Sends a reply into the network like a pre-settled message from a
/// client sender, in frames the inter-router links can carry.
fn send_reply(
    router: &Rc<Router>,
    messages: &Rc<MessageCore>,
    to: &str,
    seq: u64,
    payload: Vec<u8>,
) {
    let address = crate::client::strip_amqp_scheme(to).to_string();
    let tag = Bytes::copy_from_slice(&seq.to_be_bytes());
    let msg = Msg::new(address.clone(), tag, true, 0, Upstream::None);
    let payload = Bytes::from(payload);
    let mut chunks = payload.chunks(REPLY_CHUNK).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let more = chunks.peek().is_some();
    MessageCore::first_frame(&msg, payload.slice_ref(first), more);
    let targets = router.message_targets_ingress(&address);
    messages.route(&msg, targets);
    while let Some(c) = chunks.next() {
        let more = chunks.peek().is_some();
        messages.frame(&msg, payload.slice_ref(c), more);
    }
}
