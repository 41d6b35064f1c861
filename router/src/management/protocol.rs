//! The AMQP Management request/response protocol, sans-IO: a request
//! message in, a response message out, against an [`EntityStore`].
//!
//! The wire format is the one Qpid Dispatch and skupper-router speak (and
//! their `qdstat`/`skstat`, `qdmanage`/`skmanage` tools send): the request's
//! `application_properties` carry `operation`, `type` (or `entityType` for
//! QUERY), `name`/`identity`, `offset`/`count`; the body is a map (QUERY:
//! `attributeNames`; CREATE/UPDATE: attribute values). The response copies
//! the request's `message_id` (or `correlation_id`) into `correlation_id`
//! and carries `statusCode`/`statusDescription`.

use std::collections::BTreeMap;
use std::ops::Range;

use serde_amqp::primitives::OrderedMap;
use serde_amqp::Value;
use tether_protocol::types::messaging::message::__private::Deserializable;
use tether_protocol::types::messaging::{AmqpValue, Body, Message, MessageId};
use tether_protocol::types::primitives::SimpleValue;

pub use super::encoding::Record;
use super::encoding::{self, Compound};
use super::schema::{self, EntityType, OPERATIONS_GLOBAL};

/// The type of the management node itself (`type` of node requests).
pub const NODE_TYPE: &str = "org.amqp.management";

/// An error answered to the client: a status code and a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtError {
    pub status: u16,
    pub description: String,
}

impl MgmtError {
    pub fn bad_request(d: impl Into<String>) -> MgmtError {
        MgmtError {
            status: 400,
            description: d.into(),
        }
    }
    pub fn not_found(d: impl Into<String>) -> MgmtError {
        MgmtError {
            status: 404,
            description: d.into(),
        }
    }
    pub fn forbidden(d: impl Into<String>) -> MgmtError {
        MgmtError {
            status: 403,
            description: d.into(),
        }
    }
    pub fn not_implemented(d: impl Into<String>) -> MgmtError {
        MgmtError {
            status: 501,
            description: d.into(),
        }
    }
    pub fn internal(d: impl Into<String>) -> MgmtError {
        MgmtError {
            status: 500,
            description: d.into(),
        }
    }
}

/// Attributes given to CREATE or UPDATE, by name.
pub type Attributes = BTreeMap<String, Value>;

/// What the protocol needs from the router: its entities, and changes.
pub trait EntityStore {
    /// How many entities of `ty` exist.
    fn count(&self, ty: &EntityType) -> usize;
    /// The entities of `ty` at positions `range` (a stable order, by
    /// identity), each in `ty.attributes` order.
    fn list(&self, ty: &EntityType, range: Range<usize>) -> Vec<Record>;
    /// Like [`EntityStore::list`], for a QUERY that reads only the
    /// attributes at positions `wanted`: the others may be left null.
    fn list_attributes(
        &self,
        ty: &EntityType,
        range: Range<usize>,
        wanted: &[usize],
    ) -> Vec<Record> {
        let _ = wanted;
        self.list(ty, range)
    }
    /// One entity by name or identity.
    fn read(&self, ty: &EntityType, name: &str) -> Option<Record>;
    fn create(&self, ty: &EntityType, name: &str, attrs: &Attributes) -> Result<Record, MgmtError>;
    fn update(&self, ty: &EntityType, name: &str, attrs: &Attributes) -> Result<Record, MgmtError>;
    fn delete(&self, ty: &EntityType, name: &str) -> Result<(), MgmtError>;
    /// Management nodes of every router reachable (GET-MGMT-NODES).
    fn mgmt_nodes(&self) -> Vec<String>;
}

/// A decoded management request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub operation: String,
    pub entity_type: Option<String>,
    pub name: Option<String>,
    pub identity: Option<String>,
    pub offset: Option<i64>,
    pub count: Option<i64>,
    pub body: Value,
    pub reply_to: Option<String>,
    pub correlation_id: Option<MessageId>,
}

/// A response to send back.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub description: String,
    /// The body's value, AMQP-encoded.
    pub body: Vec<u8>,
}

