/*
 * AMQP 1.0 benchmark client on the Proton C proactor (libqpid-proton).
 * benches/amqp/run.py compiles it with cc and runs a receiver and a sender.
 *
 *   client recv (--connect HOST:PORT | --listen HOST:PORT) --address A
 *               --count N [--credit C]
 *   client send --connect HOST:PORT --address A --count N [--size S]
 *               [--window W] [--timeout SECONDS]
 *
 * send: one sender link, messages with one Data section of S bytes
 * (encoded once, sent N times), unsettled, at most W unsettled at a time
 * (and never more than link credit allows); the clock runs from the first
 * send to the last outcome. recv: one receiver link with C credit
 * (topped up when half is used), accepts and settles each message; the
 * clock runs from the first message to the last. With --listen the
 * receiver accepts one connection itself (the sender connects straight
 * to it: the direct path, no router).
 *
 * Each prints JSON lines on stdout: {"event":"ready"} once attached (recv)
 * or listening, then {"event":"done", ...} with count, elapsed_s,
 * msgs_per_s, accepted/other outcomes (send), and the process's own
 * user+system CPU seconds. Exit status 0 on success, 1 on failure, 3 on
 * --timeout (default 120 s; checked by an alarm, so it cannot hang).
 */

#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/link.h>
#include <proton/listener.h>
#include <proton/message.h>
#include <proton/proactor.h>
#include <proton/session.h>
#include <proton/terminus.h>
#include <proton/transport.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static const char *mode, *connect_addr, *listen_addr, *address = "bench";
static long count = 100000, size = 1024, window = 1000, credit = 1000;
static int timeout_s = 120;

static pn_proactor_t *proactor;
static pn_link_t *link_;
static char *encoded;
static size_t encoded_len;
static long sent, settled, accepted, other, received;
static double t_first, t_last;
static int finished, failed;
static char scratch[1 << 16];

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

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "{\"event\":\"timeout\"}\n";
  ssize_t w = write(1, msg, sizeof msg - 1);
  (void)w;
  _exit(3);
}

static void fail(const char *what, pn_condition_t *c) {
  printf("{\"event\":\"error\",\"what\":\"%s\",\"condition\":\"%s\",\"description\":\"%s\"}\n",
         what, c && pn_condition_is_set(c) ? pn_condition_get_name(c) : "",
         c && pn_condition_is_set(c) ? pn_condition_get_description(c) : "");
  fflush(stdout);
  failed = 1;
  finished = 1;
}

static void report(void) {
  long n = strcmp(mode, "send") == 0 ? settled : received;
  double elapsed = t_last > t_first ? t_last - t_first : 0.0;
  printf("{\"event\":\"done\",\"role\":\"%s\",\"count\":%ld,\"elapsed_s\":%.6f,"
         "\"msgs_per_s\":%.1f,\"accepted\":%ld,\"other\":%ld,\"cpu_s\":%.6f}\n",
         mode, n, elapsed, elapsed > 0 ? n / elapsed : 0.0, accepted, other, cpu_seconds());
  fflush(stdout);
}

static void encode_message(void) {
  pn_message_t *m = pn_message();
  char *body = malloc(size > 0 ? size : 1);
  for (long i = 0; i < size; i++) body[i] = (char)('a' + i % 26);
  pn_data_put_binary(pn_message_body(m), pn_bytes(size, body));
  pn_message_set_inferred(m, true);
  size_t cap = size + 1024;
  encoded = malloc(cap);
  for (;;) {
    size_t len = cap;
    int err = pn_message_encode(m, encoded, &len);
    if (err == 0) {
      encoded_len = len;
      break;
    }
    if (err != PN_OVERFLOW) {
      fprintf(stderr, "encode failed: %d\n", err);
      exit(1);
    }
    cap *= 2;
    encoded = realloc(encoded, cap);
  }
  free(body);
  pn_message_free(m);
}

static void send_some(pn_link_t *l) {
  while (sent < count && pn_link_credit(l) > 0 && sent - settled < window) {
    uint64_t tag = (uint64_t)sent;
    pn_delivery(l, pn_dtag((const char *)&tag, sizeof tag));
    pn_link_send(l, encoded, encoded_len);
    pn_link_advance(l);
    if (sent == 0) t_first = now();
    sent++;
  }
}

static void open_link(pn_connection_t *c) {
  pn_session_t *s = pn_session(c);
  pn_session_open(s);
  if (strcmp(mode, "send") == 0) {
    link_ = pn_sender(s, "bench-sender");
    pn_terminus_set_address(pn_link_target(link_), address);
    pn_link_set_snd_settle_mode(link_, PN_SND_UNSETTLED);
  } else {
    link_ = pn_receiver(s, "bench-receiver");
    pn_terminus_set_address(pn_link_source(link_), address);
  }
  pn_link_open(link_);
  if (link_ && pn_link_is_receiver(link_)) pn_link_flow(link_, (int)credit);
}

