//! Protocol tests against an in-memory store: the wire format (requests
//! encoded as real AMQP messages), status codes, QUERY ordering and paging.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde_amqp::primitives::OrderedMap;
use serde_amqp::Value;
use tether_protocol::types::messaging::message::__private::{Deserializable, Serializable};
use tether_protocol::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use tether_protocol::types::primitives::SimpleValue;

use super::*;
use crate::management::schema::{self, Kind};

/// tcpListeners by name (each record: identity, name, type, host, port,
/// address, ...), and nothing else.
#[derive(Default)]
struct FakeStore {
    listeners: RefCell<BTreeMap<String, Record>>,
}

impl FakeStore {
    fn record(name: &str, port: &str) -> Record {
        let ty = schema::of(Kind::TcpListener);
        let mut r = vec![Value::Null; ty.attributes.len()];
        r[0] = Value::String(name.into());
        r[1] = Value::String(name.into());
        r[2] = Value::String(ty.full_name());
        r[ty.index("port").unwrap()] = Value::String(port.into());
        r[ty.index("address").unwrap()] = Value::String("svc".into());
        Record::from_values(&r)
    }

    fn with(n: usize) -> FakeStore {
        let s = FakeStore::default();
        for i in 0..n {
            let name = format!("l{i:05}");
            s.listeners.borrow_mut().insert(
                name.clone(),
                FakeStore::record(&name, &(1000 + i).to_string()),
            );
        }
        s
    }
}

impl EntityStore for FakeStore {
    fn count(&self, ty: &EntityType) -> usize {
        match ty.kind {
            Kind::TcpListener => self.listeners.borrow().len(),
            _ => 0,
        }
    }
    fn list(&self, ty: &EntityType, range: Range<usize>) -> Vec<Record> {
        match ty.kind {
            Kind::TcpListener => self
                .listeners
                .borrow()
                .values()
                .skip(range.start)
                .take(range.len())
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }
    fn read(&self, ty: &EntityType, name: &str) -> Option<Record> {
        match ty.kind {
            Kind::TcpListener => self.listeners.borrow().get(name).cloned(),
            _ => None,
        }
    }
    fn create(&self, _: &EntityType, name: &str, attrs: &Attributes) -> Result<Record, MgmtError> {
        let port = match attrs.get("port") {
            Some(Value::String(p)) => p.clone(),
            Some(Value::Long(p)) => p.to_string(),
            _ => {
                return Err(MgmtError::bad_request(
                    "tcpListener: missing attribute \"port\"",
                ))
            }
        };
        let r = FakeStore::record(name, &port);
        self.listeners.borrow_mut().insert(name.into(), r.clone());
        Ok(r)
    }
    fn update(&self, _: &EntityType, name: &str, _: &Attributes) -> Result<Record, MgmtError> {
        self.listeners
            .borrow()
            .get(name)
            .cloned()
            .ok_or_else(|| MgmtError::not_found("gone"))
    }
    fn delete(&self, _: &EntityType, name: &str) -> Result<(), MgmtError> {
        self.listeners.borrow_mut().remove(name);
        Ok(())
    }
    fn mgmt_nodes(&self) -> Vec<String> {
        vec!["amqp:/_topo/0/a/$management".into()]
    }
}

/// Encodes a request as a client would: application properties and an
/// amqp-value body.
fn request_bytes(props: &[(&str, SimpleValue)], body: Value) -> Vec<u8> {
    let mut ap = OrderedMap::new();
    for (k, v) in props {
        ap.insert(k.to_string(), v.clone());
    }
    let msg = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(Properties {
            message_id: Some(MessageId::Ulong(42)),
            reply_to: Some("reply-here".into()),
            ..Properties::default()
        }),
        application_properties: Some(ApplicationProperties(ap)),
        body: Body::Value(AmqpValue(body)),
        footer: None,
    };
    serde_amqp::to_vec(&Serializable(msg)).unwrap()
}

fn s(v: &str) -> SimpleValue {
    SimpleValue::String(v.into())
}

