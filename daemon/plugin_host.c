/*
 * aligw-plugin-host: runs one southbound plugin in a process of its own, so that a crash, exit
 * or hang of the plugin takes down only this process. aligwd execs it as
 *
 *     aligw-plugin-host PLUGIN.so FD
 *
 * with FD one end of a socketpair, and supervises it (restarts, heartbeats). This program owns
 * the plugin's side of include/aligw/plugin.h: it loads the .so with the same checks as aligwd,
 * gives the plugin a host table whose functions validate what they can locally and turn each
 * call into a frame (plugin_wire.h) on a bounded queue (property and event posts are built into
 * their Alink topic and payload here, so that JSON work stays off aligwd's loop), which one writer
 * thread sends to aligwd; the main thread reads aligwd's frames (downlinks, post completions,
 * pings, stop) and calls the plugin's entry points, so that a plugin blocking an entry point stops
 * answering pings and is seen as hung.
 *
 * Before loading anything it drops what a plugin does not need: no new privileges, death with
 * aligwd (PDEATHSIG), no inherited descriptors but the socket and stdio, none of aligwd's
 * systemd or credential variables; after loading, a Landlock ruleset (when the kernel has it)
 * that leaves every path reachable except aligwd's state directory, the outbox's directory, the
 * runtime directory (API socket) and aligwd's /proc entry, and that forbids signalling
 * processes outside the plugin host.
 */
#include <aligw/plugin.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <linux/landlock.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "alink.h"
#include "plugin_load.h"
#include "plugin_wire.h"

#define Q_MAX_FRAMES 10000
#define Q_MAX_BYTES (16u << 20)
#define MAX_PAYLOAD (1024 * 1024)
#define MAX_SUBS 64

struct frame {
    struct frame *next;
    size_t len;
    char data[];
};

static struct {
    int fd;
    const char *so;
    char label[128];
    struct aligw_plugin desc;
    void *dl, *instance;
    struct aligw_device *devs;
    char **keys;
    size_t n_devs;

    pthread_mutex_t lock;
    pthread_cond_t cond, empty;
    struct frame *head, **tail;
    size_t q_n, q_bytes;
    bool accepting, closing, writer_done;
    int n_subs;
} H = {.lock = PTHREAD_MUTEX_INITIALIZER,
       .cond = PTHREAD_COND_INITIALIZER,
       .empty = PTHREAD_COND_INITIALIZER};

/* ---- the outgoing queue ---- */

/* Writes every byte of iov[0..n) (iov is consumed). */
static int writev_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* Sends the queue in batches: every frame queued so far goes out in one writev (up to 64), so
 * a busy plugin costs a system call per batch, not per call. */
static void *writer(void *arg)
{
    struct frame *batch[64];
    struct iovec iov[64];
    (void)arg;
    pthread_mutex_lock(&H.lock);
    for (;;) {
        while (!H.head && !H.closing)
            pthread_cond_wait(&H.cond, &H.lock);
        if (!H.head)
            break;
        int n = 0;
        while (H.head && n < 64) {
            struct frame *f = H.head;
            H.head = f->next;
            H.q_n--;
            H.q_bytes -= f->len;
            batch[n] = f;
            iov[n].iov_base = f->data;
            iov[n].iov_len = f->len;
            n++;
        }
        if (!H.head)
            H.tail = &H.head;
        pthread_mutex_unlock(&H.lock);
        if (writev_all(H.fd, iov, n) < 0)
            _exit(0); /* aligwd is gone */
        for (int i = 0; i < n; i++)
            free(batch[i]);
        pthread_mutex_lock(&H.lock);
        if (!H.head)
            pthread_cond_broadcast(&H.empty);
    }
    H.writer_done = true;
    pthread_cond_broadcast(&H.empty);
    pthread_mutex_unlock(&H.lock);
    return NULL;
}

