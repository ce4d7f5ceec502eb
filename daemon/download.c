/*
 * download: HTTPS file downloads on the loop with libcurl's multi interface (see download.h).
 *
 * A download goes WAITING (no free slot) → HASHING (the thread pool digests the bytes a resumed
 * file already holds) → ACTIVE (an easy handle in the multi; bytes are hashed as they arrive and
 * written at their offset by the thread pool, uv_fs_write, so a disk busy flushing never stalls
 * the loop; past WRITE_HIGH bytes in flight the transfer pauses, CURL_WRITEFUNC_PAUSE, until the
 * writes catch up) → SYNCING (fsync in the thread pool) → done. A transfer that ends waits for
 * its writes before it completes. A slot is held from HASHING to done. Cancelling marks the
 * download; whatever step it is in frees it without a callback once no write refers to it. libcurl
 * forbids removing or adding handles from inside its callbacks, so nothing that can be reached from
 * the write callback (user progress callbacks included) does either: cancel only marks, and new
 * transfers start after curl_multi_socket_action has returned.
 */
#include "download.h"

#include "log.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define PROGRESS_STEP (64 * 1024)
#define WRITE_HIGH (32 * 1024) /* bytes written by the pool at once, per download */

/* libcurl, loaded on first use (as in dynreg.c). */
static struct {
    void *lib;
    char error[160];
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    void (*easy_cleanup)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    CURLcode (*easy_pause)(CURL *, int);
    CURLM *(*multi_init)(void);
    CURLMcode (*multi_setopt)(CURLM *, CURLMoption, ...);
    CURLMcode (*multi_add_handle)(CURLM *, CURL *);
    CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
    CURLMcode (*multi_socket_action)(CURLM *, curl_socket_t, int, int *);
    CURLMsg *(*multi_info_read)(CURLM *, int *);
    CURLMcode (*multi_assign)(CURLM *, curl_socket_t, void *);
    CURLMcode (*multi_cleanup)(CURLM *);
} C;

#define LOAD(field, name)                                                                          \
    do {                                                                                           \
        *(void **)(&C.field) = dlsym(lib, name);                                                   \
        if (!C.field)                                                                              \
            missing = name;                                                                        \
    } while (0)

static void curl_load_once(void)
{
    void *lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    const char *missing = NULL, *e;

    if (!lib) {
        snprintf(C.error, sizeof(C.error), "%s", (e = dlerror()) ? e : "dlopen failed");
        return;
    }
    LOAD(global_init, "curl_global_init");
    LOAD(easy_init, "curl_easy_init");
    LOAD(easy_setopt, "curl_easy_setopt");
    LOAD(easy_getinfo, "curl_easy_getinfo");
    LOAD(easy_cleanup, "curl_easy_cleanup");
    LOAD(easy_strerror, "curl_easy_strerror");
    LOAD(easy_pause, "curl_easy_pause");
    LOAD(multi_init, "curl_multi_init");
    LOAD(multi_setopt, "curl_multi_setopt");
    LOAD(multi_add_handle, "curl_multi_add_handle");
    LOAD(multi_remove_handle, "curl_multi_remove_handle");
    LOAD(multi_socket_action, "curl_multi_socket_action");
    LOAD(multi_info_read, "curl_multi_info_read");
    LOAD(multi_assign, "curl_multi_assign");
    LOAD(multi_cleanup, "curl_multi_cleanup");
    if (missing) {
        snprintf(C.error, sizeof(C.error), "libcurl.so.4 lacks %s", missing);
        dlclose(lib);
        return;
    }
    C.global_init(CURL_GLOBAL_DEFAULT);
    C.lib = lib;
}

enum dstate { D_WAITING, D_HASHING, D_ACTIVE, D_SYNCING };

struct download {
    struct download_ctx *c;
    struct download *prev, *next;
    enum dstate st;
    bool cancelled;
    char *url, *path, *ca_file;
    bool resume, allow_http;
    int64_t expect;
    const EVP_MD *md;
    EVP_MD_CTX *mdctx;
    int fd;
    int64_t offset; /* bytes in the file when the transfer started */
    int64_t bytes;  /* bytes in the file now */
    int64_t last_progress;
    CURL *easy;
    char errbuf[CURL_ERROR_SIZE];
    bool status_checked;
    int write_err;
    size_t writing; /* bytes handed to the pool, not written yet */
    int n_writes;   /* write requests in the pool */
    bool paused;    /* the write callback paused the transfer */
    bool ended;     /* the transfer is over (or never started): waits for writes only */
    CURLcode cc;    /* how it ended */
    uv_work_t work;
    int work_err;
    uv_fs_t fsreq;
    struct download_result res;
    download_progress_cb progress;
    download_done_cb done;
    void *arg;
};