fn query_body(names: &[&str]) -> Value {
    let mut m = OrderedMap::new();
    m.insert(
        Value::String("attributeNames".into()),
        Value::List(names.iter().map(|n| Value::String(n.to_string())).collect()),
    );
    Value::Map(m)
}

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    match v {
        Value::Map(m) => m.get(&Value::String(key.into())).expect(key),
        other => panic!("not a map: {other:?}"),
    }
}

/// Decodes, handles, encodes and decodes the answer like a client.
fn round_trip(store: &FakeStore, bytes: &[u8]) -> (i32, String, Value, Option<MessageId>) {
    let req = decode_request(bytes).expect("decodes");
    let resp = handle(store, &req);
    let out = encode_response(&req, resp);
    let msg: Deserializable<Message<Body<Value>>> = serde_amqp::from_slice(&out).unwrap();
    let msg = msg.0;
    let props = msg.properties.unwrap();
    assert_eq!(props.to.as_deref(), Some("reply-here"));
    let ap = msg.application_properties.unwrap();
    let code = match ap.0.get("statusCode") {
        Some(SimpleValue::Int(c)) => *c,
        other => panic!("statusCode {other:?}"),
    };
    let desc = match ap.0.get("statusDescription") {
        Some(SimpleValue::String(d)) => d.clone(),
        other => panic!("statusDescription {other:?}"),
    };
    let body = match msg.body {
        Body::Value(AmqpValue(v)) => v,
        other => panic!("body {other:?}"),
    };
    (code, desc, body, props.correlation_id)
}

#[test]
fn query_returns_requested_attributes_in_order_with_null_for_unknown_ones() {
    let store = FakeStore::with(3);
    let bytes = request_bytes(
        &[
            ("operation", s("QUERY")),
            ("type", s(NODE_TYPE)),
            ("entityType", s("io.skupper.router.tcpListener")),
        ],
        query_body(&["port", "name", "noSuchAttribute"]),
    );
    let (code, _, body, corr) = round_trip(&store, &bytes);
    assert_eq!(code, 200);
    assert_eq!(
        corr,
        Some(MessageId::Ulong(42)),
        "message-id becomes correlation-id"
    );
    assert_eq!(
        get(&body, "attributeNames"),
        &Value::List(vec![
            Value::String("port".into()),
            Value::String("name".into()),
            Value::String("noSuchAttribute".into())
        ])
    );
    let Value::List(rows) = get(&body, "results") else {
        panic!()
    };
    assert_eq!(rows.len(), 3);
    assert_eq!(
        rows[1],
        Value::List(vec![
            Value::String("1001".into()),
            Value::String("l00001".into()),
            Value::Null
        ])
    );
}

#[test]
fn query_without_attribute_names_returns_every_attribute() {
    let store = FakeStore::with(1);
    let bytes = request_bytes(
        &[("operation", s("QUERY")), ("entityType", s("tcpListener"))],
        Value::Map(OrderedMap::new()),
    );
    let (code, _, body, _) = round_trip(&store, &bytes);
    assert_eq!(code, 200);
    let Value::List(names) = get(&body, "attributeNames") else {
        panic!()
    };
    assert_eq!(names.len(), schema::of(Kind::TcpListener).attributes.len());
}

#[test]
fn query_pages_with_offset_and_count() {
    let store = FakeStore::with(1234);
    let mut seen = Vec::new();
    let mut offset = 0;
    for _ in 0..10 {
        let bytes = request_bytes(
            &[
                ("operation", s("QUERY")),
                ("entityType", s("io.tether.router.tcpListener")),
                ("offset", SimpleValue::Int(offset)),
                ("count", SimpleValue::Int(500)),
            ],
            query_body(&["name"]),
        );
        let (code, _, body, _) = round_trip(&store, &bytes);
        assert_eq!(code, 200);
        let Value::List(rows) = get(&body, "results").clone() else {
            panic!()
        };
        let n = rows.len();
        seen.extend(rows);
        if n < 500 {
            break;
        }
        offset += 500;
    }
    assert_eq!(seen.len(), 1234);
    assert_eq!(
        seen[1233],
        Value::List(vec![Value::String("l01233".into())])
    );
    // Past the end: an empty page, not an error.
    let bytes = request_bytes(
        &[
            ("operation", s("QUERY")),
            ("entityType", s("tcpListener")),
            ("offset", SimpleValue::Int(5000)),
        ],
        query_body(&["name"]),
    );
    let (code, _, body, _) = round_trip(&store, &bytes);
    assert_eq!(code, 200);
    assert_eq!(get(&body, "results"), &Value::List(vec![]));
}

