/*
 * Management load generator on the Proton C proactor (libqpid-proton):
 * QUERY requests to an AMQP Management node at a fixed rate, each answer
 * fully decoded and checked, as a real management client would.
 *
 *   load --connect HOST:PORT --type ENTITY_TYPE --count N --rate R
 *        --seconds S [--attr NAME]... [--address ADDR] [--timeout SECONDS]
 *
 *   cc -O2 -Wall -Wextra -o /tmp/mgmt-load benches/mgmt/load.c -lqpid-proton
 *
 * One connection (SASL ANONYMOUS), one session, a sender link to ADDR
 * (default $management) and a receiver link with a dynamic source whose
 * router-assigned address is the reply_to. Once both are attached,
 * request k (k = 0, 1, ...) is due at start + k/R, sent while the clock
 * is before start + S; at most one is outstanding, so a late answer
 * delays the next request, but due times are not shifted (it catches up).
 * The schedule runs on pn_proactor_set_timeout: one thread, no spinning.
 *
 * Each request: message-id = correlation-id = ulong k, reply-to, to =
 * ADDR; application properties operation=QUERY, type=org.amqp.management,
 * entityType, offset=0 (long), count=N (long); amqp-value body
 * {"attributeNames": [--attr...]}. It is encoded once at start-up with
 * both ids as 8-byte ulongs (0x80), and only those 16 bytes are patched
 * per request. Sent unsettled, settled when the disposition arrives.
 *
 * Each answer is read whole, pn_message_decode'd, accepted and settled,
 * and checked: correlation-id = the outstanding request's id, statusCode
 * = 200 (int), body a map with a `results` list whose rows are lists as
 * long as its `attributeNames` list. Anything else counts as an error
 * (the first few are described on stderr).
 *
 * Prints one JSON line on stdout at the end: {"event":"done", sent,
 * answered, errors, rate (answered / max(S, run time)), p50_ms, p99_ms
 * (send to answer), rows, rows_per_answer, cpu_s (own user+sys)}; before
 * it, {"event":"error",...} lines for connection failures. Exit 0 if every
 * request sent was answered without error, 1 otherwise, 2 on bad
 * arguments, 3 on --timeout (default S + 30 s; an alarm, so it cannot
 * hang).
 */

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/link.h>
#include <proton/message.h>
#include <proton/proactor.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAX_ATTRS 64
#define CREDIT 16
#define MAX_ERROR_LINES 5
/* Placeholders for the two ids in the encoded template (8-byte ulongs). */
#define ID_MARK 0xA1B2C3D4E5F60718ull
#define CORR_MARK 0xA1B2C3D4E5F60719ull

static const char *connect_addr, *entity_type, *address = "$management";
static const char *attrs[MAX_ATTRS];
static int nattrs;
static long count = -1;
static double rate = -1, seconds = -1;
static long timeout_s = -1;

static pn_proactor_t *proactor;
static pn_connection_t *conn;
static pn_link_t *sender, *receiver;
static char reply_to[1024];
static int have_reply_to, sender_up, started;
static int finished, failed;

static char *tmpl;      /* the encoded request */
static size_t tmpl_len;
static size_t id_off, corr_off; /* offsets of the two 8-byte id values */

static char *rbuf;      /* answer bytes */
static size_t rbuf_cap;
static pn_message_t *answer;

static double t_start, t_end, t_sent;
static long total;      /* requests due within S seconds */
static long next_k;     /* next request id */
static long outstanding = -1;
static long sent, answered, errors, rows;
static double *lat_ms;
static int error_lines;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
         ru.ru_stime.tv_usec / 1e6;
}

/* Where the run is, for the timeout message. */
static volatile sig_atomic_t stage;
static const char *const stage_names[] = {"connecting", "attaching (waiting for links, reply "
                                          "address, credit)", "running", "closing"};

/* Async-signal-safe: appends decimal v at p. */
static char *put_long(char *p, long v) {
  char tmp[24];
  int n = 0;
  if (v < 0) v = 0;
  do tmp[n++] = (char)('0' + v % 10); while ((v /= 10) && n < 20);
  while (n) *p++ = tmp[--n];
  return p;
}

static char *put_text(char *p, const char *s) {
  while (*s) *p++ = *s++;
  return p;
}