struct sockctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct download_ctx *c;
};

struct download_ctx {
    uv_loop_t *loop;
    struct download_limits lim;
    CURLM *multi;
    uv_timer_t timer;
    struct download *waiting, *waiting_tail; /* FIFO */
    struct download *active;                 /* holding a slot */
    int n_active, n_waiting;
    bool in_curl, closing;
};

static void pump(struct download_ctx *c);
static void ctx_closed(uv_handle_t *h);

/* ---- lists ------------------------------------------------------------------------------- */

static void list_unlink(struct download_ctx *c, struct download *d)
{
    if (d->st == D_WAITING) {
        if (d->prev)
            d->prev->next = d->next;
        else
            c->waiting = d->next;
        if (d->next)
            d->next->prev = d->prev;
        else
            c->waiting_tail = d->prev;
        c->n_waiting--;
    } else {
        if (d->prev)
            d->prev->next = d->next;
        else
            c->active = d->next;
        if (d->next)
            d->next->prev = d->prev;
        c->n_active--;
    }
    d->prev = d->next = NULL;
}

static void dl_free(struct download *d)
{
    if (d->easy) {
        C.multi_remove_handle(d->c->multi, d->easy);
        C.easy_cleanup(d->easy);
    }
    if (d->fd >= 0)
        close(d->fd);
    EVP_MD_CTX_free(d->mdctx);
    free(d->url);
    free(d->path);
    free(d->ca_file);
    free(d);
}

/* Releases d's slot and frees it, calling back unless it was cancelled. */
static void finish(struct download *d)
{
    struct download_ctx *c = d->c;
    struct download_result r = d->res;
    download_done_cb done = d->cancelled ? NULL : d->done;
    void *arg = d->arg;

    list_unlink(c, d);
    r.bytes = d->bytes;
    dl_free(d);
    if (done)
        done(arg, &r);
    pump(c);
    if (c->closing && c->n_active == 0 && !uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, ctx_closed);
}

static void fail(struct download *d, int status, bool retryable, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct download *d, int status, bool retryable, const char *fmt, ...)
{
    va_list ap;
    d->res.status = status;
    d->res.retryable = retryable;
    va_start(ap, fmt);
    vsnprintf(d->res.error, sizeof(d->res.error), fmt, ap);
    va_end(ap);
    finish(d);
}

/* ---- completion: fsync, then the digest -------------------------------------------------- */

static void after_sync(uv_fs_t *req)
{
    struct download *d = req->data;
    int rc = (int)req->result;

    uv_fs_req_cleanup(req);
    if (d->cancelled) {
        finish(d);
        return;
    }
    if (rc < 0) {
        fail(d, rc, false, "fsync %s: %s", d->path, uv_strerror(rc));
        return;
    }
    if (d->mdctx) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        EVP_DigestFinal_ex(d->mdctx, md, &n);
        for (unsigned i = 0; i < n && i * 2 + 2 < sizeof(d->res.digest); i++)
            snprintf(d->res.digest + i * 2, 3, "%02x", md[i]);
    }
    d->res.status = 0;
    finish(d);
}

static void start_sync(struct download *d)
{
    d->st = D_SYNCING;
    d->fsreq.data = d;
    int rc = uv_fs_fsync(d->c->loop, &d->fsreq, d->fd, after_sync);
    if (rc < 0)
        fail(d, rc, false, "fsync %s: %s", d->path, uv_strerror(rc));
}

/* ---- the transfer ------------------------------------------------------------------------ */

static void reset_digest(struct download *d)
{
    if (d->mdctx)
        EVP_DigestInit_ex(d->mdctx, d->md, NULL);
}

struct wreq {
    uv_fs_t req;
    struct download *d;
    size_t len;
    char data[];
};

static void complete(struct download *d);