impl Response {
    fn ok(status: u16, body: Value) -> Response {
        let mut encoded = Vec::new();
        encoding::value(&mut encoded, &body);
        Response::ok_encoded(status, encoded)
    }

    fn ok_encoded(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            description: status_text(status).to_string(),
            body,
        }
    }

    fn error(e: MgmtError) -> Response {
        let mut body = Vec::new();
        Compound::map(&mut body).end(&mut body, 0);
        Response {
            status: e.status,
            description: e.description,
            body,
        }
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        501 => "Not Implemented",
        _ => "Internal Server Error",
    }
}

/// Why a request message could not be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

/// Decodes a request from the message's encoded sections.
pub fn decode_request(payload: &[u8]) -> Result<Request, DecodeError> {
    let msg: Deserializable<Message<Body<Value>>> =
        serde_amqp::from_slice(payload).map_err(|e| DecodeError(e.to_string()))?;
    let msg = msg.0;
    let mut req = Request::default();
    if let Some(p) = &msg.properties {
        req.reply_to = p.reply_to.clone();
        // Dispatch answers with the request's message-id, or its
        // correlation-id when there is one.
        req.correlation_id = p.correlation_id.clone().or_else(|| p.message_id.clone());
    }
    if let Some(ap) = &msg.application_properties {
        let mut ty = None;
        let mut entity_type = None;
        for (k, v) in ap.0.iter() {
            match k.as_str() {
                "operation" => req.operation = simple_string(v).unwrap_or_default(),
                "type" => ty = simple_string(v).filter(|s| !s.is_empty()),
                "entityType" => entity_type = simple_string(v).filter(|s| !s.is_empty()),
                "name" => req.name = simple_string(v),
                "identity" => req.identity = simple_string(v),
                "offset" => req.offset = simple_int(v),
                "count" => req.count = simple_int(v),
                _ => {}
            }
        }
        // Requests to the management node itself (QUERY, GET-*) carry the
        // node's type in `type` and the entity type in `entityType`.
        req.entity_type = match ty {
            Some(t) if t != NODE_TYPE => Some(t),
            _ => entity_type,
        };
    }
    req.body = match msg.body {
        Body::Value(AmqpValue(v)) => v,
        _ => Value::Null,
    };
    Ok(req)
}

fn simple_string(v: &SimpleValue) -> Option<String> {
    match v {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        SimpleValue::Null => None,
        other => simple_int(other).map(|i| i.to_string()),
    }
}

fn simple_int(v: &SimpleValue) -> Option<i64> {
    Some(match v {
        SimpleValue::Ubyte(x) => i64::from(*x),
        SimpleValue::Ushort(x) => i64::from(*x),
        SimpleValue::Uint(x) => i64::from(*x),
        SimpleValue::Ulong(x) => i64::try_from(*x).ok()?,
        SimpleValue::Byte(x) => i64::from(*x),
        SimpleValue::Short(x) => i64::from(*x),
        SimpleValue::Int(x) => i64::from(*x),
        SimpleValue::Long(x) => *x,
        SimpleValue::String(s) => s.trim().parse().ok()?,
        _ => return None,
    })
}

/// Encodes the response message (to the request's `reply_to`): a
/// properties section (`to`, `correlation_id`), application-properties
/// (`statusCode`, `statusDescription`) and the body as an amqp-value.
pub fn encode_response(req: &Request, resp: Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(resp.body.len() + 128);
    // Properties: message-id, user-id, to, subject, reply-to,
    // correlation-id; the trailing nulls are left out (1.4).
    encoding::section(&mut out, 0x73);
    let props = Compound::list(&mut out);
    encoding::null(&mut out);
    encoding::null(&mut out);
    match &req.reply_to {
        Some(to) => encoding::string(&mut out, to),
        None => encoding::null(&mut out),
    }
    let count = match &req.correlation_id {
        Some(id) => {
            encoding::null(&mut out);
            encoding::null(&mut out);
            encoding::message_id(&mut out, id);
            6
        }
        None => 3,
    };
    props.end(&mut out, count);
    encoding::section(&mut out, 0x74);
    let ap = Compound::map(&mut out);
    encoding::string(&mut out, "statusCode");
    encoding::int(&mut out, i32::from(resp.status));
    encoding::string(&mut out, "statusDescription");
    encoding::string(&mut out, &resp.description);
    ap.end(&mut out, 4);
    encoding::section(&mut out, 0x77);
    out.extend_from_slice(&resp.body);
    out
}