static void on_alarm(int sig) {
  (void)sig;
  char msg[256], *p = msg;
  p = put_text(p, "{\"event\":\"error\",\"what\":\"timeout\",\"stage\":\"");
  p = put_text(p, stage_names[stage]);
  p = put_text(p, "\",\"sent\":");
  p = put_long(p, sent);
  p = put_text(p, ",\"answered\":");
  p = put_long(p, answered);
  p = put_text(p, "}\n");
  ssize_t w = write(1, msg, (size_t)(p - msg));
  (void)w;
  _exit(3);
}

static void json_str(const char *s) {
  putchar('"');
  for (; s && *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') printf("\\%c", ch);
    else if (ch < 0x20) printf("\\u%04x", ch);
    else putchar(ch);
  }
  putchar('"');
}

static void fail(const char *what, pn_condition_t *c) {
  int set = c && pn_condition_is_set(c);
  printf("{\"event\":\"error\",\"what\":");
  json_str(what);
  printf(",\"condition\":");
  json_str(set ? pn_condition_get_name(c) : "");
  printf(",\"description\":");
  json_str(set ? pn_condition_get_description(c) : "");
  printf("}\n");
  fflush(stdout);
  failed = 1;
  if (!finished) {
    finished = 1;
    if (conn) pn_connection_close(conn);
  }
}

__attribute__((format(printf, 1, 2))) static void bad_answer(const char *fmt, ...) {
  errors++;
  if (error_lines++ < MAX_ERROR_LINES) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mgmt-load: bad answer to request %ld: ", outstanding);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
  }
}

/* ---- request template ---- */

static void put_be64(char *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (char)(v & 0xff);
}

/* Offset of the value of the 8-byte ulong `mark` (after its 0x80), which
   must occur exactly once in the template. */
static size_t find_mark(uint64_t mark) {
  char pat[9];
  pat[0] = (char)0x80;
  put_be64(pat + 1, mark);
  size_t found = 0;
  int hits = 0;
  for (size_t i = 0; i + sizeof pat <= tmpl_len; i++) {
    if (memcmp(tmpl + i, pat, sizeof pat) == 0) {
      found = i + 1;
      hits++;
    }
  }
  if (hits != 1) {
    fprintf(stderr, "mgmt-load: id placeholder found %d times in the encoded request\n", hits);
    exit(1);
  }
  return found;
}

static void put_string_kv(pn_data_t *d, const char *k, const char *v) {
  pn_data_put_string(d, pn_bytes(strlen(k), k));
  pn_data_put_string(d, pn_bytes(strlen(v), v));
}

static void encode_template(void) {
  pn_message_t *m = pn_message();
  pn_atom_t id = {.type = PN_ULONG, .u.as_ulong = ID_MARK};
  pn_atom_t corr = {.type = PN_ULONG, .u.as_ulong = CORR_MARK};
  pn_message_set_id(m, id);
  pn_message_set_correlation_id(m, corr);
  pn_message_set_address(m, address);
  pn_message_set_reply_to(m, reply_to);

  pn_data_t *p = pn_message_properties(m);
  pn_data_put_map(p);
  pn_data_enter(p);
  put_string_kv(p, "operation", "QUERY");
  put_string_kv(p, "type", "org.amqp.management");
  put_string_kv(p, "entityType", entity_type);
  pn_data_put_string(p, pn_bytes(6, "offset"));
  pn_data_put_long(p, 0);
  pn_data_put_string(p, pn_bytes(5, "count"));
  pn_data_put_long(p, count);
  pn_data_exit(p);

  pn_data_t *b = pn_message_body(m);
  pn_data_put_map(b);
  pn_data_enter(b);
  pn_data_put_string(b, pn_bytes(14, "attributeNames"));
  pn_data_put_list(b);
  pn_data_enter(b);
  for (int i = 0; i < nattrs; i++) pn_data_put_string(b, pn_bytes(strlen(attrs[i]), attrs[i]));
  pn_data_exit(b);
  pn_data_exit(b);

  size_t cap = 1024;
  tmpl = malloc(cap);
  for (int tries = 0;; tries++) {
    size_t len = cap;
    int err = pn_message_encode(m, tmpl, &len);
    if (err == 0) {
      tmpl_len = len;
      break;
    }
    if (err != PN_OVERFLOW || tries > 20) {
      fprintf(stderr, "mgmt-load: encode failed: %d\n", err);
      exit(1);
    }
    cap *= 2;
    tmpl = realloc(tmpl, cap);
  }
  pn_message_free(m);
  id_off = find_mark(ID_MARK);
  corr_off = find_mark(CORR_MARK);

  /* Sanity check: a patched copy decodes with the patched ids. */
  char *copy = malloc(tmpl_len);
  memcpy(copy, tmpl, tmpl_len);
  put_be64(copy + id_off, 12345);
  put_be64(copy + corr_off, 12345);
  pn_message_t *chk = pn_message();
  pn_atom_t a, c;
  if (pn_message_decode(chk, copy, tmpl_len) != 0 || (a = pn_message_get_id(chk)).type != PN_ULONG ||
      a.u.as_ulong != 12345 || (c = pn_message_get_correlation_id(chk)).type != PN_ULONG ||
      c.u.as_ulong != 12345) {
    fprintf(stderr, "mgmt-load: patched request does not decode as expected\n");
    exit(1);
  }
  pn_message_free(chk);
  free(copy);
}