static void after_write(uv_fs_t *req)
{
    struct wreq *w = (struct wreq *)req;
    struct download *d = w->d;
    ssize_t r = req->result;

    uv_fs_req_cleanup(req);
    d->writing -= w->len;
    d->n_writes--;
    if (r < 0 && !d->write_err)
        d->write_err = (int)r;
    else if (r >= 0 && (size_t)r != w->len && !d->write_err)
        d->write_err = -EIO;
    free(w);
    if (d->ended) {
        if (d->n_writes == 0)
            complete(d);
        return;
    }
    if (d->paused && d->easy && (d->writing < WRITE_HIGH / 2 || d->write_err)) {
        struct download_ctx *c = d->c;
        d->paused = false;
        c->in_curl = true; /* unpausing may deliver data to on_write at once */
        C.easy_pause(d->easy, CURLPAUSE_CONT);
        c->in_curl = false;
        pump(c);
    }
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct download *d = arg;
    size_t n = size * nmemb;
    struct wreq *w;
    uv_buf_t buf;

    if (d->cancelled || d->write_err)
        return 0;
    if (!d->status_checked) {
        long code = 0;
        C.easy_getinfo(d->easy, CURLINFO_RESPONSE_CODE, &code);
        d->res.http_code = code;
        if (code == 200 && d->offset > 0) {
            /* The server ignored Range: start the file and the digest again. No write is in
             * flight yet (this is the response's first data). */
            if (ftruncate(d->fd, 0) < 0) {
                d->write_err = -errno;
                return 0;
            }
            d->offset = d->bytes = 0;
            reset_digest(d);
        } else if (code != 200 && !(code == 206 && d->offset > 0)) {
            d->write_err = -EPROTO;
            return 0;
        }
        d->status_checked = true;
    }
    if (d->expect > 0 && d->bytes + (int64_t)n > d->expect) {
        d->write_err = -EFBIG;
        return 0;
    }
    if (d->writing >= WRITE_HIGH) {
        d->paused = true; /* curl keeps these bytes and offers them again once unpaused */
        return CURL_WRITEFUNC_PAUSE;
    }
    w = malloc(sizeof(*w) + n);
    if (!w) {
        d->write_err = -ENOMEM;
        return 0;
    }
    w->d = d;
    w->len = n;
    memcpy(w->data, ptr, n);
    buf = uv_buf_init(w->data, (unsigned)n);
    if (uv_fs_write(d->c->loop, &w->req, d->fd, &buf, 1, d->bytes, after_write) < 0) {
        free(w);
        d->write_err = -EIO;
        return 0;
    }
    d->writing += n;
    d->n_writes++;
    if (d->mdctx)
        EVP_DigestUpdate(d->mdctx, ptr, n);
    d->bytes += (int64_t)n;
    if (d->progress && d->bytes - d->last_progress >= PROGRESS_STEP) {
        d->last_progress = d->bytes;
        d->progress(d->arg, d->bytes, d->expect);
    }
    return n;
}

static int map_curl(CURLcode cc, bool *retryable)
{
    *retryable = false;
    switch (cc) {
    case CURLE_OK:
        return 0;
    case CURLE_UNSUPPORTED_PROTOCOL:
        return -EPROTONOSUPPORT;
    case CURLE_TOO_MANY_REDIRECTS:
        return -ELOOP;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
        return -EACCES;
    case CURLE_OUT_OF_MEMORY:
        return -ENOMEM;
    case CURLE_OPERATION_TIMEDOUT:
        *retryable = true;
        return -ETIMEDOUT;
    case CURLE_COULDNT_CONNECT:
        *retryable = true;
        return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        *retryable = true;
        return -EHOSTUNREACH;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        *retryable = true;
        return -ECONNRESET;
    default:
        return -EIO;
    }
}