#[test]
fn a_query_built_in_slices_answers_like_one_built_at_once() {
    let store = FakeStore::with(57);
    let bytes = request_bytes(
        &[
            ("operation", s("query")),
            ("entityType", s("tcpListener")),
            ("offset", SimpleValue::Int(5)),
            ("count", SimpleValue::Int(40)),
        ],
        query_body(&["port", "nope", "name"]),
    );
    let req = decode_request(&bytes).expect("decodes");
    let whole = handle(&store, &req);
    let Started::Query(mut q) = start(&store, &req) else {
        panic!("a QUERY starts unanswered");
    };
    let mut slices = 0;
    while !q.add_rows(&store, 3) {
        slices += 1;
        assert!(slices < 100, "a bounded number of slices");
    }
    let sliced = q.finish();
    assert_eq!(slices, 13, "40 rows, 3 at a time");
    assert_eq!(sliced.status, 200);
    assert_eq!(sliced.body, whole.body);
    // An entity removed between slices is left out, and the answer stays
    // well-formed.
    let Started::Query(mut q) = start(&store, &req) else {
        panic!("a QUERY starts unanswered");
    };
    assert!(!q.add_rows(&store, 10));
    store.listeners.borrow_mut().remove("l00020");
    while !q.add_rows(&store, 10) {}
    let out = encode_response(&req, q.finish());
    let msg: Deserializable<Message<Body<Value>>> = serde_amqp::from_slice(&out).unwrap();
    let Body::Value(AmqpValue(body)) = msg.0.body else {
        panic!("an amqp-value body");
    };
    let Value::List(rows) = get(&body, "results").clone() else {
        panic!("results is a list")
    };
    assert_eq!(rows.len(), 40);
    assert!(!rows.contains(&Value::List(vec![
        Value::String("1020".into()),
        Value::Null,
        Value::String("l00020".into())
    ])));
    // Errors are answered at once.
    let bad = decode_request(&request_bytes(
        &[("operation", s("QUERY")), ("entityType", s("nope"))],
        query_body(&[]),
    ))
    .expect("decodes");
    assert!(matches!(start(&store, &bad), Started::Answered(r) if r.status == 404));
}

#[test]
fn create_read_delete_status_codes() {
    let store = FakeStore::default();
    let mut attrs = OrderedMap::new();
    attrs.insert(Value::String("port".into()), Value::String("7000".into()));
    attrs.insert(Value::String("address".into()), Value::String("svc".into()));
    let create = request_bytes(
        &[
            ("operation", s("CREATE")),
            ("type", s("org.apache.qpid.dispatch.tcpListener")),
            ("name", s("web")),
        ],
        Value::Map(attrs.clone()),
    );
    let (code, _, body, _) = round_trip(&store, &create);
    assert_eq!(code, 201);
    assert_eq!(get(&body, "name"), &Value::String("web".into()));
    // A second CREATE of the same name is refused and changes nothing.
    let (code, desc, _, _) = round_trip(&store, &create);
    assert_eq!(code, 400);
    assert!(desc.contains("already exists"), "{desc}");

    let read = request_bytes(
        &[
            ("operation", s("READ")),
            ("type", s("io.tether.router.tcpListener")),
            ("identity", s("web")),
        ],
        Value::Null,
    );
    let (code, _, body, _) = round_trip(&store, &read);
    assert_eq!(code, 200);
    assert_eq!(get(&body, "port"), &Value::String("7000".into()));

    let delete = request_bytes(
        &[
            ("operation", s("DELETE")),
            ("type", s("io.tether.router.tcpListener")),
            ("name", s("web")),
        ],
        Value::Null,
    );
    let (code, _, body, _) = round_trip(&store, &delete);
    assert_eq!(code, 204);
    assert_eq!(body, Value::Map(OrderedMap::new()));
    let (code, desc, _, _) = round_trip(&store, &delete);
    assert_eq!(code, 404);
    assert!(desc.contains("web"), "{desc}");
}