/// Answers one request.
pub fn handle(store: &dyn EntityStore, req: &Request) -> Response {
    match start(store, req) {
        Started::Answered(r) => r,
        Started::Query(mut q) => {
            while !q.add_rows(store, usize::MAX) {}
            q.finish()
        }
    }
}

/// A request begun by [`start`].
pub enum Started {
    /// Answered at once (every operation but a valid QUERY).
    Answered(Response),
    /// A QUERY whose rows are still to be added.
    Query(Query),
}

/// Begins answering a request: a QUERY comes back unanswered, so that its
/// rows can be built a slice at a time ([`Query::add_rows`]); everything
/// else is answered.
pub fn start(store: &dyn EntityStore, req: &Request) -> Started {
    if req.operation.eq_ignore_ascii_case("QUERY") {
        return match Query::start(store, req) {
            Ok(q) => Started::Query(q),
            Err(e) => Started::Answered(Response::error(e)),
        };
    }
    Started::Answered(match handle_inner(store, req) {
        Ok(r) => r,
        Err(e) => Response::error(e),
    })
}

/// Every operation but QUERY (see [`start`]).
fn handle_inner(store: &dyn EntityStore, req: &Request) -> Result<Response, MgmtError> {
    let op = req.operation.to_ascii_uppercase();
    match op.as_str() {
        "GET-MGMT-NODES" => Ok(Response::ok(
            200,
            Value::List(store.mgmt_nodes().into_iter().map(Value::String).collect()),
        )),
        "GET-TYPES" => Ok(Response::ok(200, get_types(req)?)),
        "GET-ATTRIBUTES" => Ok(Response::ok(200, get_attributes(req)?)),
        "GET-OPERATIONS" => Ok(Response::ok(200, get_operations(req)?)),
        "GET-ANNOTATIONS" => Ok(Response::ok(200, Value::Map(OrderedMap::new()))),
        "GET-LOG" => Err(MgmtError::not_implemented(
            "GET-LOG: this router keeps no log buffer; its log goes to stderr (RUST_LOG sets the level)",
        )),
        "READ" => {
            let (ty, name) = target(req)?;
            store
                .read(ty, &name)
                .map(|r| Response::ok_encoded(200, record_map(ty, &r)))
                .ok_or_else(|| MgmtError::not_found(format!("no {} named {name:?}", ty.short)))
        }
        "CREATE" => {
            let ty = required_type(req)?;
            allowed(ty, "CREATE")?;
            let attrs = body_attributes(&req.body)?;
            let name = req
                .name
                .clone()
                .or_else(|| attr_string(&attrs, "name"))
                .ok_or_else(|| MgmtError::bad_request("CREATE needs a name"))?;
            if store.read(ty, &name).is_some() {
                return Err(MgmtError::bad_request(format!(
                    "a {} named {name:?} already exists",
                    ty.short
                )));
            }
            let r = store.create(ty, &name, &attrs)?;
            Ok(Response::ok_encoded(201, record_map(ty, &r)))
        }
        "UPDATE" => {
            let (ty, name) = target(req)?;
            allowed(ty, "UPDATE")?;
            let attrs = body_attributes(&req.body)?;
            if store.read(ty, &name).is_none() {
                return Err(MgmtError::not_found(format!("no {} named {name:?}", ty.short)));
            }
            let r = store.update(ty, &name, &attrs)?;
            Ok(Response::ok_encoded(200, record_map(ty, &r)))
        }
        "DELETE" => {
            let (ty, name) = target(req)?;
            allowed(ty, "DELETE")?;
            if store.read(ty, &name).is_none() {
                return Err(MgmtError::not_found(format!("no {} named {name:?}", ty.short)));
            }
            store.delete(ty, &name)?;
            Ok(Response::ok(204, Value::Map(OrderedMap::new())))
        }
        "" => Err(MgmtError::bad_request("no operation in application_properties")),
        other => Err(MgmtError::not_implemented(format!(
            "unknown operation {other:?}; supported: {}",
            OPERATIONS_GLOBAL.join(", ")
        ))),
    }
}

