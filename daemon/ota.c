/*
 * ota: firmware upgrades (see ota.h).
 *
 * A job lives in memory (struct job, one per "pk/dn#module") and in the state database's ota_job
 * row, written at every state change (not at every progress tick: the bytes on disk are the
 * progress). The row keeps the job's notice in a normalized form ({"code":"1000","data":{…}})
 * that is parsed at start-up by the same ota_notice_parse() the platform's messages go through.
 * Files are state_dir/ota/<pk>/<dn>/<job id>-<n>.bin; they are removed when the job ends or is
 * replaced. One sweep timer (500 ms) does everything time-driven: retries after network errors,
 * the wait for a fresh URL, the apply deadline, re-offering ready firmware nobody took, and
 * progress reports held back by the rate limit.
 */
#include "ota.h"

#include "alink.h"
#include "devices.h"
#include "download.h"
#include "errors.h"
#include "log.h"
#include "ota_notice.h"
#include "statedb.h"
#include "strmap.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define SWEEP_MS 500
#define URL_WAIT_MS 60000  /* how long a job waits for a fresh URL after an expired one */
#define MAX_REFRESHES 3    /* fresh URLs per job before giving up */
#define REOFFER_MS 30000   /* ready firmware nobody took is offered again this often */
#define RETRY_MAX_MS 30000 /* longest wait between two download attempts */
#define DESC_MAX 128       /* the platform's limit for a progress desc */

enum jstate { J_OFFERED, J_DOWNLOADING, J_VERIFYING, J_READY, J_APPLYING, J_DONE, J_FAILED };
static const char *state_name(enum jstate s)
{
    static const char *const n[] = {"offered",  "downloading", "verifying", "ready",
                                    "applying", "done",        "failed"};
    return n[s];
}

static int state_parse(const char *s)
{
    for (int i = J_OFFERED; i <= J_FAILED; i++)
        if (strcmp(s, state_name((enum jstate)i)) == 0)
            return i;
    return -1;
}

struct job {
    char key[200]; /* "pk/dn#module" */
    char dev[112]; /* "pk/dn" */
    char pk[40], dn[70];
    int64_t id;
    enum jstate st;
    struct ota_notice n;
    char *notice_json;
    char from[OTA_VERSION_MAX + 1];
    int progress, step;
    char error[DESC_MAX + 1];
    int64_t created_at;
    char **paths; /* n.n_files */
    size_t cur;   /* file being downloaded */
    int64_t done_bytes, cur_bytes;
    struct download *dl;
    int attempts, refreshes;
    uint64_t retry_at, url_deadline, apply_deadline, reoffer_at;
    char get_id[16]; /* the firmware/get we wait on for a fresh URL, or "" */
    int last_pct;
    uint64_t last_report_ms;
    bool report_pending;
    struct job *prev, *next;
};

struct version {
    char key[200]; /* "pk/dn#module" */
    char pk[40], dn[70], module[OTA_MODULE_MAX + 1];
    char version[OTA_VERSION_MAX + 1];
    char source[8];
    struct version *next;
};

static struct {
    uv_loop_t *loop;
    struct statedb *db;
    struct ota_opts o;
    struct ota_hooks h;
    struct download_ctx *dl;
    uv_timer_t sweep;
    struct strmap jobs, versions;
    struct job *head;
    struct version *vhead;
    int64_t last_id;
    bool running;
} O;