/* Queues a finished frame. force: control frames that bypass the caps (pong, started, failed). */
static int send_frame(struct wire_out *w, bool force)
{
    int rc = wire_end(w);
    if (rc < 0)
        return rc == -E2BIG ? -E2BIG : -ENOMEM;
    struct frame *f = malloc(sizeof *f + w->len);
    if (!f)
        return -ENOMEM;
    f->next = NULL;
    f->len = w->len;
    memcpy(f->data, w->p, w->len);
    pthread_mutex_lock(&H.lock);
    if (!H.accepting && !force) {
        rc = -ESHUTDOWN;
    } else if (!force && (H.q_n >= Q_MAX_FRAMES || H.q_bytes + f->len > Q_MAX_BYTES)) {
        rc = -EAGAIN;
    } else {
        *H.tail = f;
        H.tail = &f->next;
        H.q_n++;
        H.q_bytes += f->len;
        pthread_cond_signal(&H.cond);
    }
    pthread_mutex_unlock(&H.lock);
    if (rc < 0)
        free(f);
    return rc;
}

/* Sends what is queued and stops the writer. */
static void flush_and_close(void)
{
    pthread_mutex_lock(&H.lock);
    H.closing = true;
    pthread_cond_broadcast(&H.cond);
    while (!H.writer_done)
        pthread_cond_wait(&H.empty, &H.lock);
    pthread_mutex_unlock(&H.lock);
}

/* Each thread builds its frames in its own buffer (freed when a plugin thread exits). */
static __thread struct wire_out tw_buf;
static pthread_key_t tw_key;

static void tw_free(void *w)
{
    wire_free(w);
}

static struct wire_out *tw_get(void)
{
    if (!tw_buf.cap)
        pthread_setspecific(tw_key, &tw_buf);
    return &tw_buf;
}
#define tw (*tw_get())

/* ---- host functions (any plugin thread) ---- */

static long dev_index(const struct aligw_device *dev)
{
    uintptr_t a = (uintptr_t)dev, lo = (uintptr_t)H.devs;
    if (!dev || !H.n_devs || a < lo || a >= lo + H.n_devs * sizeof *H.devs ||
        (a - lo) % sizeof *H.devs)
        return -1;
    return (long)((a - lo) / sizeof *H.devs);
}

static bool json_kind_ok(const char *text, bool object_only)
{
    json_t *j = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
    bool ok = j && (json_is_object(j) || (!object_only && json_is_array(j)));
    json_decref(j);
    return ok;
}

/* Property and event posts are built here (alink is pure) and sent as ready topic + payload:
 * the JSON work stays in the plugin's process, off aligwd's loop. aligwd checks the topic is
 * the device's, as for publish_raw: a plugin can publish any payload on its own device's
 * topics anyway, so this trusts it with nothing new. */
static _Atomic uint32_t next_msg_id;

static int send_built(long i, struct alink_msg *m, bool tracked, uint64_t cookie)
{
    int rc = -E2BIG;
    if (m->len <= MAX_PAYLOAD) {
        wire_begin(&tw, W_RAW);
        wire_u64(&tw, (uint64_t)i);
        wire_u64(&tw, tracked);
        wire_u64(&tw, cookie);
        wire_u64(&tw, 1);
        wire_str(&tw, m->topic);
        wire_bytes(&tw, m->payload, m->len);
        rc = send_frame(&tw, false);
    }
    alink_msg_free(m);
    return rc;
}

static int do_props(long i, const char *params, int64_t time_ms, bool tracked, uint64_t cookie)
{
    struct alink_msg m;
    json_t *j;
    int rc;
    if (!params)
        return -EINVAL;
    if (strlen(params) > MAX_PAYLOAD)
        return -E2BIG;
    if (!(j = json_loads(params, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL)))
        return -EINVAL;
    rc = alink_property_post(H.devs[i].product_key, H.devs[i].device_name,
                             atomic_fetch_add(&next_msg_id, 1), j, time_ms < 0 ? 0 : time_ms, true,
                             &m);
    json_decref(j);
    return rc < 0 ? rc : send_built(i, &m, tracked, cookie);
}