static void handle(pn_event_t *e) {
  switch (pn_event_type(e)) {
  case PN_LISTENER_OPEN:
    printf("{\"event\":\"ready\",\"listening\":true}\n");
    fflush(stdout);
    break;
  case PN_LISTENER_ACCEPT:
    pn_listener_accept2(pn_event_listener(e), pn_connection(), NULL);
    break;
  case PN_CONNECTION_INIT: {
    pn_connection_t *c = pn_event_connection(e);
    pn_connection_set_container(c, strcmp(mode, "send") == 0 ? "bench-send" : "bench-recv");
    if (connect_addr) {
      pn_connection_open(c);
      open_link(c);
    }
    break;
  }
  case PN_CONNECTION_REMOTE_OPEN: {
    pn_connection_t *c = pn_event_connection(e);
    if (pn_connection_state(c) & PN_LOCAL_UNINIT) pn_connection_open(c);
    break;
  }
  case PN_SESSION_REMOTE_OPEN: {
    pn_session_t *s = pn_event_session(e);
    if (pn_session_state(s) & PN_LOCAL_UNINIT) pn_session_open(s);
    break;
  }
  case PN_LINK_REMOTE_OPEN: {
    pn_link_t *l = pn_event_link(e);
    if (pn_link_state(l) & PN_LOCAL_UNINIT) {
      /* --listen: the sender attached to us. */
      pn_terminus_copy(pn_link_source(l), pn_link_remote_source(l));
      pn_terminus_copy(pn_link_target(l), pn_link_remote_target(l));
      pn_link_open(l);
      link_ = l;
      if (pn_link_is_receiver(l)) pn_link_flow(l, (int)credit);
    } else if (pn_link_is_receiver(l) && connect_addr) {
      printf("{\"event\":\"ready\"}\n");
      fflush(stdout);
    }
    break;
  }
  case PN_LINK_FLOW: {
    pn_link_t *l = pn_event_link(e);
    if (pn_link_is_sender(l)) send_some(l);
    break;
  }
  case PN_DELIVERY: {
    pn_delivery_t *d = pn_event_delivery(e);
    pn_link_t *l = pn_delivery_link(d);
    if (pn_link_is_sender(l)) {
      if (!pn_delivery_settled(d)) break;
      if (pn_delivery_remote_state(d) == PN_ACCEPTED)
        accepted++;
      else
        other++;
      pn_delivery_settle(d);
      settled++;
      if (settled == count) {
        t_last = now();
        finished = 1;
        pn_connection_close(pn_event_connection(e));
      } else {
        send_some(l);
      }
    } else if (pn_delivery_readable(d) && !pn_delivery_partial(d)) {
      /* Bounded by the delivery's size. */
      while (pn_link_recv(l, scratch, sizeof scratch) > 0) {
      }
      pn_delivery_update(d, PN_ACCEPTED);
      pn_delivery_settle(d);
      if (received == 0) t_first = now();
      received++;
      if (received == count) {
        t_last = now();
        finished = 1;
        pn_connection_close(pn_event_connection(e));
      } else if (pn_link_credit(l) < credit / 2) {
        pn_link_flow(l, (int)(credit - pn_link_credit(l)));
      }
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
    pn_link_close(pn_event_link(e));
    break;
  case PN_TRANSPORT_CLOSED:
    if (!finished) fail("transport closed", pn_transport_condition(pn_event_transport(e)));
    finished = 2;
    break;
  default:
    break;
  }
}

static void usage(void) {
  fprintf(stderr, "usage: client send|recv (--connect H:P | --listen H:P) --address A "
                  "--count N [--size S] [--window W] [--credit C] [--timeout S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  mode = argv[1];
  if (strcmp(mode, "send") != 0 && strcmp(mode, "recv") != 0) usage();
  for (int i = 2; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--connect")) connect_addr = v;
    else if (!strcmp(k, "--listen")) listen_addr = v;
    else if (!strcmp(k, "--address")) address = v;
    else if (!strcmp(k, "--count")) count = atol(v);
    else if (!strcmp(k, "--size")) size = atol(v);
    else if (!strcmp(k, "--window")) window = atol(v);
    else if (!strcmp(k, "--credit")) credit = atol(v);
    else if (!strcmp(k, "--timeout")) timeout_s = atoi(v);
    else usage();
  }
  if (!connect_addr == !listen_addr) usage();
  signal(SIGALRM, on_alarm);
  alarm((unsigned)timeout_s);
  if (strcmp(mode, "send") == 0) encode_message();
  proactor = pn_proactor();
  if (connect_addr) {
    pn_proactor_connect2(proactor, pn_connection(), NULL, connect_addr);
  } else {
    pn_proactor_listen(proactor, pn_listener(), listen_addr, 16);
  }
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
  report();
  pn_proactor_free(proactor);
  return failed ? 1 : 0;
}