static void job_fail(struct job *j, int step, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void start_download(struct job *j);
static void hand_off(struct job *j);

/* ---- helpers ----------------------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    return uv_now(O.loop);
}

static void make_key(char *out, size_t n, const char *pk, const char *dn, const char *module)
{
    snprintf(out, n, "%s/%s#%s", pk, dn, module ? module : "");
}

/* Queues a message for pk/dn with the next Alink id of the device; -ENODEV when not configured. */
static int send_msg(const char *pk, const char *dn, const char *topic, json_t *params,
                    const char *method, char *id_out, size_t id_len)
{
    struct device *d = devices_find2(pk, dn);
    char id[16], key[112];
    json_t *o;
    char *s;
    int rc;

    if (!d)
        return ALIGW_ENODEVICE;
    snprintf(id, sizeof(id), "%u", device_next_alink_id(d));
    o = json_pack("{s:s,s:s,s:O}", "id", id, "version", "1.0", "params", params);
    if (o && method)
        json_object_set_new(o, "method", json_string(method));
    s = o ? json_dumps(o, ALINK_DUMP_FLAGS) : NULL;
    json_decref(o);
    if (!s)
        return -ENOMEM;
    snprintf(key, sizeof(key), "%s/%s", pk, dn);
    rc = O.h.uplink(O.h.ctx, key, topic, s, strlen(s));
    free(s);
    if (rc == 0 && id_out)
        snprintf(id_out, id_len, "%s", id);
    return rc;
}

static int send_inform(const char *pk, const char *dn, const char *module, const char *version)
{
    char topic[256];
    json_t *p = json_pack("{s:s}", "version", version);
    int rc;

    if (module && *module)
        json_object_set_new(p, "module", json_string(module));
    snprintf(topic, sizeof(topic), "/ota/device/inform/%s/%s", pk, dn);
    rc = send_msg(pk, dn, topic, p, NULL, NULL, 0);
    json_decref(p);
    if (rc == 0)
        log_dev(LOG_INFO, pk, dn, "firmware version %s%s%s reported", version,
                module && *module ? " of module " : "", module && *module ? module : "");
    return rc;
}

static int send_get(const char *pk, const char *dn, const char *module, char *id, size_t id_len)
{
    char topic[256];
    json_t *p = json_object();
    int rc;

    if (module && *module)
        json_object_set_new(p, "module", json_string(module));
    snprintf(topic, sizeof(topic), "/sys/%s/%s/thing/ota/firmware/get", pk, dn);
    rc = send_msg(pk, dn, topic, p, "thing.ota.firmware.get", id, id_len);
    json_decref(p);
    return rc;
}

static void send_progress(struct job *j, int step, const char *desc)
{
    char topic[256], s[8];
    json_t *p;

    snprintf(s, sizeof(s), "%d", step);
    p = json_pack("{s:s}", "step", s);
    if (desc && *desc)
        json_object_set_new(p, "desc", json_stringn(desc, strnlen(desc, DESC_MAX)));
    if (j->n.module[0])
        json_object_set_new(p, "module", json_string(j->n.module));
    snprintf(topic, sizeof(topic), "/ota/device/progress/%s/%s", j->pk, j->dn);
    send_msg(j->pk, j->dn, topic, p, NULL, NULL, 0);
    json_decref(p);
    j->last_report_ms = now_ms();
    j->report_pending = false;
}

/* Reports download progress: every 10 % boundary at once, otherwise at most once per interval. */
static void report_progress(struct job *j, int pct)
{
    if (pct <= j->last_pct)
        return;
    bool boundary = pct / 10 > j->last_pct / 10;
    if (boundary || now_ms() - j->last_report_ms >= (uint64_t)O.o.progress_interval_ms) {
        j->last_pct = pct;
        send_progress(j, pct, NULL);
    } else {
        j->report_pending = true;
    }
}

static struct version *version_find(const char *pk, const char *dn, const char *module)
{
    char key[200];
    make_key(key, sizeof(key), pk, dn, module);
    return strmap_get(&O.versions, key);
}

static struct version *version_set_mem(const char *pk, const char *dn, const char *module,
                                       const char *version, const char *source)
{
    struct version *v = version_find(pk, dn, module);
    if (!v) {
        v = calloc(1, sizeof(*v));
        if (!v)
            return NULL;
        make_key(v->key, sizeof(v->key), pk, dn, module);
        snprintf(v->pk, sizeof(v->pk), "%s", pk);
        snprintf(v->dn, sizeof(v->dn), "%s", dn);
        snprintf(v->module, sizeof(v->module), "%s", module ? module : "");
        if (strmap_put(&O.versions, v->key, v) < 0) {
            free(v);
            return NULL;
        }
        v->next = O.vhead;
        O.vhead = v;
    }
    snprintf(v->version, sizeof(v->version), "%s", version);
    snprintf(v->source, sizeof(v->source), "%s", source);
    return v;
}

/* ---- jobs: persistence and files --------------------------------------------------------- */

static int persist(struct job *j)
{
    struct statedb_ota_job r = {
        .product_key = j->pk,
        .device_name = j->dn,
        .module = j->n.module,
        .job_id = j->id,
        .from_version = j->from[0] ? j->from : NULL,
        .to_version = j->n.version,
        .state = (char *)state_name(j->st),
        .notice = j->notice_json,
        .progress = j->progress,
        .step = j->step,
        .error = j->error[0] ? j->error : NULL,
        .created_at = j->created_at,
    };
    int rc = statedb_ota_job_put(O.db, &r);
    if (rc < 0)
        log_errno(LOG_ERR, rc, "%s/%s: OTA job %lld not stored", j->pk, j->dn, (long long)j->id);
    return rc;
}

static void set_state(struct job *j, enum jstate st)
{
    if (j->st == st)
        return;
    log_dev(LOG_INFO, j->pk, j->dn, "OTA job %lld (%s%s%s → %s): %s", (long long)j->id,
            j->n.module[0] ? j->n.module : "", j->n.module[0] ? " " : "",
            j->from[0] ? j->from : "?", j->n.version, state_name(st));
    j->st = st;
    if (st != J_VERIFYING) /* a passing state: a restart there starts at downloading */
        persist(j);
    json_t *ev =
        json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:s,s:i}", "event", "ota", "action", "state", "device",
                  j->dev, "job", (json_int_t)j->id, "module", j->n.module, "version", j->n.version,
                  "state", state_name(st), "progress", j->progress);
    if (j->error[0])
        json_object_set_new(ev, "error", json_string(j->error));
    if (j->step)
        json_object_set_new(ev, "step", json_integer(j->step));
    O.h.event(O.h.ctx, j->dev, ev);
    json_decref(ev);
}