/* ---- schedule ---- */

static void finish(void) {
  if (finished) return;
  finished = 1;
  stage = 3;
  t_end = now();
  pn_connection_close(conn);
}

static void send_request(void) {
  long k = next_k++;
  put_be64(tmpl + id_off, (uint64_t)k);
  put_be64(tmpl + corr_off, (uint64_t)k);
  uint64_t tag = (uint64_t)k;
  pn_delivery_t *d = pn_delivery(sender, pn_dtag((const char *)&tag, sizeof tag));
  pn_delivery_set_context(d, (void *)(intptr_t)k);
  pn_link_send(sender, tmpl, tmpl_len);
  pn_link_advance(sender);
  outstanding = k;
  t_sent = now();
  sent++;
}

/* Sends the next request if it is due, or sets the timer for it. Called
   on every event that may allow progress. */
static void pump(void) {
  if (!started || finished || outstanding >= 0) return;
  double t = now();
  if (next_k >= total || t >= t_start + seconds) {
    finish();
    return;
  }
  double due = t_start + (double)next_k / rate;
  if (t < due) {
    /* Truncated + 1 ms: never before the due time, at most 1 ms after
       (due times stay on the k/R grid, so this does not drift). */
    pn_millis_t ms = (pn_millis_t)((due - t) * 1000.0) + 1;
    pn_proactor_set_timeout(proactor, ms);
    return;
  }
  if (pn_link_credit(sender) <= 0) return; /* PN_LINK_FLOW calls back */
  send_request();
}

static void maybe_start(void) {
  if (started || finished || !have_reply_to || !sender_up || pn_link_credit(sender) <= 0) return;
  encode_template();
  started = 1;
  stage = 2;
  t_start = now();
  pump();
}

/* ---- answers ---- */

/* Positions d on the value of string key `key` in the map it is entered
   in (rewound to its start); returns 0 if absent. */
static int map_find(pn_data_t *d, const char *key) {
  size_t klen = strlen(key);
  /* Bounded by the map's size. */
  while (pn_data_next(d)) {
    int is_key = pn_data_type(d) == PN_STRING || pn_data_type(d) == PN_SYMBOL;
    pn_bytes_t k = is_key ? (pn_data_type(d) == PN_STRING ? pn_data_get_string(d)
                                                          : pn_data_get_symbol(d))
                          : pn_bytes(0, NULL);
    if (!pn_data_next(d)) return 0;
    if (is_key && k.size == klen && memcmp(k.start, key, klen) == 0) return 1;
  }
  return 0;
}