fn required_type(req: &Request) -> Result<&'static EntityType, MgmtError> {
    let t = req
        .entity_type
        .as_deref()
        .ok_or_else(|| MgmtError::bad_request("no type in application_properties"))?;
    schema::lookup(t).ok_or_else(|| MgmtError::not_found(format!("unknown entity type {t:?}")))
}

/// The entity a READ/UPDATE/DELETE names: its type and name (or identity).
fn target(req: &Request) -> Result<(&'static EntityType, String), MgmtError> {
    let ty = required_type(req)?;
    let name = req
        .name
        .clone()
        .or_else(|| req.identity.clone())
        .ok_or_else(|| {
            MgmtError::bad_request(format!("{} needs a name or identity", req.operation))
        })?;
    Ok((ty, name))
}

fn allowed(ty: &EntityType, op: &str) -> Result<(), MgmtError> {
    if ty.operations.contains(&op) {
        Ok(())
    } else {
        Err(MgmtError::bad_request(format!(
            "{op} is not allowed on {}; allowed: {}",
            ty.short,
            ty.operations.join(", ")
        )))
    }
}

/// A QUERY being answered. Its rows can be added in slices, so that the
/// router's thread forwards traffic between them rather than waiting for
/// a whole page; the answer is the rows added by [`Query::finish`].
pub struct Query {
    ty: &'static EntityType,
    /// Per answered attribute, its position in the type (`None`: unknown,
    /// answered as null).
    index: Vec<Option<usize>>,
    /// The positions of the known attributes (the ones to build).
    wanted: Vec<usize>,
    /// Rows (entity positions) not added yet.
    remaining: Range<usize>,
    body: Vec<u8>,
    map: Compound,
    results: Compound,
    rows: usize,
}

impl Query {
    /// Checks the request and writes the answer's head: the type, the
    /// attribute names (the requester's, in order; none = all) and the
    /// rows' range (`offset`, `count`).
    fn start(store: &dyn EntityStore, req: &Request) -> Result<Query, MgmtError> {
        let ty = required_type(req)?;
        let mut names: Vec<String> = Vec::new();
        if let Value::Map(m) = &req.body {
            match m.get(&Value::String("attributeNames".into())) {
                Some(Value::List(l)) | Some(Value::Array(serde_amqp::primitives::Array(l))) => {
                    for v in l {
                        match v {
                            Value::String(s) => names.push(s.clone()),
                            Value::Symbol(s) => names.push(s.0.clone()),
                            other => {
                                return Err(MgmtError::bad_request(format!(
                                    "attributeNames must be strings, got {other:?}"
                                )))
                            }
                        }
                    }
                }
                None | Some(Value::Null) => {}
                Some(other) => {
                    return Err(MgmtError::bad_request(format!(
                        "attributeNames must be a list, got {other:?}"
                    )))
                }
            }
        }
        if names.is_empty() {
            names = ty.attributes.iter().map(|s| s.to_string()).collect();
        }
        let index: Vec<Option<usize>> = names.iter().map(|n| ty.index(n)).collect();
        let total = store.count(ty);
        let offset = usize::try_from(req.offset.unwrap_or(0).max(0)).unwrap_or(0);
        let count = match req.count {
            Some(c) if c >= 0 => usize::try_from(c).unwrap_or(usize::MAX),
            _ => usize::MAX,
        };
        let start = offset.min(total);
        let end = start.saturating_add(count).min(total);
        let wanted: Vec<usize> = index.iter().flatten().copied().collect();
        let mut body = Vec::with_capacity(1024);
        let map = Compound::map(&mut body);
        encoding::string(&mut body, "attributeNames");
        encoding::string_list(&mut body, names.iter().map(String::as_str));
        encoding::string(&mut body, "results");
        let results = Compound::list(&mut body);
        Ok(Query {
            ty,
            index,
            wanted,
            remaining: start..end,
            body,
            map,
            results,
            rows: 0,
        })
    }