/* Builds the normalized notice text kept in the database. */
static char *notice_text(const struct ota_notice *n)
{
    json_t *files = json_array(), *data;
    char *s;

    for (size_t i = 0; i < n->n_files; i++)
        json_array_append_new(files, json_pack("{s:s,s:I,s:s,s:s}", "url", n->files[i].url, "size",
                                               (json_int_t)n->files[i].size, "sign",
                                               n->files[i].digest, "name", n->files[i].name));
    data = json_pack("{s:s,s:s,s:i,s:s,s:o}", "version", n->version, "module", n->module, "isDiff",
                     n->is_diff ? 1 : 0, "signMethod", ota_sign_name(n->files[0].sign_method),
                     "files", files);
    if (data && n->ext_data) {
        json_t *x = json_loads(n->ext_data, JSON_DECODE_ANY, NULL);
        if (x)
            json_object_set_new(data, "extData", x);
    }
    json_t *root = json_pack("{s:s,s:o}", "code", "1000", "data", data);
    s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

static int job_paths(struct job *j)
{
    char dir[4096];
    int len = snprintf(dir, sizeof(dir), "%s/%s/%s", O.o.dir, j->pk, j->dn);
    if (len < 0 || (size_t)len >= sizeof(dir) - 64)
        return -ENAMETOOLONG;
    /* pk and dn are checked identifiers (no '/' or ".."), so the path stays under dir */
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0750) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(dir, 0750) < 0 && errno != EEXIST)
        return -errno;
    j->paths = calloc(j->n.n_files, sizeof(char *));
    if (!j->paths)
        return -ENOMEM;
    for (size_t i = 0; i < j->n.n_files; i++)
        if (asprintf(&j->paths[i], "%s/%lld-%zu.bin", dir, (long long)j->id, i) < 0) {
            j->paths[i] = NULL;
            return -ENOMEM;
        }
    return 0;
}

static void remove_files(struct job *j)
{
    for (size_t i = 0; j->paths && i < j->n.n_files; i++)
        if (j->paths[i])
            unlink(j->paths[i]);
}

static void job_unlink(struct job *j)
{
    strmap_del(&O.jobs, j->key);
    if (j->prev)
        j->prev->next = j->next;
    else
        O.head = j->next;
    if (j->next)
        j->next->prev = j->prev;
}

static void job_free(struct job *j)
{
    if (j->dl)
        download_cancel(j->dl);
    for (size_t i = 0; j->paths && i < j->n.n_files; i++)
        free(j->paths[i]);
    free(j->paths);
    free(j->notice_json);
    ota_notice_free(&j->n);
    free(j);
}

static bool active(const struct job *j)
{
    return j->st != J_DONE && j->st != J_FAILED;
}

/* Ends a job: it stays listed (and in the database) until a newer one replaces it. */
static void job_end(struct job *j, enum jstate st)
{
    if (j->dl) {
        download_cancel(j->dl);
        j->dl = NULL;
    }
    remove_files(j);
    j->get_id[0] = '\0';
    set_state(j, st);
}

static void job_fail(struct job *j, int step, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->error, sizeof(j->error), fmt, ap);
    va_end(ap);
    j->step = step;
    log_dev(LOG_WARNING, j->pk, j->dn, "OTA job %lld to %s%s%s failed (step %d): %s",
            (long long)j->id, j->n.version, j->n.module[0] ? " of module " : "", j->n.module, step,
            j->error);
    send_progress(j, step, j->error);
    job_end(j, J_FAILED);
}

/* ---- the download ------------------------------------------------------------------------ */

