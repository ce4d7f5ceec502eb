/*
 * aligw-session-shard: one session shard (shards.h). aligwd starts it with one end of a
 * socketpair as fd FD and runs Paho clients through it: every command frame (shard_wire.h)
 * becomes the session_paho call of the same name, every session event goes back as a frame, and
 * a command the layer refuses at once comes back as the event that stands for the refusal. The
 * shard keeps no state of its own beyond Paho's clients and decides nothing: back-off, pacing,
 * windows and the outbox stay in aligwd. It exits when aligwd closes the socket or dies
 * (PR_SET_PDEATHSIG), and makes no file of its own (aligwd resolves CA directories).
 *
 *   aligw-session-shard FD INDEX LOG_LEVEL
 */
#include "errors.h"
#include "log.h"
#include "session_paho.h"
#include "shard_wire.h"
#include "tlsbuf.h"
#include "wirelink.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static struct wirelink *link_;
static uv_loop_t *loop_;
static unsigned index_;

static void send_event(const struct session_event *ev)
{
    struct wire_out *w = link_ ? wirelink_out(link_) : NULL;
    if (w && shard_wire_event(w, ev) < 0)
        log_write(LOG_ERR, "session shard %u: an event of session %llu did not fit a frame", index_,
                  (unsigned long long)ev->id);
}

static void on_session_event(void *arg, const struct session_event *ev)
{
    send_event(ev);
}

static void refused(enum session_event_kind kind, uint64_t id, int rc, uint64_t ref, size_t index)
{
    struct session_event ev = {.kind = kind, .id = id, .code = rc, .ref = ref, .index = index};
    char text[160];
    if (kind == SESSION_CONNECT_FAILED) {
        snprintf(text, sizeof(text), "cannot start session: %s", aligw_strerror(rc));
        ev.message = text;
    }
    send_event(&ev);
}

static void on_frame(void *arg, struct wire_in *r)
{
    uint64_t id = wire_get_u64(r);
    int rc;

    switch (r->type) {
    case SH_OPEN: {
        struct session_params p;
        if (!shard_wire_get_params(r, &p))
            return;
        if ((rc = paho_open(id, &p)) < 0)
            refused(SESSION_CONNECT_FAILED, id, rc, 0, 0);
        break;
    }
    case SH_CONNECT:
        if (!r->bad && (rc = paho_connect(id)) < 0)
            refused(SESSION_CONNECT_FAILED, id, rc, 0, 0);
        break;
    case SH_CLOSE:
        if (!r->bad)
            paho_close(id);
        break;
    case SH_PING: /* id is the ping's number: the loop is alive, answer it */
        if (!r->bad && link_)
            shard_wire_id(wirelink_out(link_), SH_PONG, id);
        break;
    case SH_PUBLISH: {
        uint64_t ref = wire_get_u64(r), qos = wire_get_u64(r);
        const char *topic = wire_get_str(r);
        size_t len;
        const void *payload = wire_get_bytes(r, &len);
        if (r->bad || qos > 1 || !topic[0]) {
            r->bad = true;
            return;
        }
        if ((rc = paho_publish(id, topic, payload, len, (int)qos, ref)) < 0)
            refused(SESSION_PUBLISH_FAILED, id, rc, ref, 0);
        break;
    }
    case SH_SUBSCRIBE: {
        const char *topics[SHARD_MAX_SUBS];
        size_t n;
        if (!shard_wire_get_topics(r, topics, &n))
            return;
        if ((rc = paho_subscribe(id, (char *const *)topics, n)) < 0)
            for (size_t i = 0; i < n; i++)
                refused(SESSION_SUBSCRIBED, id, -1, 0, i);
        break;
    }
    default:
        r->bad = true;
    }
}

static void on_end(void *arg, int err)
{
    if (err < 0)
        log_write_err(LOG_ERR, err, "session shard %u: the link to aligwd failed", index_);
    wirelink_close(link_);
    link_ = NULL;
    paho_layer_close(); /* every client destroyed: the loop runs out of handles */
    uv_stop(loop_);
}

static int parse_uint(const char *s, unsigned max, unsigned *out)
{
    char *end;
    unsigned long v;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > max)
        return -EINVAL;
    *out = (unsigned)v;
    return 0;
}

int main(int argc, char **argv)
{
    unsigned fd, level;
    int rc;

    if (argc != 4 || parse_uint(argv[1], 1 << 20, &fd) < 0 ||
        parse_uint(argv[2], 1 << 16, &index_) < 0 || parse_uint(argv[3], LOG_DEBUG, &level) < 0) {
        fprintf(stderr, "usage: aligw-session-shard FD INDEX LOG_LEVEL (started by aligwd)\n");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive aligwd */
    if (getppid() == 1)
        return 1; /* it died before the line above */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, SIG_IGN); /* a terminal's ^C is aligwd's to handle */
    log_init();
    log_level = (int)level;
    loop_ = uv_default_loop();
    if ((rc = paho_layer_init(loop_, on_session_event, NULL)) < 0) {
        log_write_err(LOG_ERR, rc, "session shard %u: cannot start Paho", index_);
        return 1;
    }
    if ((rc = wirelink_open(&link_, loop_, (int)fd, on_frame, on_end, NULL)) < 0) {
        log_write_err(LOG_ERR, rc, "session shard %u: cannot use fd %u", index_, fd);
        paho_layer_close();
        return 1;
    }
    if (!tlsbuf_active())
        log_write(LOG_DEBUG, "session shard %u: SSL_CTX_new is not tlsbuf's", index_);
    uv_run(loop_, UV_RUN_DEFAULT);
    uv_run(loop_, UV_RUN_NOWAIT); /* close callbacks */
    return 0;
}