#[test]
fn errors_have_precise_codes_and_descriptions() {
    let store = FakeStore::default();
    type Case<'a> = (Vec<(&'a str, SimpleValue)>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("operation", s("QUERY")),
                ("entityType", s("io.tether.router.nope")),
            ],
            404,
            "unknown entity type",
        ),
        (vec![("type", s("tcpListener"))], 400, "no operation"),
        (
            vec![("operation", s("FROB")), ("type", s("tcpListener"))],
            501,
            "unknown operation",
        ),
        (
            vec![("operation", s("READ")), ("type", s("tcpListener"))],
            400,
            "needs a name",
        ),
        (
            vec![
                ("operation", s("DELETE")),
                ("type", s("router")),
                ("name", s("x")),
            ],
            400,
            "not allowed",
        ),
        (
            vec![
                ("operation", s("CREATE")),
                ("type", s("tcpListener")),
                ("name", s("x")),
            ],
            400,
            "missing attribute \"port\"",
        ),
        (
            vec![
                ("operation", s("CREATE")),
                ("type", s("connection")),
                ("name", s("x")),
            ],
            400,
            "not allowed",
        ),
    ];
    for (props, want, text) in cases {
        let (code, desc, _, _) = round_trip(&store, &request_bytes(&props, Value::Null));
        assert_eq!(code, want, "{props:?}: {desc}");
        assert!(desc.contains(text), "{props:?}: {desc:?} lacks {text:?}");
    }
    assert!(
        store.listeners.borrow().is_empty(),
        "a failed CREATE changes nothing"
    );
}

#[test]
fn get_operations_types_attributes_and_mgmt_nodes() {
    let store = FakeStore::default();
    let (code, _, body, _) = round_trip(
        &store,
        &request_bytes(
            &[
                ("operation", s("GET-OPERATIONS")),
                ("entityType", s("io.skupper.router.connector")),
            ],
            Value::Null,
        ),
    );
    assert_eq!(code, 200);
    let Value::List(ops) = get(&body, "io.tether.router.connector") else {
        panic!()
    };
    assert!(ops.contains(&Value::String("UPDATE".into())));
    let (code, _, body, _) = round_trip(
        &store,
        &request_bytes(&[("operation", s("GET-TYPES"))], Value::Null),
    );
    assert_eq!(code, 200);
    let Value::Map(m) = &body else { panic!() };
    assert_eq!(m.len(), schema::TYPES.len());
    let (code, _, body, _) = round_trip(
        &store,
        &request_bytes(
            &[
                ("operation", s("GET-ATTRIBUTES")),
                ("entityType", s("router.address")),
            ],
            Value::Null,
        ),
    );
    assert_eq!(code, 200);
    let Value::List(attrs) = get(&body, "io.tether.router.router.address") else {
        panic!()
    };
    assert!(attrs.contains(&Value::String("subscriberCount".into())));
    let (code, _, body, _) = round_trip(
        &store,
        &request_bytes(&[("operation", s("GET-MGMT-NODES"))], Value::Null),
    );
    assert_eq!(code, 200);
    assert_eq!(
        body,
        Value::List(vec![Value::String("amqp:/_topo/0/a/$management".into())])
    );
}

#[test]
fn garbage_is_a_decode_error_not_a_panic() {
    for bytes in [
        &b""[..],
        b"\x00\x53",
        b"\x00\x53\x74\xc1\xff\xff",
        b"hello world",
    ] {
        // Either it decodes into some request or it is refused: no panic.
        let _ = decode_request(bytes);
    }
}

proptest::proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let _ = decode_request(&bytes);
    }
}