static int do_event(long i, const char *event_id, const char *value, int64_t time_ms, bool tracked,
                    uint64_t cookie)
{
    struct alink_msg m;
    json_t *j = NULL;
    int rc;
    if (value && strlen(value) > MAX_PAYLOAD)
        return -E2BIG;
    if (value && !(j = json_loads(value, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL)))
        return -EINVAL;
    rc = alink_event_post(H.devs[i].product_key, H.devs[i].device_name,
                          atomic_fetch_add(&next_msg_id, 1), event_id, j, time_ms < 0 ? 0 : time_ms,
                          true, &m);
    json_decref(j);
    return rc < 0 ? rc : send_built(i, &m, tracked, cookie);
}

static int do_raw(long i, const char *topic, const void *payload, size_t len, int qos, bool tracked,
                  uint64_t cookie)
{
    if (!topic || !*topic || strpbrk(topic, "+#") || strlen(topic) > 512 ||
        (qos != 0 && qos != 1) || (len && !payload))
        return -EINVAL;
    if (len > MAX_PAYLOAD)
        return -E2BIG;
    wire_begin(&tw, W_RAW);
    wire_u64(&tw, (uint64_t)i);
    wire_u64(&tw, tracked);
    wire_u64(&tw, cookie);
    wire_u64(&tw, (uint64_t)qos);
    wire_str(&tw, topic);
    wire_bytes(&tw, payload, len);
    return send_frame(&tw, false);
}

static int h_post_properties(const struct aligw_host *h, const struct aligw_device *dev,
                             const char *params_json, int64_t time_ms)
{
    long i = dev_index(dev);
    return i < 0 ? -ENODEV : do_props(i, params_json, time_ms, false, 0);
}

static int h_post_event(const struct aligw_host *h, const struct aligw_device *dev,
                        const char *event_id, const char *value_json, int64_t time_ms)
{
    long i = dev_index(dev);
    return i < 0 ? -ENODEV : do_event(i, event_id, value_json, time_ms, false, 0);
}

static int h_publish_raw(const struct aligw_host *h, const struct aligw_device *dev,
                         const char *topic, const void *payload, size_t len, int qos)
{
    long i = dev_index(dev);
    return i < 0 ? -ENODEV : do_raw(i, topic, payload, len, qos, false, 0);
}

static int h_reply(const struct aligw_host *h, const struct aligw_device *dev,
                   const char *request_id, int code, const char *data_json)
{
    long i = dev_index(dev);
    if (i < 0)
        return -ENODEV;
    if (!request_id || strlen(request_id) > 64 || (data_json && !json_kind_ok(data_json, false)))
        return -EINVAL;
    wire_begin(&tw, W_REPLY);
    wire_u64(&tw, (uint64_t)i);
    wire_i64(&tw, code);
    wire_str(&tw, request_id);
    wire_u64(&tw, data_json != NULL);
    wire_str(&tw, data_json);
    return send_frame(&tw, false);
}

static int h_set_device_state(const struct aligw_host *h, const struct aligw_device *dev, int ok,
                              const char *reason)
{
    long i = dev_index(dev);
    char buf[201];
    if (i < 0)
        return -ENODEV;
    snprintf(buf, sizeof buf, "%s", reason ? reason : (ok ? "ok" : "error"));
    wire_begin(&tw, W_STATE);
    wire_u64(&tw, (uint64_t)i);
    wire_u64(&tw, ok ? 1 : 0);
    wire_str(&tw, buf);
    return send_frame(&tw, false);
}

static void h_log(const struct aligw_host *h, int level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    if (!fmt)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    wire_begin(&tw, W_LOG);
    wire_i64(&tw, level);
    wire_str(&tw, buf);
    send_frame(&tw, false); /* a full queue drops log lines */
}

static int h_subscribe(const struct aligw_host *h, const struct aligw_device *dev,
                       const char *filter)
{
    long i = dev_index(dev);
    int rc;
    if (i < 0)
        return -ENODEV;
    if (!filter || !*filter || strlen(filter) > 512)
        return -EINVAL;
    pthread_mutex_lock(&H.lock);
    rc = H.n_subs >= MAX_SUBS ? -ENOSPC : 0;
    if (rc == 0)
        H.n_subs++;
    pthread_mutex_unlock(&H.lock);
    if (rc < 0)
        return rc;
    wire_begin(&tw, W_SUB);
    wire_u64(&tw, (uint64_t)i);
    wire_str(&tw, filter);
    return send_frame(&tw, false);
}