    /// Adds up to `max` more rows; true once every row is in. Rows are
    /// read when added: entities that disappear meanwhile are skipped.
    pub fn add_rows(&mut self, store: &dyn EntityStore, max: usize) -> bool {
        let take = self.remaining.len().min(max);
        let range = self.remaining.start..self.remaining.start + take;
        self.remaining.start = range.end;
        let rows = store.list_attributes(self.ty, range, &self.wanted);
        let body = &mut self.body;
        body.reserve(rows.iter().map(Record::encoded_len).sum::<usize>() + 16 * rows.len());
        for r in &rows {
            let row = Compound::list(body);
            for i in &self.index {
                match i {
                    Some(i) => body.extend_from_slice(r.encoded(*i)),
                    None => encoding::null(body),
                }
            }
            row.end(body, self.index.len());
        }
        self.rows += rows.len();
        self.remaining.is_empty()
    }

    /// The answer: 200 with the rows added.
    pub fn finish(self) -> Response {
        let mut body = self.body;
        self.results.end(&mut body, self.rows);
        self.map.end(&mut body, 4);
        Response::ok_encoded(200, body)
    }
}

/// A record as a map of attribute name to value (READ, CREATE, UPDATE).
fn record_map(ty: &EntityType, r: &Record) -> Vec<u8> {
    let mut body = Vec::with_capacity(r.encoded_len() + 32 * ty.attributes.len());
    let map = Compound::map(&mut body);
    for (i, name) in ty.attributes.iter().enumerate() {
        encoding::string(&mut body, name);
        body.extend_from_slice(r.encoded(i));
    }
    map.end(&mut body, 2 * ty.attributes.len());
    body
}

fn body_attributes(body: &Value) -> Result<Attributes, MgmtError> {
    match body {
        Value::Map(m) => {
            let mut out = Attributes::new();
            for (k, v) in m.iter() {
                let k = match k {
                    Value::String(s) => s.clone(),
                    Value::Symbol(s) => s.0.clone(),
                    other => {
                        return Err(MgmtError::bad_request(format!(
                            "attribute names must be strings, got {other:?}"
                        )))
                    }
                };
                out.insert(k, v.clone());
            }
            Ok(out)
        }
        Value::Null => Ok(Attributes::new()),
        other => Err(MgmtError::bad_request(format!(
            "the body must be a map of attributes, got {other:?}"
        ))),
    }
}

/// A string attribute (strings and symbols), if present and not null.
pub fn attr_string(attrs: &Attributes, key: &str) -> Option<String> {
    match attrs.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

/// The types this agent manages (GET-TYPES: type -> the types it extends).
fn get_types(req: &Request) -> Result<Value, MgmtError> {
    let mut m = OrderedMap::new();
    for ty in types_for(req)? {
        m.insert(
            Value::String(ty.full_name()),
            Value::List(vec![Value::String(format!(
                "{}entity",
                schema::PREFIX_TETHER
            ))]),
        );
    }
    Ok(Value::Map(m))
}

fn get_attributes(req: &Request) -> Result<Value, MgmtError> {
    let mut m = OrderedMap::new();
    for ty in types_for(req)? {
        m.insert(
            Value::String(ty.full_name()),
            Value::List(
                ty.attributes
                    .iter()
                    .map(|a| Value::String(a.to_string()))
                    .collect(),
            ),
        );
    }
    Ok(Value::Map(m))
}

fn get_operations(req: &Request) -> Result<Value, MgmtError> {
    let mut m = OrderedMap::new();
    for ty in types_for(req)? {
        m.insert(
            Value::String(ty.full_name()),
            Value::List(
                ty.operations
                    .iter()
                    .map(|a| Value::String(a.to_string()))
                    .collect(),
            ),
        );
    }
    Ok(Value::Map(m))
}

/// The one type a GET-* request names, or all of them.
fn types_for(req: &Request) -> Result<Vec<&'static EntityType>, MgmtError> {
    match &req.entity_type {
        Some(_) => Ok(vec![required_type(req)?]),
        None => Ok(schema::TYPES.iter().collect()),
    }
}

#[cfg(test)]
mod tests;