/* The transfer is over and no write is in flight: report, retry-ably or not, or fsync. */
static void complete(struct download *d)
{
    bool retry = false;
    CURLcode cc = d->cc;
    int st = map_curl(cc, &retry);
    long code = d->res.http_code;

    if (d->cancelled) {
        finish(d);
        return;
    }
    if (d->write_err) { /* whatever curl says: a failed write leaves the file suspect */
        if (d->write_err == -EPROTO)
            goto http_status;
        if (d->write_err == -EFBIG) {
            fail(d, -EFBIG, false, "the server sent more than the announced %lld bytes",
                 (long long)d->expect);
            return;
        }
        fail(d, d->write_err, false, "writing %s: %s", d->path, strerror(-d->write_err));
        return;
    }
    if (st < 0) {
        fail(d, st, retry, "%s", d->errbuf[0] ? d->errbuf : C.easy_strerror(cc));
        return;
    }
    if (!d->status_checked && !(code == 200 || (code == 206 && d->offset > 0)))
        goto http_status;
    if (d->expect > 0 && d->bytes < d->expect) {
        fail(d, -ECONNRESET, true, "the connection ended after %lld of %lld bytes",
             (long long)d->bytes, (long long)d->expect);
        return;
    }
    start_sync(d);
    return;
http_status:
    if (code == 416 && d->offset > 0) {
        /* Our prefix does not fit what the server has: start again from nothing. */
        if (ftruncate(d->fd, 0) == 0)
            d->bytes = 0;
        fail(d, -EPROTO, true, "HTTP 416 for a resume at %lld bytes; restarting from 0",
             (long long)d->offset);
        return;
    }
    fail(d, -EPROTO, false, "HTTP status %ld", code);
}

/* Ends d's transfer (curl said done, or it is cancelled); completes once its writes are done. */
static void end_transfer(struct download *d, CURLcode cc)
{
    long code = 0;

    if (d->easy) {
        C.easy_getinfo(d->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code)
            d->res.http_code = code;
        C.multi_remove_handle(d->c->multi, d->easy);
        C.easy_cleanup(d->easy);
        d->easy = NULL;
    }
    d->cc = cc;
    d->ended = true;
    if (d->n_writes == 0)
        complete(d);
}

static void check_info(struct download_ctx *c)
{
    CURLMsg *m;
    int left;

    while ((m = C.multi_info_read(c->multi, &left))) {
        struct download *d = NULL;
        if (m->msg != CURLMSG_DONE)
            continue;
        C.easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&d);
        if (d)
            end_transfer(d, m->data.result);
    }
}

static void socket_action(struct download_ctx *c, curl_socket_t fd, int flags)
{
    int running = 0;
    c->in_curl = true;
    C.multi_socket_action(c->multi, fd, flags, &running);
    c->in_curl = false;
    check_info(c);
    pump(c);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sockctx *sc = h->data;
    int flags = 0;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    socket_action(sc->c, sc->fd, flags);
}