static int h_post(const struct aligw_host *h, const struct aligw_device *dev,
                  const struct aligw_post *p)
{
    long i = dev_index(dev);
    if (i < 0)
        return -ENODEV;
    if (!H.desc.on_post_done)
        return -ENOTSUP;
    if (!p || p->size < offsetof(struct aligw_post, cookie) + sizeof p->cookie)
        return -EINVAL;
    switch (p->kind) {
    case ALIGW_POST_PROPERTIES:
        return do_props(i, p->params_json, p->time_ms, true, p->cookie);
    case ALIGW_POST_EVENT:
        return do_event(i, p->event_id, p->params_json, p->time_ms, true, p->cookie);
    case ALIGW_POST_RAW:
        return do_raw(i, p->topic, p->payload, p->len, p->qos, true, p->cookie);
    }
    return -EINVAL;
}

static int h_device_info(const struct aligw_host *h, const struct aligw_device *dev,
                         struct aligw_device_info *info)
{
    long i = dev_index(dev);
    if (i < 0)
        return -ENODEV;
    if (!info || info->size < offsetof(struct aligw_device_info, key) + sizeof info->key)
        return -EINVAL;
    info->product_key = dev->product_key;
    info->device_name = dev->device_name;
    info->index = dev->index;
    info->key = H.keys[i];
    return 0;
}

/* ABI 1.2: firmware answers travel to aligwd, checked here first by the same rules (plugin_load)
 * so that the plugin gets its -EINVAL at once. */
static int h_firmware_result(const struct aligw_host *h, const struct aligw_device *dev,
                             int64_t job_id, int step, const char *version, const char *desc)
{
    long i = dev_index(dev);
    char buf[129];
    if (i < 0)
        return -ENODEV;
    if (!plugin_fw_result_ok(job_id, step, version))
        return -EINVAL;
    snprintf(buf, sizeof buf, "%s", desc ? desc : "");
    wire_begin(&tw, W_FW_RESULT);
    wire_u64(&tw, (uint64_t)i);
    wire_i64(&tw, job_id);
    wire_i64(&tw, step);
    wire_str(&tw, version);
    wire_str(&tw, buf);
    return send_frame(&tw, false);
}

static int h_set_firmware_version(const struct aligw_host *h, const struct aligw_device *dev,
                                  const char *module, const char *version)
{
    long i = dev_index(dev);
    if (i < 0)
        return -ENODEV;
    if (!plugin_fw_version_ok(module, version))
        return -EINVAL;
    wire_begin(&tw, W_FW_VERSION);
    wire_u64(&tw, (uint64_t)i);
    wire_str(&tw, module);
    wire_str(&tw, version);
    return send_frame(&tw, false);
}

/* ABI 1.3: a local API request, checked here by the same rules as in aligwd (which checks it
 * again) and sent; the answer comes back as W_ANSWER. */
static int h_request(const struct aligw_host *h, const struct aligw_device *dev,
                     const char *request_json, uint64_t cookie)
{
    long i = dev_index(dev);
    char *text;
    int rc;
    if (i < 0)
        return -ENODEV;
    if (!H.desc.on_answer)
        return -ENOTSUP;
    if ((rc = plugin_request_prepare(request_json, H.keys[i], &text)) < 0)
        return rc;
    wire_begin(&tw, W_REQUEST);
    wire_u64(&tw, (uint64_t)i);
    wire_u64(&tw, cookie);
    wire_str(&tw, text);
    free(text);
    return send_frame(&tw, false);
}

static const struct aligw_host host_table = {
    .abi_major = ALIGW_PLUGIN_ABI_MAJOR,
    .abi_minor = ALIGW_PLUGIN_ABI_MINOR,
    .size = sizeof(struct aligw_host),
    .post_properties = h_post_properties,
    .post_event = h_post_event,
    .reply = h_reply,
    .publish_raw = h_publish_raw,
    .set_device_state = h_set_device_state,
    .log = h_log,
    .subscribe = h_subscribe,
    .post = h_post,
    .device_info = h_device_info,
    .firmware_result = h_firmware_result,
    .set_firmware_version = h_set_firmware_version,
    .request = h_request,
};