static int64_t free_disk(void)
{
    struct statvfs sv;
    if (statvfs(O.o.dir, &sv) < 0)
        return -1;
    return (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
}

static void on_progress(void *arg, int64_t bytes, int64_t total)
{
    struct job *j = arg;
    int pct;

    j->cur_bytes = bytes;
    pct = (int)((j->done_bytes + bytes) * 100 / (j->n.total_size ? j->n.total_size : 1));
    if (pct < 1)
        pct = 1;
    if (pct > 99)
        pct = 99;
    j->progress = pct;
    report_progress(j, pct);
}

static void ready(struct job *j)
{
    j->progress = 100;
    j->last_pct = 100;
    send_progress(j, 100, NULL);
    set_state(j, J_READY);
    hand_off(j);
}

static void on_done(void *arg, const struct download_result *r)
{
    struct job *j = arg;
    const struct ota_file *f = &j->n.files[j->cur];

    j->dl = NULL;
    if (r->status == 0) {
        set_state(j, J_VERIFYING);
        if (strcmp(r->digest, f->digest) != 0) {
            unlink(j->paths[j->cur]); /* never kept as good */
            job_fail(j, -3, "%s digest mismatch%s%s: expected %.16s…, got %.16s…",
                     f->sign_method == OTA_SIGN_MD5 ? "MD5" : "SHA-256", f->name[0] ? " for " : "",
                     f->name, f->digest, r->digest);
            return;
        }
        j->attempts = 0;
        j->done_bytes += r->bytes;
        j->cur_bytes = 0;
        if (++j->cur < j->n.n_files) {
            set_state(j, J_DOWNLOADING);
            start_download(j);
            return;
        }
        ready(j);
        return;
    }
    j->cur_bytes = r->bytes;
    if (r->status == -EPROTO && (r->http_code == 403 || r->http_code == 400)) {
        /* A pre-signed URL that expired: ask the platform for a fresh one. */
        if (j->refreshes >= MAX_REFRESHES) {
            job_fail(j, -2, "download refused (HTTP %ld) after %d fresh URLs", r->http_code,
                     j->refreshes);
            return;
        }
        j->refreshes++;
        log_dev(LOG_NOTICE, j->pk, j->dn,
                "OTA job %lld: HTTP %ld (URL expired?): asking the platform for a fresh URL",
                (long long)j->id, r->http_code);
        if (send_get(j->pk, j->dn, j->n.module, j->get_id, sizeof(j->get_id)) < 0) {
            job_fail(j, -2, "download refused (HTTP %ld) and no fresh URL could be asked for",
                     r->http_code);
            return;
        }
        j->url_deadline = now_ms() + URL_WAIT_MS;
        return;
    }
    if (r->retryable && j->attempts < O.o.max_retries) {
        uint64_t wait = 1000ull << (j->attempts < 5 ? j->attempts : 5);
        j->attempts++;
        if (wait > RETRY_MAX_MS)
            wait = RETRY_MAX_MS;
        log_dev(LOG_NOTICE, j->pk, j->dn,
                "OTA job %lld: %s; resuming from byte %lld in %llu ms (attempt %d of %d)",
                (long long)j->id, r->error, (long long)r->bytes, (unsigned long long)wait,
                j->attempts, O.o.max_retries);
        j->retry_at = now_ms() + wait;
        return;
    }
    if (r->status == -EFBIG)
        unlink(j->paths[j->cur]);
    job_fail(j, -2, "%s", r->error[0] ? r->error : aligw_strerror(r->status));
}

static void start_download(struct job *j)
{
    const struct ota_file *f = &j->n.files[j->cur];
    struct download_req req = {
        .url = f->url,
        .path = j->paths[j->cur],
        .resume = true,
        .expect_size = f->size,
        .digest = ota_sign_name(f->sign_method),
        .ca_file = O.o.ca_file,
        .allow_http = O.o.allow_http,
        .progress = on_progress,
        .done = on_done,
        .arg = j,
    };
    int rc;

    j->retry_at = 0;
    rc = download_start(O.dl, &req, &j->dl);
    if (rc < 0) {
        j->dl = NULL;
        job_fail(j, -2, "cannot download %s: %s", f->name[0] ? f->name : "the firmware",
                 rc == -EINVAL ? "URL not accepted" : aligw_strerror(rc));
    }
}

/* Checks what can be checked before any byte is fetched, then starts the first file. */
static void begin(struct job *j)
{
    int64_t need = 0, have = 0;
    struct stat st;

    for (size_t i = 0; i < j->n.n_files; i++) {
        const char *u = j->n.files[i].url;
        if (strncasecmp(u, "https://", 8) != 0 && !O.o.allow_http) {
            job_fail(j, -2, "firmware URL is not https:// (set ota.allow_http to accept it)");
            return;
        }
        if (stat(j->paths[i], &st) == 0 && st.st_size <= j->n.files[i].size)
            have += st.st_size;
        need += j->n.files[i].size;
    }
    int64_t avail = free_disk();
    if (avail >= 0 && need - have + O.o.min_free_bytes > avail) {
        job_fail(j, -2, "not enough disk: the package needs %lld bytes, %lld free",
                 (long long)(need - have + O.o.min_free_bytes), (long long)avail);
        return;
    }
    /* Files already complete (a restart after they were fetched) are verified again. */
    j->cur = 0;
    j->done_bytes = 0;
    set_state(j, J_DOWNLOADING);
    start_download(j);
}

/* ---- hand-off ---------------------------------------------------------------------------- */

static void hand_off(struct job *j)
{
    struct version *cur = version_find(j->pk, j->dn, j->n.module);
    const char *names[OTA_MAX_FILES];
    struct ota_apply a = {
        .job_id = j->id,
        .module = j->n.module,
        .version = j->n.version,
        .from_version = cur ? cur->version : "",
        .n_files = j->n.n_files,
        .paths = (const char *const *)j->paths,
        .names = names,
        .total_size = j->n.total_size,
        .is_diff = j->n.is_diff,
        .ext_data = j->n.ext_data,
    };
    int rc;

    for (size_t i = 0; i < j->n.n_files; i++)
        names[i] = j->n.files[i].name;
    j->reoffer_at = now_ms() + REOFFER_MS;
    rc = O.h.apply_plugin(O.h.ctx, j->pk, j->dn, &a);
    if (rc == 0) {
        j->apply_deadline = now_ms() + (uint64_t)O.o.apply_timeout_s * 1000;
        set_state(j, J_APPLYING);
        return;
    }
    if (rc != -ENODEV && rc != -ENOTSUP) {
        job_fail(j, -4, "the plugin refused the firmware: %s", aligw_strerror(rc));
        return;
    }
    json_t *files = json_array();
    for (size_t i = 0; i < j->n.n_files; i++)
        json_array_append_new(files,
                              json_pack("{s:s,s:s,s:I,s:s,s:s}", "path", j->paths[i], "name",
                                        names[i], "size", (json_int_t)j->n.files[i].size,
                                        "sign_method", ota_sign_name(j->n.files[i].sign_method),
                                        "digest", j->n.files[i].digest));
    json_t *ev =
        json_pack("{s:s,s:s,s:s,s:I,s:s,s:s,s:s,s:o,s:I,s:b}", "event", "ota", "action", "apply",
                  "device", j->dev, "job", (json_int_t)j->id, "module", j->n.module, "version",
                  j->n.version, "from_version", a.from_version, "files", files, "size",
                  (json_int_t)j->n.total_size, "is_diff", j->n.is_diff);
    if (j->n.ext_data) {
        json_t *x = json_loads(j->n.ext_data, JSON_DECODE_ANY, NULL);
        if (x)
            json_object_set_new(ev, "ext_data", x);
    }
    int watchers = O.h.event(O.h.ctx, j->dev, ev);
    json_decref(ev);
    if (watchers > 0) {
        j->apply_deadline = now_ms() + (uint64_t)O.o.apply_timeout_s * 1000;
        set_state(j, J_APPLYING);
    } else if (j->st == J_READY) {
        log_dev(LOG_NOTICE, j->pk, j->dn,
                "OTA job %lld: firmware %s ready, waiting for a plugin or an API client (watch "
                "kind \"ota\") to apply it",
                (long long)j->id, j->n.version);
    }
}

/* ---- jobs from notices ------------------------------------------------------------------- */

static struct job *job_find(const char *pk, const char *dn, const char *module)
{
    char key[200];
    make_key(key, sizeof(key), pk, dn, module);
    return strmap_get(&O.jobs, key);
}

static bool same_package(const struct ota_notice *a, const struct ota_notice *b)
{
    if (strcmp(a->version, b->version) != 0 || a->n_files != b->n_files)
        return false;
    for (size_t i = 0; i < a->n_files; i++)
        if (strcmp(a->files[i].digest, b->files[i].digest) != 0 ||
            a->files[i].size != b->files[i].size)
            return false;
    return true;
}

/* Takes n (moved into a job on success; freed otherwise). */
static struct job *job_new(const char *pk, const char *dn, struct ota_notice *n, int64_t id,
                           enum jstate st)
{
    struct job *j = calloc(1, sizeof(*j));
    struct version *cur;

    if (!j) {
        ota_notice_free(n);
        return NULL;
    }
    snprintf(j->pk, sizeof(j->pk), "%s", pk);
    snprintf(j->dn, sizeof(j->dn), "%s", dn);
    snprintf(j->dev, sizeof(j->dev), "%s/%s", pk, dn);
    j->n = *n;
    memset(n, 0, sizeof(*n));
    make_key(j->key, sizeof(j->key), pk, dn, j->n.module);
    j->id = id > 0 ? id : ++O.last_id;
    if (id > O.last_id)
        O.last_id = id;
    j->st = st;
    j->created_at = (int64_t)time(NULL);
    if ((cur = version_find(pk, dn, j->n.module)))
        snprintf(j->from, sizeof(j->from), "%s", cur->version);
    j->notice_json = notice_text(&j->n);
    if (!j->notice_json || job_paths(j) < 0 || strmap_put(&O.jobs, j->key, j) < 0) {
        log_dev(LOG_ERR, pk, dn, "OTA job for %s not created (out of memory or %s not writable)",
                j->n.version, O.o.dir);
        job_free(j);
        return NULL;
    }
    j->next = O.head;
    if (O.head)
        O.head->prev = j;
    O.head = j;
    return j;
}

static void replace_job(struct job *old, const char *why)
{
    log_dev(LOG_NOTICE, old->pk, old->dn, "OTA job %lld (%s) replaced: %s", (long long)old->id,
            old->n.version, why);
    if (old->dl) {
        download_cancel(old->dl);
        old->dl = NULL;
    }
    remove_files(old);
    job_unlink(old);
    job_free(old);
}

static void handle_notice(struct device *d, struct ota_notice *n, bool from_get)
{
    const struct device_conf *dc = device_conf(d);
    const char *pk = dc->product_key, *dn = dc->device_name;
    struct job *j = job_find(pk, dn, n->module);
    struct version *cur = version_find(pk, dn, n->module);

    if (j && active(j) && same_package(&j->n, n)) {
        /* The same job again (re-pushed after a reconnect, or the answer to our pull): keep
         * going, with the fresh URLs. */
        for (size_t i = 0; i < n->n_files; i++) {
            char *u = n->files[i].url;
            n->files[i].url = j->n.files[i].url;
            j->n.files[i].url = u;
        }
        free(j->notice_json);
        j->notice_json = notice_text(&j->n);
        if (j->notice_json)
            persist(j);
        if (j->get_id[0]) {
            log_dev(LOG_NOTICE, pk, dn, "OTA job %lld: fresh URL received, resuming",
                    (long long)j->id);
            j->get_id[0] = '\0';
            j->url_deadline = 0;
            start_download(j);
        }
        ota_notice_free(n);
        return;
    }
    if (!j || !active(j)) {
        if (cur && strcmp(cur->version, n->version) == 0) {
            log_dev(LOG_INFO, pk, dn, "OTA: already at version %s%s%s; reporting it again",
                    n->version, n->module[0] ? " of module " : "", n->module);
            send_inform(pk, dn, n->module, n->version);
            ota_notice_free(n);
            return;
        }
    }
    if (j) {
        char why[128];
        snprintf(why, sizeof(why), "a newer job for version %s arrived", n->version);
        if (active(j))
            replace_job(j, why);
        else
            replace_job(j, "a new job arrived");
    }
    j = job_new(pk, dn, n, 0, J_OFFERED);
    if (!j)
        return;
    log_dev(LOG_NOTICE, pk, dn, "OTA job %lld (%s%s%s%s → %s): %zu file(s), %lld bytes, %s",
            (long long)j->id, j->n.module[0] ? "module " : "", j->n.module,
            j->n.module[0] ? " " : "", j->from[0] ? j->from : "?", j->n.version, j->n.n_files,
            (long long)j->n.total_size, from_get ? "pulled" : "pushed");
    persist(j);
    set_state(j, J_OFFERED);
    begin(j);
}

static void on_notice(struct device *d, const char *payload, size_t len, enum ota_notice_kind kind)
{
    const struct device_conf *dc = device_conf(d);
    struct ota_notice n;
    char err[200];
    int rc = ota_notice_parse(payload, len, kind, &n, err, sizeof(err));

    if (rc == -ENOENT) {
        /* Nothing pending: the job that asked for a fresh URL will not get one. */
        for (struct job *j = O.head; j; j = j->next)
            if (j->get_id[0] && strcmp(j->get_id, n.msg_id) == 0 &&
                strcmp(j->pk, dc->product_key) == 0 && strcmp(j->dn, dc->device_name) == 0)
                job_fail(j, -2, "the URL expired and the platform has no job any more");
        log_dev(LOG_DEBUG, dc->product_key, dc->device_name, "OTA: no upgrade pending");
        return;
    }
    if (rc < 0) {
        char topic[256], s[8];
        log_dev(LOG_WARNING, dc->product_key, dc->device_name, "OTA: refusing a bad %s: %s",
                kind == OTA_NOTICE_PUSH ? "upgrade notice" : "firmware/get reply", err);
        /* Tell the platform, for the module named when it could be read. */
        snprintf(s, sizeof(s), "%d", n.fail_step);
        json_t *p = json_pack("{s:s,s:s%}", "step", s, "desc", err, (size_t)strnlen(err, DESC_MAX));
        if (p && n.module[0])
            json_object_set_new(p, "module", json_string(n.module));
        snprintf(topic, sizeof(topic), "/ota/device/progress/%s/%s", dc->product_key,
                 dc->device_name);
        if (p)
            send_msg(dc->product_key, dc->device_name, topic, p, NULL, NULL, 0);
        json_decref(p);
        return;
    }
    handle_notice(d, &n, kind == OTA_NOTICE_GET_REPLY);
}

void ota_on_push(struct device *d, const char *payload, size_t len)
{
    if (O.running)
        on_notice(d, payload, len, OTA_NOTICE_PUSH);
}

void ota_on_get_reply(struct device *d, const char *payload, size_t len)
{
    if (O.running)
        on_notice(d, payload, len, OTA_NOTICE_GET_REPLY);
}

/* ---- sweep ------------------------------------------------------------------------------- */

static void on_sweep(uv_timer_t *t)
{
    uint64_t now = now_ms();
    struct job *j, *next;

    for (j = O.head; j; j = next) {
        next = j->next;
        if (!active(j))
            continue;
        if (j->report_pending && now - j->last_report_ms >= (uint64_t)O.o.progress_interval_ms) {
            j->last_pct = j->progress;
            send_progress(j, j->progress, NULL);
        }
        if (j->st == J_DOWNLOADING && !j->dl && j->retry_at && now >= j->retry_at) {
            if (devices_find2(j->pk, j->dn))
                start_download(j);
        } else if (j->st == J_DOWNLOADING && j->get_id[0] && now >= j->url_deadline)
            job_fail(j, -2, "the URL expired and no fresh one came within %d s",
                     URL_WAIT_MS / 1000);
        else if (j->st == J_APPLYING && now >= j->apply_deadline)
            job_fail(j, -4, "no result from the device's plugin or API client within %d s",
                     O.o.apply_timeout_s);
        else if (j->st == J_READY && now >= j->reoffer_at)
            hand_off(j);
    }
}

/* ---- public ------------------------------------------------------------------------------ */

static void apply_opts(const struct ota_opts *o)
{
    O.o = *o;
    if (O.o.max_concurrent <= 0)
        O.o.max_concurrent = 4;
    if (O.o.progress_interval_ms <= 0)
        O.o.progress_interval_ms = 3000;
    if (O.o.apply_timeout_s <= 0)
        O.o.apply_timeout_s = 600;
    if (O.o.max_retries < 0)
        O.o.max_retries = 0;
}

void ota_set_opts(const struct ota_opts *o)
{
    struct download_limits l;
    apply_opts(o);
    l = (struct download_limits){.max_concurrent = O.o.max_concurrent, .max_rate = O.o.max_rate};
    if (O.dl)
        download_set_limits(O.dl, &l);
}

int ota_init(uv_loop_t *loop, struct statedb *db, const struct ota_opts *opts,
             const struct ota_hooks *hooks)
{
    struct statedb_ota_version *vv = NULL;
    struct statedb_ota_job *jv = NULL;
    size_t nv = 0, nj = 0;
    struct download_limits l;
    int rc;

    memset(&O, 0, sizeof(O));
    O.loop = loop;
    O.db = db;
    O.h = *hooks;
    apply_opts(opts);
    strmap_init(&O.jobs);
    strmap_init(&O.versions);
    if (mkdir(O.o.dir, 0750) < 0 && errno != EEXIST)
        log_errno(LOG_WARNING, -errno, "cannot create %s (firmware downloads will fail)", O.o.dir);
    l = (struct download_limits){.max_concurrent = O.o.max_concurrent, .max_rate = O.o.max_rate};
    if ((rc = download_init(loop, &l, &O.dl)) < 0)
        return rc;
    uv_timer_init(loop, &O.sweep);
    O.running = true;

    if (statedb_ota_version_list(db, &vv, &nv) == 0) {
        for (size_t i = 0; i < nv; i++)
            version_set_mem(vv[i].product_key, vv[i].device_name, vv[i].module, vv[i].version,
                            vv[i].source);
        statedb_ota_version_list_free(vv, nv);
    }
    statedb_ota_last_job_id(db, &O.last_id);
    if (statedb_ota_job_list(db, &jv, &nj) == 0) {
        for (size_t i = 0; i < nj; i++) {
            struct ota_notice n;
            char err[200];
            int st = state_parse(jv[i].state);
            if (st < 0 || ota_notice_parse(jv[i].notice, strlen(jv[i].notice), OTA_NOTICE_PUSH, &n,
                                           err, sizeof(err)) < 0) {
                log_error("%s/%s: stored OTA job %lld is not valid; dropped", jv[i].product_key,
                          jv[i].device_name, (long long)jv[i].job_id);
                statedb_ota_job_delete(db, jv[i].product_key, jv[i].device_name, jv[i].module);
                continue;
            }
            struct job *j =
                job_new(jv[i].product_key, jv[i].device_name, &n, jv[i].job_id, (enum jstate)st);
            if (!j)
                continue;
            snprintf(j->from, sizeof(j->from), "%s", jv[i].from_version ? jv[i].from_version : "");
            snprintf(j->error, sizeof(j->error), "%s", jv[i].error ? jv[i].error : "");
            j->progress = j->last_pct = jv[i].progress;
            j->step = jv[i].step;
            j->created_at = jv[i].created_at;
        }
        statedb_ota_job_list_free(jv, nj);
    }
    return 0;
}

void ota_start(void)
{
    uv_timer_start(&O.sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    for (struct job *j = O.head; j; j = j->next) {
        if (!active(j))
            continue;
        log_dev(LOG_NOTICE, j->pk, j->dn, "OTA job %lld (%s, %s) resumed after a restart",
                (long long)j->id, j->n.version, state_name(j->st));
        if (j->st == J_READY || j->st == J_APPLYING)
            hand_off(j);
        else
            begin(j);
    }
}

static void closed(uv_handle_t *h)
{
}

void ota_close(void)
{
    if (!O.running)
        return;
    O.running = false;
    while (O.head) {
        struct job *j = O.head;
        job_unlink(j);
        if (j->dl) {
            download_cancel(j->dl);
            j->dl = NULL;
        }
        job_free(j);
    }
    while (O.vhead) {
        struct version *v = O.vhead;
        O.vhead = v->next;
        free(v);
    }
    strmap_free(&O.jobs);
    strmap_free(&O.versions);
    download_close(O.dl);
    O.dl = NULL;
    uv_close((uv_handle_t *)&O.sweep, closed);
}

void ota_config_version(const char *pk, const char *dn, const char *module, const char *version)
{
    struct version *v = version_find(pk, dn, module);
    if (v && strcmp(v->source, "config") != 0)
        return; /* a plugin, the API or an upgrade knows better than the file */
    if (v && strcmp(v->version, version) == 0)
        return;
    if (version_set_mem(pk, dn, module, version, "config"))
        statedb_ota_version_put(O.db, pk, dn, module, version, "config");
}

void ota_device_online(struct device *d)
{
    const struct device_conf *dc = device_conf(d);
    const char *pk = dc->product_key, *dn = dc->device_name;

    if (!O.running)
        return;
    /* Only devices with a known version take part in OTA: the others send nothing extra. */
    for (struct version *v = O.vhead; v; v = v->next) {
        if (strcmp(v->pk, pk) != 0 || strcmp(v->dn, dn) != 0)
            continue;
        send_inform(pk, dn, v->module, v->version);
        if (O.o.pull_at_login)
            send_get(pk, dn, v->module, NULL, 0);
    }
}

void ota_device_removed(const char *pk, const char *dn)
{
    for (struct job *j = O.head; j; j = j->next)
        if (j->dl && strcmp(j->pk, pk) == 0 && strcmp(j->dn, dn) == 0) {
            download_cancel(j->dl); /* resumed (from the file) if the device comes back */
            j->dl = NULL;
            j->retry_at = now_ms() + 1000;
        }
}

int ota_result(const char *pk, const char *dn, int64_t job_id, int step, const char *version,
               const char *desc)
{
    struct job *j;

    if (step > 0 || step < -4)
        return -EINVAL;
    for (j = O.head; j; j = j->next)
        if (j->id == job_id && strcmp(j->pk, pk) == 0 && strcmp(j->dn, dn) == 0)
            break;
    if (!j)
        return -ENOENT;
    if (j->st != J_APPLYING && j->st != J_READY)
        return -EALREADY;
    if (step < 0) {
        job_fail(j, step, "%s", desc && *desc ? desc : "the device could not apply the firmware");
        return 0;
    }
    if (!version || !*version)
        version = j->n.version;
    if (strcmp(version, j->n.version) != 0)
        log_dev(LOG_WARNING, pk, dn,
                "OTA job %lld: applied, but the device runs %s, not the package's %s",
                (long long)j->id, version, j->n.version);
    if (version_set_mem(pk, dn, j->n.module, version, "ota"))
        statedb_ota_version_put(O.db, pk, dn, j->n.module, version, "ota");
    j->progress = 100;
    job_end(j, J_DONE);
    send_inform(pk, dn, j->n.module, version);
    return 0;
}

int ota_set_version(const char *pk, const char *dn, const char *module, const char *version,
                    const char *source)
{
    struct version *v = version_find(pk, dn, module);
    bool changed = !v || strcmp(v->version, version) != 0;
    int rc;

    if (!devices_find2(pk, dn))
        return ALIGW_ENODEVICE;
    if (!version_set_mem(pk, dn, module, version, source))
        return -ENOMEM;
    rc = statedb_ota_version_put(O.db, pk, dn, module, version, source);
    if (rc < 0)
        return rc;
    struct device *d = devices_find2(pk, dn);
    if (changed && d && device_state(d) == DEV_ONLINE)
        send_inform(pk, dn, module, version);
    return 0;
}

int ota_check(const char *pk, const char *dn, const char *module)
{
    if (!devices_find2(pk, dn))
        return ALIGW_ENODEVICE;
    return send_get(pk, dn, module, NULL, 0);
}

static int64_t job_bytes(const struct job *j)
{
    switch (j->st) {
    case J_DOWNLOADING:
        return j->done_bytes + j->cur_bytes;
    case J_VERIFYING:
    case J_READY:
    case J_APPLYING:
    case J_DONE:
        return j->n.total_size;
    default:
        return 0;
    }
}

static json_t *job_json(const struct job *j)
{
    json_t *files = json_array();
    for (size_t i = 0; i < j->n.n_files; i++)
        json_array_append_new(files,
                              json_pack("{s:s,s:s,s:I}", "name", j->n.files[i].name, "path",
                                        j->paths[i], "size", (json_int_t)j->n.files[i].size));
    json_t *o =
        json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:i,s:I,s:I,s:o}", "device", j->dev, "module",
                  j->n.module, "job", (json_int_t)j->id, "from_version", j->from, "to_version",
                  j->n.version, "state", state_name(j->st), "progress", j->progress, "bytes",
                  (json_int_t)job_bytes(j), "size", (json_int_t)j->n.total_size, "files", files);
    if (j->step)
        json_object_set_new(o, "step", json_integer(j->step));
    if (j->error[0])
        json_object_set_new(o, "error", json_string(j->error));
    return o;
}

void ota_count_by_state(void (*fn)(void *arg, const char *state, size_t n), void *arg)
{
    size_t n[J_FAILED + 1] = {0};
    for (const struct job *j = O.head; j; j = j->next)
        n[j->st]++;
    for (int s = J_OFFERED; s <= J_FAILED; s++)
        fn(arg, state_name((enum jstate)s), n[s]);
}

json_t *ota_json(const char *key)
{
    json_t *jobs = json_array(), *versions = json_array();
    size_t kl = key ? strlen(key) : 0;

    for (const struct job *j = O.head; j; j = j->next)
        if (!key || strcmp(j->dev, key) == 0)
            json_array_append_new(jobs, job_json(j));
    for (const struct version *v = O.vhead; v; v = v->next)
        if (!key || (strncmp(v->key, key, kl) == 0 && v->key[kl] == '#')) {
            char dev[112];
            snprintf(dev, sizeof(dev), "%s/%s", v->pk, v->dn);
            json_array_append_new(versions,
                                  json_pack("{s:s,s:s,s:s,s:s}", "device", dev, "module", v->module,
                                            "version", v->version, "source", v->source));
        }
    return json_pack("{s:o,s:o}", "jobs", jobs, "versions", versions);
}