static void on_timeout(uv_timer_t *t)
{
    socket_action(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static void sock_closed(uv_handle_t *h)
{
    free(h->data);
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct download_ctx *c = userp;
    struct sockctx *sc = socketp;
    int ev = 0;

    if (what == CURL_POLL_REMOVE) {
        if (sc) {
            uv_poll_stop(&sc->poll);
            uv_close((uv_handle_t *)&sc->poll, sock_closed);
            C.multi_assign(c->multi, s, NULL);
        }
        return 0;
    }
    if (!sc) {
        sc = calloc(1, sizeof(*sc));
        if (!sc)
            return -1;
        sc->fd = s;
        sc->c = c;
        if (uv_poll_init_socket(c->loop, &sc->poll, s) < 0) {
            free(sc);
            return -1;
        }
        sc->poll.data = sc;
        C.multi_assign(c->multi, s, sc);
    }
    if (what & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&sc->poll, ev, on_poll);
    return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
    struct download_ctx *c = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static void start_transfer(struct download *d)
{
    struct download_ctx *c = d->c;
    char range[48];
    CURL *e;

    if (d->expect > 0 && d->offset == d->expect) { /* all there already */
        d->status_checked = true;
        d->ended = true;
        start_sync(d);
        return;
    }
    e = C.easy_init();
    if (!e) {
        fail(d, -ENOMEM, false, "curl_easy_init failed");
        return;
    }
    d->easy = e;
    d->st = D_ACTIVE;
    C.easy_setopt(e, CURLOPT_URL, d->url);
    C.easy_setopt(e, CURLOPT_PRIVATE, (char *)d);
    C.easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    C.easy_setopt(e, CURLOPT_WRITEDATA, d);
    C.easy_setopt(e, CURLOPT_ERRORBUFFER, d->errbuf);
    C.easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    C.easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    C.easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
    C.easy_setopt(e, CURLOPT_PROTOCOLS_STR, d->allow_http ? "http,https" : "https");
    C.easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, d->allow_http ? "http,https" : "https");
    C.easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    C.easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (d->ca_file)
        C.easy_setopt(e, CURLOPT_CAINFO, d->ca_file);
    C.easy_setopt(e, CURLOPT_CONNECTTIMEOUT, c->lim.connect_timeout);
    C.easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    C.easy_setopt(e, CURLOPT_LOW_SPEED_TIME, c->lim.stall_timeout);
    C.easy_setopt(e, CURLOPT_USERAGENT, "aligw/" ALIGW_VERSION);
    if (c->lim.max_rate > 0) {
        curl_off_t share = (curl_off_t)(c->lim.max_rate / c->lim.max_concurrent);
        C.easy_setopt(e, CURLOPT_MAX_RECV_SPEED_LARGE, share > 0 ? share : (curl_off_t)1);
    }
    if (d->offset > 0) {
        snprintf(range, sizeof(range), "%lld-", (long long)d->offset);
        C.easy_setopt(e, CURLOPT_RANGE, range);
    }
    if (C.multi_add_handle(c->multi, e) != CURLM_OK) {
        C.easy_cleanup(e);
        d->easy = NULL;
        fail(d, -ENOMEM, false, "curl_multi_add_handle failed");
    }
}

static void hash_work(uv_work_t *w)
{
    struct download *d = w->data;
    unsigned char buf[64 * 1024];
    int64_t off = 0;

    while (off < d->offset) {
        size_t want = (size_t)(d->offset - off < (int64_t)sizeof(buf) ? d->offset - off
                                                                      : (int64_t)sizeof(buf));
        ssize_t n = pread(d->fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            d->work_err = n < 0 ? -errno : -EIO;
            return;
        }
        EVP_DigestUpdate(d->mdctx, buf, (size_t)n);
        off += n;
    }
}

static void after_hash(uv_work_t *w, int status)
{
    struct download *d = w->data;
    if (d->cancelled) {
        finish(d);
        return;
    }
    if (d->work_err < 0) {
        fail(d, d->work_err, false, "reading %s to resume: %s", d->path, strerror(-d->work_err));
        return;
    }
    start_transfer(d);
}

/* Takes a slot for d: opens the file, then hashes its prefix or starts the transfer. */
static void begin(struct download *d)
{
    struct download_ctx *c = d->c;
    struct stat st;

    d->st = D_HASHING;
    d->next = c->active;
    if (c->active)
        c->active->prev = d;
    c->active = d;
    c->n_active++;

    d->fd = open(d->path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (d->fd < 0) {
        fail(d, -errno, false, "open %s: %s", d->path, strerror(errno));
        return;
    }
    if (fstat(d->fd, &st) < 0 || (!d->resume && ftruncate(d->fd, 0) < 0)) {
        fail(d, -errno, false, "%s: %s", d->path, strerror(errno));
        return;
    }
    d->offset = d->resume ? (int64_t)st.st_size : 0;
    if (d->expect > 0 && d->offset > d->expect) {
        if (ftruncate(d->fd, 0) < 0) {
            fail(d, -errno, false, "truncate %s: %s", d->path, strerror(errno));
            return;
        }
        d->offset = 0;
    }
    d->bytes = d->last_progress = d->offset;
    if (d->md) {
        d->mdctx = EVP_MD_CTX_new();
        if (!d->mdctx || !EVP_DigestInit_ex(d->mdctx, d->md, NULL)) {
            fail(d, -ENOMEM, false, "digest context");
            return;
        }
    }
    if (d->md && d->offset > 0) {
        d->work.data = d;
        if (uv_queue_work(c->loop, &d->work, hash_work, after_hash) == 0)
            return;
        fail(d, -ENOMEM, false, "cannot queue the resume hash");
        return;
    }
    start_transfer(d);
}

static void pump(struct download_ctx *c)
{
    if (c->in_curl || c->closing)
        return;
    while (c->waiting && c->n_active < c->lim.max_concurrent) {
        struct download *d = c->waiting;
        list_unlink(c, d);
        begin(d);
    }
}

/* ---- public ------------------------------------------------------------------------------ */

static void fill_limits(struct download_limits *dst, const struct download_limits *src)
{
    struct download_limits l = {0};
    if (src)
        l = *src;
    if (l.max_concurrent <= 0)
        l.max_concurrent = 4;
    if (l.max_rate < 0)
        l.max_rate = 0;
    if (l.connect_timeout <= 0)
        l.connect_timeout = 30;
    if (l.stall_timeout <= 0)
        l.stall_timeout = 60;
    *dst = l;
}

int download_init(uv_loop_t *loop, const struct download_limits *lim, struct download_ctx **out)
{
    struct download_ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->loop = loop;
    fill_limits(&c->lim, lim);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    *out = c;
    return 0;
}

void download_set_limits(struct download_ctx *c, const struct download_limits *lim)
{
    fill_limits(&c->lim, lim);
    pump(c);
}

static int ensure_multi(struct download_ctx *c)
{
    static uv_once_t once = UV_ONCE_INIT;

    if (c->multi)
        return 0;
    uv_once(&once, curl_load_once);
    if (!C.lib) {
        static bool logged;
        if (!logged)
            log_error("HTTPS downloads need libcurl (Debian package libcurl4): %s", C.error);
        logged = true;
        return -ENOPKG;
    }
    c->multi = C.multi_init();
    if (!c->multi)
        return -ENOMEM;
    C.multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    C.multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    C.multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    C.multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    return 0;
}

int download_start(struct download_ctx *c, const struct download_req *req, struct download **out)
{
    struct download *d;
    const EVP_MD *md = NULL;
    int rc;

    if (!req || !req->url || !req->path || !req->done || c->closing)
        return -EINVAL;
    if (strncasecmp(req->url, "https://", 8) != 0 &&
        !(req->allow_http && strncasecmp(req->url, "http://", 7) == 0))
        return -EINVAL;
    if (req->digest && !(md = EVP_get_digestbyname(req->digest)))
        return -EINVAL;
    if ((rc = ensure_multi(c)) < 0)
        return rc;
    d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    d->c = c;
    d->fd = -1;
    d->url = strdup(req->url);
    d->path = strdup(req->path);
    d->ca_file = req->ca_file ? strdup(req->ca_file) : NULL;
    if (!d->url || !d->path || (req->ca_file && !d->ca_file)) {
        dl_free(d);
        return -ENOMEM;
    }
    d->resume = req->resume;
    d->allow_http = req->allow_http;
    d->expect = req->expect_size > 0 ? req->expect_size : 0;
    d->md = md;
    d->progress = req->progress;
    d->done = req->done;
    d->arg = req->arg;
    d->st = D_WAITING;
    d->prev = c->waiting_tail;
    if (c->waiting_tail)
        c->waiting_tail->next = d;
    else
        c->waiting = d;
    c->waiting_tail = d;
    c->n_waiting++;
    *out = d;
    pump(c);
    return 0;
}

void download_cancel(struct download *d)
{
    struct download_ctx *c;

    if (!d || d->cancelled)
        return;
    c = d->c;
    d->cancelled = true;
    switch (d->st) {
    case D_WAITING:
        list_unlink(c, d);
        dl_free(d);
        break;
    case D_ACTIVE:
        /* In a curl callback the write callback refuses the next bytes and curl ends the
         * transfer; otherwise it ends now. Either way d goes once its writes are done. */
        if (!c->in_curl && !d->ended)
            end_transfer(d, CURLE_ABORTED_BY_CALLBACK);
        break;
    case D_HASHING:
    case D_SYNCING:
        break; /* the thread-pool callback frees it */
    }
}

void download_counts(const struct download_ctx *c, int *running, int *waiting)
{
    *running = c->n_active;
    *waiting = c->n_waiting;
}

static void ctx_closed(uv_handle_t *h)
{
    free(h->data);
}

void download_close(struct download_ctx *c)
{
    if (!c || c->closing)
        return;
    c->closing = true;
    while (c->waiting) {
        struct download *d = c->waiting;
        list_unlink(c, d);
        dl_free(d);
    }
    for (struct download *d = c->active, *next; d; d = next) {
        next = d->next;
        d->cancelled = true;
        if (d->st == D_ACTIVE && !d->ended)
            end_transfer(d, CURLE_ABORTED_BY_CALLBACK);
        /* the others finish in their thread-pool callbacks (the loop still runs) */
    }
    if (c->multi)
        C.multi_cleanup(c->multi);
    c->multi = NULL;
    uv_timer_stop(&c->timer);
    if (c->n_active == 0 && !uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, ctx_closed);
    /* else the last thread-pool callback closes it (see finish) */
}