/* ---- hardening ---- */

static void harden_early(void)
{
    static const char *const drop[] = {"NOTIFY_SOCKET",        "WATCHDOG_PID", "WATCHDOG_USEC",
                                       "LISTEN_FDS",           "LISTEN_PID",   "LISTEN_FDNAMES",
                                       "CREDENTIALS_DIRECTORY"};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    for (size_t i = 0; i < sizeof drop / sizeof *drop; i++)
        unsetenv(drop[i]);
    /* the socket becomes fd 3; nothing else aligwd had open stays reachable */
    if (H.fd != 3) {
        if (dup2(H.fd, 3) < 0)
            _exit(2);
        H.fd = 3;
    }
    if (syscall(SYS_close_range, 4u, ~0u, 0u) < 0) {
        for (int fd = 4; fd < 1024; fd++)
            close(fd);
    }
}

/* Newer Landlock bits than old kernel headers have; the ABI version decides what is used. */
#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)
#endif
#define LL_SCOPE_SIGNAL (1ULL << 1)

/* struct landlock_ruleset_attr of ABI 6 (the kernel takes a shorter prefix from older ABIs). */
struct ll_ruleset_attr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};

static int ll_abi(void)
{
    long v = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    return v < 0 ? 0 : (int)v;
}

static uint64_t ll_fs_rights(int abi)
{
    uint64_t r = (LANDLOCK_ACCESS_FS_MAKE_SYM << 1) - 1; /* ABI 1: bits 0..12 */
    if (abi >= 2)
        r |= LANDLOCK_ACCESS_FS_REFER;
    if (abi >= 3)
        r |= LANDLOCK_ACCESS_FS_TRUNCATE;
    if (abi >= 5)
        r |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
    return r;
}

static bool is_prefix_dir(const char *dir, const char *path)
{
    size_t n = strlen(dir);
    return strncmp(dir, path, n) == 0 && (path[n] == '/' || path[n] == '\0' || n == 1);
}

/* Allows everything beneath dir except what lies on the way to a forbidden path. */
static int ll_allow_except(int ruleset, const char *dir, char **forbid, size_t nf, uint64_t rights,
                           int depth)
{
    DIR *d;
    struct dirent *e;
    if (depth > 32 || !(d = opendir(dir)))
        return 0;
    while ((e = readdir(d))) {
        char path[PATH_MAX];
        bool on_way = false, banned = false;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", strcmp(dir, "/") ? dir : "", e->d_name);
        for (size_t i = 0; i < nf; i++) {
            if (!strcmp(forbid[i], path))
                banned = true;
            else if (is_prefix_dir(path, forbid[i]))
                on_way = true;
        }
        if (banned)
            continue;
        if (on_way) {
            ll_allow_except(ruleset, path, forbid, nf, rights, depth + 1);
            continue;
        }
        int fd = open(path, O_PATH | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct stat st;
        uint64_t r = rights;
        if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)) {
            r &= LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |
                 LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_TRUNCATE;
            r |= rights & LANDLOCK_ACCESS_FS_IOCTL_DEV;
        }
        struct landlock_path_beneath_attr pb = {.allowed_access = r, .parent_fd = fd};
        syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &pb, 0);
        close(fd);
    }
    closedir(d);
    return 0;
}

/*
 * Everything but the forbidden paths (absolute, canonical), and reading beneath each readable
 * path (the firmware directory inside the forbidden state_dir). Returns 0 when restricted, or a
 * negative errno when the kernel cannot (the host then runs without it and says so).
 */