static void check_answer(void) {
  pn_atom_t corr = pn_message_get_correlation_id(answer);
  if (corr.type != PN_ULONG || corr.u.as_ulong != (uint64_t)outstanding) {
    bad_answer("correlation-id mismatch (type %d, value %llu)", (int)corr.type,
               (unsigned long long)corr.u.as_ulong);
    return;
  }

  pn_data_t *p = pn_message_properties(answer);
  pn_data_rewind(p);
  if (!pn_data_next(p) || pn_data_type(p) != PN_MAP) {
    bad_answer("no application properties map");
    return;
  }
  pn_data_enter(p);
  if (!map_find(p, "statusCode") || pn_data_type(p) != PN_INT) {
    bad_answer("no int statusCode");
    return;
  }
  int32_t status = pn_data_get_int(p);
  if (status != 200) {
    pn_data_rewind(p);
    pn_data_next(p);
    pn_data_enter(p);
    const char *desc = "";
    char dbuf[256];
    if (map_find(p, "statusDescription") && pn_data_type(p) == PN_STRING) {
      pn_bytes_t s = pn_data_get_string(p);
      size_t n = s.size < sizeof dbuf - 1 ? s.size : sizeof dbuf - 1;
      memcpy(dbuf, s.start, n);
      dbuf[n] = 0;
      desc = dbuf;
    }
    errors++;
    if (error_lines++ < MAX_ERROR_LINES)
      fprintf(stderr, "mgmt-load: request %ld: statusCode %d: %s\n", outstanding, (int)status, desc);
    return;
  }

  pn_data_t *b = pn_message_body(answer);
  pn_data_rewind(b);
  if (!pn_data_next(b) || pn_data_type(b) != PN_MAP) {
    bad_answer("body is not a map");
    return;
  }
  pn_data_enter(b);
  if (!map_find(b, "attributeNames") || pn_data_type(b) != PN_LIST) {
    bad_answer("no attributeNames list in the body");
    return;
  }
  size_t width = pn_data_get_list(b);
  if (nattrs > 0) { /* the answer's columns are the ones asked for, in order */
    if (width != (size_t)nattrs) {
      bad_answer("%zu attributeNames, asked for %d", width, nattrs);
      return;
    }
    pn_data_enter(b);
    for (int i = 0; i < nattrs; i++) {
      pn_bytes_t s = pn_data_next(b) && pn_data_type(b) == PN_STRING ? pn_data_get_string(b)
                                                                     : pn_bytes(0, NULL);
      if (s.size != strlen(attrs[i]) || memcmp(s.start, attrs[i], s.size) != 0) {
        bad_answer("attributeNames[%d] is not %s", i, attrs[i]);
        return;
      }
    }
  }
  pn_data_rewind(b);
  pn_data_next(b);
  pn_data_enter(b);
  if (!map_find(b, "results") || pn_data_type(b) != PN_LIST) {
    bad_answer("no results list in the body");
    return;
  }
  size_t n = pn_data_get_list(b);
  pn_data_enter(b);
  for (size_t i = 0; i < n; i++) {
    if (!pn_data_next(b) || pn_data_type(b) != PN_LIST || pn_data_get_list(b) != width) {
      bad_answer("row %zu is not a list of %zu values (attributeNames' length)", i, width);
      return;
    }
  }
  rows += (long)n;
}

static void on_answer(pn_delivery_t *d) {
  pn_link_t *l = pn_delivery_link(d);
  size_t pending = pn_delivery_pending(d);
  if (pending + 1 > rbuf_cap) {
    rbuf_cap = (pending + 1) * 2;
    rbuf = realloc(rbuf, rbuf_cap);
  }
  size_t len = 0;
  /* Bounded by the delivery's size (each pass reads > 0 bytes). */
  for (;;) {
    if (len == rbuf_cap) {
      rbuf_cap *= 2;
      rbuf = realloc(rbuf, rbuf_cap);
    }
    ssize_t r = pn_link_recv(l, rbuf + len, rbuf_cap - len);
    if (r <= 0) break;
    len += (size_t)r;
  }
  pn_delivery_update(d, PN_ACCEPTED);
  pn_delivery_settle(d);
  if (pn_link_credit(l) < CREDIT / 2) pn_link_flow(l, CREDIT - pn_link_credit(l));

  double t = now();
  if (outstanding < 0) {
    errors++;
    if (error_lines++ < MAX_ERROR_LINES) fprintf(stderr, "mgmt-load: unexpected answer (none outstanding)\n");
    return;
  }
  lat_ms[answered] = (t - t_sent) * 1000.0;
  answered++;
  int err = pn_message_decode(answer, rbuf, len);
  if (err != 0) {
    errors++;
    if (error_lines++ < MAX_ERROR_LINES)
      fprintf(stderr, "mgmt-load: request %ld: answer does not decode (%d, %zu bytes)\n", outstanding,
              err, len);
  } else {
    check_answer();
  }
  outstanding = -1;
  pump();
}

/* ---- events ---- */

