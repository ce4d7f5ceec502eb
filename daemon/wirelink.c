/*
 * wirelink: frames over a socket, batched per loop iteration (see wirelink.h).
 *
 * Output goes into one growing wire_out; a uv_prepare handle, active only while something is
 * batched, hands the whole buffer to uv_write before the loop waits (the write request takes
 * the buffer; a new one is started). Input accumulates in a buffer of its own and every complete
 * frame is handed out in order; a partial frame waits for the rest.
 */
#include "wirelink.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define READ_CHUNK 65536

struct wirelink {
    uv_pipe_t pipe;
    uv_prepare_t flush;
    wirelink_frame_cb on_frame;
    wirelink_end_cb on_end;
    void *arg;
    struct wire_out out;
    size_t writing; /* bytes in uv_write requests not yet done */
    char *in;
    size_t in_len, in_cap;
    bool ended, closing;
    int handles; /* open handles; freed when 0 */
};

struct wreq {
    uv_write_t req;
    struct wirelink *l;
    size_t len;
    char *buf;
};

static void end(struct wirelink *l, int err)
{
    if (l->ended)
        return;
    l->ended = true;
    uv_read_stop((uv_stream_t *)&l->pipe);
    uv_prepare_stop(&l->flush);
    if (l->on_end)
        l->on_end(l->arg, err);
}

static void write_done(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct wirelink *l = w->l;
    l->writing -= w->len;
    free(w->buf);
    free(w);
    if (status < 0 && status != UV_ECANCELED && !l->closing)
        end(l, status);
}

static void on_flush(uv_prepare_t *h)
{
    struct wirelink *l = h->data;
    struct wreq *w;
    uv_buf_t b;

    uv_prepare_stop(h);
    if (l->ended || !l->out.len)
        return;
    w = malloc(sizeof(*w));
    if (!w) {
        uv_prepare_start(h, on_flush); /* try again next iteration */
        return;
    }
    w->l = l;
    w->buf = l->out.p;
    w->len = l->out.len;
    memset(&l->out, 0, sizeof(l->out));
    b = uv_buf_init(w->buf, (unsigned)w->len);
    l->writing += w->len;
    int rc = uv_write(&w->req, (uv_stream_t *)&l->pipe, &b, 1, write_done);
    if (rc < 0) {
        l->writing -= w->len;
        free(w->buf);
        free(w);
        end(l, rc);
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct wirelink *l = h->data;
    if (l->in_cap - l->in_len < READ_CHUNK) {
        char *n = realloc(l->in, l->in_len + READ_CHUNK);
        if (!n) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        l->in = n;
        l->in_cap = l->in_len + READ_CHUNK;
    }
    *buf = uv_buf_init(l->in + l->in_len, (unsigned)(l->in_cap - l->in_len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct wirelink *l = s->data;
    size_t off = 0, body;
    int rc;

    if (n < 0) {
        end(l, n == UV_EOF ? 0 : (int)n);
        return;
    }
    l->in_len += (size_t)n;
    while (!l->ended && (rc = wire_frame(l->in + off, l->in_len - off, &body)) != 0) {
        struct wire_in r;
        if (rc < 0 || !wire_open(&r, l->in + off + 4, body)) {
            end(l, -EPROTO);
            return;
        }
        l->on_frame(l->arg, &r);
        if (r.bad) {
            end(l, -EPROTO);
            return;
        }
        off += 4 + body;
    }
    if (l->closing) /* closed from a frame callback: the buffers go with the handles */
        return;
    memmove(l->in, l->in + off, l->in_len - off);
    l->in_len -= off;
}

int wirelink_open(struct wirelink **out, uv_loop_t *loop, int fd, wirelink_frame_cb on_frame,
                  wirelink_end_cb on_end, void *arg)
{
    struct wirelink *l = calloc(1, sizeof(*l));
    int rc;

    *out = NULL;
    if (!l) {
        close(fd);
        return -ENOMEM;
    }
    l->on_frame = on_frame;
    l->on_end = on_end;
    l->arg = arg;
    l->pipe.data = l->flush.data = l;
    uv_pipe_init(loop, &l->pipe, 0);
    uv_prepare_init(loop, &l->flush);
    l->handles = 2;
    rc = uv_pipe_open(&l->pipe, fd);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&l->pipe, on_alloc, on_read);
    if (rc < 0) {
        l->ended = true;
        wirelink_close(l);
        return rc;
    }
    *out = l;
    return 0;
}

struct wire_out *wirelink_out(struct wirelink *l)
{
    if (l->ended)
        return NULL;
    uv_prepare_start(&l->flush, on_flush);
    return &l->out;
}

size_t wirelink_backlog(const struct wirelink *l)
{
    return l->out.len + l->writing;
}

void wirelink_flush_sync(struct wirelink *l, int timeout_ms)
{
    int fd = -1;
    size_t off = 0;
    uint64_t deadline = uv_hrtime() / 1000000 + (uint64_t)timeout_ms;

    if (l->ended || l->writing || uv_fileno((uv_handle_t *)&l->pipe, &fd) < 0)
        return; /* a write under way would interleave with this one */
    while (off < l->out.len && uv_hrtime() / 1000000 < deadline) {
        ssize_t n = write(fd, l->out.p + off, l->out.len - off);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, 50);
        } else if (n < 0 && errno != EINTR) {
            break;
        }
    }
    l->out.len = 0;
}

static void closed(uv_handle_t *h)
{
    struct wirelink *l = h->data;
    if (--l->handles == 0) {
        wire_free(&l->out);
        free(l->in);
        free(l);
    }
}

void wirelink_close(struct wirelink *l)
{
    if (!l || l->closing)
        return;
    l->closing = true;
    l->ended = true;
    uv_close((uv_handle_t *)&l->pipe, closed);
    uv_close((uv_handle_t *)&l->flush, closed);
}