static int landlock_forbid(char **forbid, size_t nf, char **readable, size_t nr)
{
    int abi = ll_abi(), ruleset;
    if (abi < 1)
        return -ENOTSUP;
    struct ll_ruleset_attr ra = {.handled_access_fs = ll_fs_rights(abi)};
    size_t ra_size = sizeof ra.handled_access_fs;
    if (abi >= 6) { /* signals: none to processes outside this one (aligwd included) */
        ra.scoped = LL_SCOPE_SIGNAL;
        ra_size = sizeof ra;
    }
    ruleset = (int)syscall(SYS_landlock_create_ruleset, &ra, ra_size, 0);
    if (ruleset < 0)
        return -errno;
    ll_allow_except(ruleset, "/", forbid, nf, ra.handled_access_fs, 0);
    for (size_t i = 0; i < nr; i++) {
        int fd = open(readable[i], O_PATH | O_CLOEXEC | O_DIRECTORY);
        if (fd < 0)
            continue;
        struct landlock_path_beneath_attr pb = {.allowed_access = LANDLOCK_ACCESS_FS_READ_FILE |
                                                                  LANDLOCK_ACCESS_FS_READ_DIR,
                                                .parent_fd = fd};
        syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &pb, 0);
        close(fd);
    }
    int rc = (int)syscall(SYS_landlock_restrict_self, ruleset, 0);
    rc = rc < 0 ? -errno : 0;
    close(ruleset);
    return rc;
}

/* ---- frames from aligwd ---- */

static char *rbuf;
static size_t rcap;