static void handle(pn_event_t *e) {
  switch (pn_event_type(e)) {
  case PN_CONNECTION_INIT: {
    char cid[64];
    snprintf(cid, sizeof cid, "mgmt-load-%ld", (long)getpid());
    conn = pn_event_connection(e);
    pn_connection_set_container(conn, cid);
    pn_connection_open(conn);
    pn_session_t *s = pn_session(conn);
    pn_session_open(s);
    sender = pn_sender(s, "mgmt-load-requests");
    pn_terminus_set_address(pn_link_target(sender), address);
    pn_link_set_snd_settle_mode(sender, PN_SND_UNSETTLED);
    pn_link_open(sender);
    receiver = pn_receiver(s, "mgmt-load-replies");
    pn_terminus_set_dynamic(pn_link_source(receiver), true);
    pn_link_open(receiver);
    pn_link_flow(receiver, CREDIT);
    break;
  }
  case PN_CONNECTION_REMOTE_OPEN:
    stage = 1;
    break;
  case PN_LINK_REMOTE_OPEN: {
    pn_link_t *l = pn_event_link(e);
    if (l == receiver) {
      const char *a = pn_terminus_get_address(pn_link_remote_source(l));
      if (!a || !*a || strlen(a) >= sizeof reply_to) {
        fail("no dynamic reply address from the peer", pn_link_remote_condition(l));
        break;
      }
      strcpy(reply_to, a);
      have_reply_to = 1;
    } else if (l == sender) {
      sender_up = 1;
    }
    maybe_start();
    break;
  }
  case PN_LINK_FLOW:
    if (pn_event_link(e) == sender) {
      if (!started) maybe_start();
      else pump();
    }
    break;
  case PN_PROACTOR_TIMEOUT:
    /* Not in the connection's context: wake it, send from its WAKE event
       (so the output is written out). */
    if (conn && !finished) pn_connection_wake(conn);
    break;
  case PN_CONNECTION_WAKE:
    pump();
    break;
  case PN_DELIVERY: {
    pn_delivery_t *d = pn_event_delivery(e);
    pn_link_t *l = pn_delivery_link(d);
    if (l == sender) {
      uint64_t st = pn_delivery_remote_state(d);
      if (!st && !pn_delivery_settled(d)) break;
      if (st != PN_ACCEPTED) {
        long k = (long)(intptr_t)pn_delivery_get_context(d);
        errors++;
        if (error_lines++ < MAX_ERROR_LINES)
          fprintf(stderr, "mgmt-load: request %ld not accepted (outcome 0x%llx)\n", k,
                  (unsigned long long)st);
        if (outstanding == k) { /* no answer will come */
          outstanding = -1;
          pump();
        }
      }
      pn_delivery_settle(d);
    } else if (l == receiver && pn_delivery_readable(d) && !pn_delivery_partial(d)) {
      on_answer(d);
    }
    break;
  }
  case PN_TRANSPORT_ERROR:
    if (!finished) fail("transport", pn_transport_condition(pn_event_transport(e)));
    break;
  case PN_CONNECTION_REMOTE_CLOSE:
    if (!finished) fail("connection closed", pn_connection_remote_condition(pn_event_connection(e)));
    pn_connection_close(pn_event_connection(e));
    break;
  case PN_LINK_REMOTE_CLOSE:
    if (!finished) fail("link closed", pn_link_remote_condition(pn_event_link(e)));
    break;
  case PN_TRANSPORT_CLOSED:
    if (!finished) fail("transport closed", pn_transport_condition(pn_event_transport(e)));
    finished = 2;
    break;
  default:
    break;
  }
}

/* ---- main ---- */

static void usage(const char *why) {
  if (why) fprintf(stderr, "mgmt-load: %s\n", why);
  fprintf(stderr, "usage: load --connect HOST:PORT --type ENTITY_TYPE --count N --rate R "
                  "--seconds S [--attr NAME]... [--address ADDR] [--timeout SECONDS]\n");
  exit(2);
}

static double num(const char *v, const char *opt) {
  char *end;
  double x = strtod(v, &end);
  if (end == v || *end) {
    fprintf(stderr, "mgmt-load: %s: not a number: %s\n", opt, v);
    usage(NULL);
  }
  return x;
}

