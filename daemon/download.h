/*
 * download: HTTPS downloads to files on the daemon's loop, for firmware (ota.c) and for anything
 * else that fetches a file by URL (remote configuration, issue 18). It owns one libcurl multi
 * handle driven by libuv — one uv_poll_t per socket curl asks for (CURLMOPT_SOCKETFUNCTION) and
 * one uv_timer_t for curl's timeout (CURLMOPT_TIMERFUNCTION) — so a hundred downloads cost a
 * hundred sockets and no thread. Bytes are written to the target file as they arrive (never
 * buffered whole) and fed to an incremental OpenSSL digest; a file that already holds a prefix is
 * resumed with "Range:" after its bytes are hashed in the thread pool; the file is fsynced
 * (thread pool) before success is reported. A gateway-wide limit on concurrent transfers queues
 * the rest; a gateway-wide byte rate is shared equally by the transfer slots.
 *
 * libcurl is loaded on first use (dlopen), as in dynreg.c: a gateway that never downloads never
 * maps it. Loop thread only.
 */
#ifndef ALIGW_DOWNLOAD_H
#define ALIGW_DOWNLOAD_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

struct download_ctx;
struct download;

struct download_limits {
    int max_concurrent;   /* transfers at once (others wait in order); <= 0: 4 */
    int64_t max_rate;     /* bytes/s for all transfers together, 0 = unlimited */
    long connect_timeout; /* seconds; 0: 30 */
    long stall_timeout;   /* seconds below 1 byte/s before giving up; 0: 60 */
};

/* What a finished (not cancelled) download reports. */
struct download_result {
    /*
     * 0, or: -EFBIG (the server sent more than expect_size), -EPROTO (HTTP status not 200/206,
     * see http_code), -EPROTONOSUPPORT (URL scheme not allowed), -ELOOP (too many redirects),
     * -ETIMEDOUT, -ECONNRESET/-ECONNREFUSED/-EHOSTUNREACH (network; resumable), -EACCES (TLS
     * certificate refused), -EIO/-ENOSPC (writing the file), -ENOMEM, -ENOPKG (libcurl missing).
     */
    int status;
    long http_code;   /* last HTTP status seen, 0 if none */
    int64_t bytes;    /* bytes in the file now (including a resumed prefix) */
    char digest[129]; /* lowercase hex digest of the file's bytes, when a digest was asked */
    char error[256];  /* human text for a failure ("" on success) */
    bool retryable;   /* a network error: starting again resumes from the file's bytes */
};

typedef void (*download_done_cb)(void *arg, const struct download_result *r);
/* Bytes now in the file and the expected total (0 if unknown). Called at most every 64 KiB. */
typedef void (*download_progress_cb)(void *arg, int64_t bytes, int64_t total);

struct download_req {
    const char *url;     /* borrowed for the call */
    const char *path;    /* target file (created 0640), borrowed */
    bool resume;         /* keep the file's bytes and ask for the rest with Range: */
    int64_t expect_size; /* total size when known: more bytes fail with -EFBIG; 0 = unknown */
    const char *digest;  /* "md5", "sha256" (OpenSSL names) or NULL */
    const char *ca_file; /* NULL: the system's trust store */
    bool allow_http;     /* also accept http:// (never by default) */
    download_progress_cb progress; /* may be NULL */
    download_done_cb done;         /* required: called exactly once unless cancelled */
    void *arg;
};

/* Creates the downloader on loop (libcurl not loaded yet). Returns 0, -ENOMEM. */
int download_init(uv_loop_t *loop, const struct download_limits *lim, struct download_ctx **out);
/* New limits for transfers started from now on. */
void download_set_limits(struct download_ctx *c, const struct download_limits *lim);

/*
 * Starts (or queues) a download. Returns 0 and *out (valid until done is called or
 * download_cancel), or fails at once without calling back: -EINVAL (no URL/path/callback, URL
 * not https:// unless allow_http, unknown digest), -ENOPKG (libcurl.so.4 cannot be loaded,
 * logged once), -ENOMEM.
 */
int download_start(struct download_ctx *c, const struct download_req *req, struct download **out);
/* Stops d; its callback is never called. The partial file stays (a later start resumes it). */
void download_cancel(struct download *d);
/* Transfers running and waiting. */
void download_counts(const struct download_ctx *c, int *running, int *waiting);
/* Cancels everything and closes the handles; ctx is freed once the loop has closed them. */
void download_close(struct download_ctx *c);

#endif