static ssize_t read_all(char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(H.fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Reads one frame body; false at EOF or on a protocol error. */
static bool read_frame(struct wire_in *r)
{
    uint32_t len;
    if (read_all((char *)&len, sizeof len) < 0 || len == 0 || len > WIRE_MAX_FRAME)
        return false;
    if (len > rcap) {
        char *p = realloc(rbuf, len);
        if (!p)
            return false;
        rbuf = p;
        rcap = len;
    }
    if (read_all(rbuf, len) < 0)
        return false;
    return wire_open(r, rbuf, len);
}

static void fail(int phase, int rc, const char *msg)
{
    wire_begin(&tw, W_FAILED);
    wire_u64(&tw, (uint64_t)phase);
    wire_i64(&tw, rc);
    wire_str(&tw, msg);
    send_frame(&tw, true);
    flush_and_close();
    exit(3);
}

static const struct aligw_device *dev_at(uint64_t i)
{
    return i < H.n_devs ? &H.devs[i] : NULL;
}

static void call_rc(uint64_t i, int rc, const char *req)
{
    wire_begin(&tw, W_CALL_RC);
    wire_u64(&tw, i);
    wire_i64(&tw, rc);
    wire_str(&tw, req);
    send_frame(&tw, true);
}

/* W_FW: the firmware description rebuilt and handed to on_firmware; a refusal fails the job. */
static bool serve_firmware(struct wire_in *r, const struct aligw_device *dev)
{
    struct aligw_firmware fw = {.size = sizeof fw};
    fw.job_id = wire_get_i64(r);
    fw.module = wire_get_str(r);
    fw.version = wire_get_str(r);
    fw.from_version = wire_get_str(r);
    fw.total_size = wire_get_i64(r);
    fw.is_diff = (int)wire_get_u64(r);
    uint64_t has_ext = wire_get_u64(r);
    const char *ext = wire_get_str(r);
    fw.ext_data = has_ext ? ext : NULL;
    uint64_t n = wire_get_u64(r);
    if (r->bad || !dev || n < 1 || n > 64)
        return false;
    const char *paths[64], *names[64];
    for (uint64_t k = 0; k < n; k++) {
        paths[k] = wire_get_str(r);
        names[k] = wire_get_str(r);
    }
    if (r->bad)
        return false;
    fw.n_files = (size_t)n;
    fw.paths = paths;
    fw.names = names;
    int rc = H.desc.on_firmware ? H.desc.on_firmware(H.instance, dev, &fw) : -ENOTSUP;
    if (rc < 0) {
        char desc[129];
        snprintf(desc, sizeof desc, "the plugin refused the firmware: %s",
                 strerror(-rc < 4000 ? -rc : EIO));
        h_firmware_result(&host_table, dev, fw.job_id, -4, NULL, desc);
    }
    return true;
}

static void serve(void)
{
    struct wire_in r;
    while (read_frame(&r)) {
        uint64_t i;
        const struct aligw_device *dev;
        switch (r.type) {
        case W_PING: {
            uint64_t n = wire_get_u64(&r);
            wire_begin(&tw, W_PONG);
            wire_u64(&tw, n);
            send_frame(&tw, true);
            break;
        }
        case W_SET: {
            i = wire_get_u64(&r);
            const char *req = wire_get_str(&r), *params = wire_get_str(&r);
            if (r.bad || !(dev = dev_at(i)))
                return;
            int rc = H.desc.on_property_set ? H.desc.on_property_set(H.instance, dev, req, params)
                                            : -ENOTSUP;
            if (rc < 0)
                call_rc(i, rc, req);
            break;
        }
        case W_CALL: {
            i = wire_get_u64(&r);
            const char *req = wire_get_str(&r), *svc = wire_get_str(&r), *params = wire_get_str(&r);
            if (r.bad || !(dev = dev_at(i)))
                return;
            int rc = H.desc.on_service_call
                         ? H.desc.on_service_call(H.instance, dev, req, svc, params)
                         : -ENOTSUP;
            if (rc < 0)
                call_rc(i, rc, req);
            break;
        }
        case W_MSG: {
            size_t len;
            i = wire_get_u64(&r);
            const char *topic = wire_get_str(&r), *payload = wire_get_bytes(&r, &len);
            if (r.bad || !(dev = dev_at(i)))
                return;
            if (H.desc.on_message)
                H.desc.on_message(H.instance, dev, topic, payload, len);
            break;
        }
        case W_DONE: {
            i = wire_get_u64(&r);
            uint64_t cookie = wire_get_u64(&r);
            int64_t status = wire_get_i64(&r), seq = wire_get_i64(&r);
            if (r.bad || !(dev = dev_at(i)))
                return;
            if (H.desc.on_post_done)
                H.desc.on_post_done(H.instance, dev, cookie, (int)status, seq);
            break;
        }
        case W_NOTICE: {
            i = wire_get_u64(&r);
            const char *ev = wire_get_str(&r);
            if (r.bad || !(dev = dev_at(i)))
                return;
            if (H.desc.on_event)
                H.desc.on_event(H.instance, dev, ev);
            break;
        }
        case W_ANSWER: {
            i = wire_get_u64(&r);
            uint64_t cookie = wire_get_u64(&r);
            const char *answer = wire_get_str(&r);
            if (r.bad || !(dev = dev_at(i)))
                return;
            if (H.desc.on_answer)
                H.desc.on_answer(H.instance, dev, cookie, answer);
            break;
        }
        case W_FW:
            i = wire_get_u64(&r);
            if (!serve_firmware(&r, dev_at(i)))
                return;
            break;
        case W_STOP:
            H.desc.stop(H.instance);
            pthread_mutex_lock(&H.lock);
            H.accepting = false;
            pthread_mutex_unlock(&H.lock);
            H.desc.destroy(H.instance);
            flush_and_close();
            exit(0);
        default:
            return; /* protocol error */
        }
    }
}

static bool read_init(char ***forbid, size_t *nf, char ***readable, size_t *nr, char **config)
{
    struct wire_in r;
    if (!read_frame(&r) || r.type != W_INIT)
        return false;
    snprintf(H.label, sizeof H.label, "%s", wire_get_str(&r));
    *config = strdup(wire_get_str(&r));
    *nf = (size_t)wire_get_u64(&r);
    if (r.bad || *nf > 64)
        return false;
    *forbid = calloc(*nf + 1, sizeof **forbid);
    for (size_t i = 0; i < *nf; i++)
        (*forbid)[i] = strdup(wire_get_str(&r));
    H.n_devs = (size_t)wire_get_u64(&r);
    if (r.bad || H.n_devs > 1000000)
        return false;
    H.devs = calloc(H.n_devs ? H.n_devs : 1, sizeof *H.devs);
    H.keys = calloc(H.n_devs ? H.n_devs : 1, sizeof *H.keys);
    if (!H.devs || !H.keys || !*config)
        return false;
    for (size_t i = 0; i < H.n_devs; i++) {
        const char *pk = wire_get_str(&r), *dn = wire_get_str(&r);
        H.devs[i].product_key = strdup(pk);
        H.devs[i].device_name = strdup(dn);
        H.devs[i].index = i;
        if (asprintf(&H.keys[i], "%s/%s", pk, dn) < 0)
            return false;
    }
    *nr = (size_t)wire_get_u64(&r);
    if (r.bad || *nr > 64)
        return false;
    *readable = calloc(*nr + 1, sizeof **readable);
    if (!*readable)
        return false;
    for (size_t i = 0; i < *nr; i++)
        (*readable)[i] = strdup(wire_get_str(&r));
    return !r.bad;
}

int main(int argc, char **argv)
{
    char err[512] = "", *config = NULL, **forbid = NULL, **readable = NULL, *end;
    size_t nf = 0, nr = 0;
    pthread_t wt;
    int rc;

    if (argc != 3) {
        fprintf(stderr, "usage: aligw-plugin-host PLUGIN.so FD (started by aligwd)\n");
        return 2;
    }
    H.so = argv[1];
    H.fd = (int)strtol(argv[2], &end, 10);
    if (*end || H.fd < 0 || fcntl(H.fd, F_GETFD) < 0) {
        fprintf(stderr, "aligw-plugin-host: %s is not an open descriptor\n", argv[2]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    pthread_key_create(&tw_key, tw_free);
    harden_early();
    H.tail = &H.head;
    atomic_init(&next_msg_id, (uint32_t)time(NULL) * 1000u + (uint32_t)getpid());
    if (!read_init(&forbid, &nf, &readable, &nr, &config))
        return 2;
    if (pthread_create(&wt, NULL, writer, NULL) != 0)
        return 2;
    H.accepting = true;

    rc = plugin_load_so(H.so, &H.dl, &H.desc, err, sizeof err);
    if (rc < 0)
        fail(0, rc, err);
    rc = landlock_forbid(forbid, nf, readable, nr);
    if (rc < 0)
        h_log(&host_table, ALIGW_LOG_WARNING,
              "(aligw-plugin-host) Landlock unavailable (%s): the plugin can reach aligwd's "
              "state files by path",
              strerror(-rc));
    rc = H.desc.create(&host_table, config, H.devs, H.n_devs, &H.instance);
    free(config);
    if (rc < 0) {
        H.desc.destroy(H.instance);
        snprintf(err, sizeof err, "create failed: %s", strerror(-rc));
        fail(1, rc, err);
    }
    rc = H.desc.start(H.instance);
    if (rc < 0) {
        H.desc.destroy(H.instance);
        snprintf(err, sizeof err, "start failed: %s", strerror(-rc < 4000 ? -rc : EIO));
        fail(2, rc, err);
    }
    char skipped[256];
    char *events = H.desc.events && H.desc.on_event
                       ? plugin_events_join(H.desc.events, skipped, sizeof skipped)
                       : NULL;
    if (events && skipped[0])
        h_log(&host_table, ALIGW_LOG_WARNING, "unknown or malformed event kinds skipped: %s",
              skipped);
    wire_begin(&tw, W_STARTED);
    wire_u64(
        &tw,
        (H.desc.on_property_set ? WIRE_HAS_SET : 0) | (H.desc.on_service_call ? WIRE_HAS_CALL : 0) |
            (H.desc.on_message ? WIRE_HAS_MSG : 0) | (H.desc.on_post_done ? WIRE_HAS_DONE : 0) |
            (H.desc.on_firmware ? WIRE_HAS_FW : 0) | (events && events[0] ? WIRE_HAS_EVENT : 0) |
            (H.desc.on_answer ? WIRE_HAS_ANSWER : 0));
    wire_str(&tw, H.desc.name);
    wire_str(&tw, H.desc.version);
    wire_str(&tw, events ? events : "");
    free(events);
    send_frame(&tw, true);
    serve();
    _exit(0); /* aligwd closed the socket (or broke the protocol): it will not hear from us */
}