/* Only 127.0.0.0/8: HOST must be a dotted IPv4 address starting 127. */
static void check_loopback(const char *hp) {
  const char *colon = strrchr(hp, ':');
  char host[64];
  size_t n = colon ? (size_t)(colon - hp) : 0;
  struct in_addr in;
  if (!colon || n == 0 || n >= sizeof host || !colon[1]) usage("--connect must be HOST:PORT");
  memcpy(host, hp, n);
  host[n] = 0;
  if (inet_pton(AF_INET, host, &in) != 1 || (ntohl(in.s_addr) >> 24) != 127) {
    fprintf(stderr, "mgmt-load: refusing to connect to %s: only 127.0.0.0/8 addresses "
                    "(e.g. 127.0.0.1) are allowed\n", host);
    exit(2);
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pick(double q) {
  if (answered == 0) return 0.0;
  long i = (long)(q * answered);
  return lat_ms[i < answered ? i : answered - 1];
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i += 2) {
    const char *k = argv[i];
    if (i + 1 >= argc) usage("missing value");
    const char *v = argv[i + 1];
    if (!strcmp(k, "--connect")) connect_addr = v;
    else if (!strcmp(k, "--type")) entity_type = v;
    else if (!strcmp(k, "--count")) count = (long)num(v, k);
    else if (!strcmp(k, "--rate")) rate = num(v, k);
    else if (!strcmp(k, "--seconds")) seconds = num(v, k);
    else if (!strcmp(k, "--address")) address = v;
    else if (!strcmp(k, "--timeout")) timeout_s = (long)num(v, k);
    else if (!strcmp(k, "--attr")) {
      if (nattrs == MAX_ATTRS) usage("too many --attr");
      attrs[nattrs++] = v;
    } else {
      fprintf(stderr, "mgmt-load: unknown option %s\n", k);
      usage(NULL);
    }
  }
  if (!connect_addr || !entity_type || count < 0 || rate <= 0 || seconds <= 0)
    usage("--connect, --type, --count >= 0, --rate > 0 and --seconds > 0 are required");
  if (rate > 1e6 || seconds > 1e6) usage("--rate and --seconds must be at most 1e6");
  if (!*address) usage("empty --address");
  check_loopback(connect_addr);
  if (timeout_s < 0) timeout_s = (long)seconds + 30 + ((double)(long)seconds < seconds);
  if (timeout_s <= 0) usage("--timeout must be > 0");

  /* Requests k with k / R < S. */
  double due_n = seconds * rate;
  total = (long)due_n;
  if ((double)total < due_n - 1e-9) total++;
  lat_ms = malloc(sizeof *lat_ms * (size_t)(total > 0 ? total : 1));
  answer = pn_message();

  signal(SIGALRM, on_alarm);
  alarm((unsigned)timeout_s);
  proactor = pn_proactor();
  pn_proactor_connect2(proactor, pn_connection(), NULL, connect_addr);
  /* Runs until the connection is done (bounded by the alarm). */
  while (finished != 2) {
    pn_event_batch_t *b = pn_proactor_wait(proactor);
    pn_event_t *e;
    while ((e = pn_event_batch_next(b))) {
      handle(e);
      if (pn_event_type(e) == PN_PROACTOR_INACTIVE) finished = 2;
    }
    pn_proactor_done(proactor, b);
  }
  pn_proactor_free(proactor);

  if (!t_end) t_end = now();
  double elapsed = started ? t_end - t_start : 0.0;
  if (started && elapsed < seconds) elapsed = seconds;
  qsort(lat_ms, (size_t)answered, sizeof *lat_ms, cmp_double);
  printf("{\"event\":\"done\",\"sent\":%ld,\"answered\":%ld,\"errors\":%ld,\"rate\":%.1f,"
         "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"rows\":%ld,\"rows_per_answer\":%.1f,\"cpu_s\":%.6f}\n",
         sent, answered, errors, elapsed > 0 ? answered / elapsed : 0.0, pick(0.5), pick(0.99),
         rows, answered ? (double)rows / answered : 0.0, cpu_seconds());
  fflush(stdout);
  if (error_lines > MAX_ERROR_LINES)
    fprintf(stderr, "mgmt-load: %d more errors not shown\n", error_lines - MAX_ERROR_LINES);
  pn_message_free(answer);
  free(lat_ms);
  free(rbuf);
  free(tmpl);
  return failed || errors || sent == 0 || answered != sent ? 1 : 0;
}
