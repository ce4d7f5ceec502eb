/*
 * statedb: registration results and runtime devices in SQLite (see statedb.h). One connection,
 * synchronous=FULL, every write its own transaction, so "returned 0" means "on disk". The file
 * is small, so it gets the full quick_check at open.
 */
#include "statedb.h"

#include "db.h"
#include "errors.h"
#include "log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct statedb {
    sqlite3 *db;
    char *path;
};

int statedb_open(const char *path, struct statedb **out)
{
    struct statedb *s;
    int err;

    *out = NULL;
    if (!(s = calloc(1, sizeof(*s))) || !(s->path = strdup(path))) {
        free(s);
        return -ENOMEM;
    }
    if ((err = db_open(path, &db_schema_state, DB_SYNC_FULL | DB_QUICK_CHECK, &s->db)) < 0) {
        free(s->path);
        free(s);
        return err;
    }
    *out = s;
    return 0;
}

void statedb_close(struct statedb *s)
{
    if (!s)
        return;
    db_close(s->db);
    free(s->path);
    free(s);
}

static void bind_opt(sqlite3_stmt *st, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, i);
}

/* Runs a prepared write statement to completion; returns 0, -ENOENT (no row changed, when
 * want_change) or a db_err() code, logging failures. */
static int run_write(struct statedb *s, sqlite3_stmt *st, const char *what, bool want_change)
{
    int rc = sqlite3_step(st);
    int err = rc == SQLITE_DONE ? 0 : db_err(s->db, rc);
    if (err == 0 && want_change && sqlite3_changes(s->db) == 0)
        err = -ENOENT;
    if (err < 0 && err != -ENOENT && err != -EEXIST)
        log_errno(LOG_ERR, err, "%s: %s failed (%s)", s->path, what, sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    return err;
}

int statedb_reg_put(struct statedb *s, const char *pk, const char *dn, const struct statedb_reg *r)
{
    sqlite3_stmt *st;
    int err;

    if (!pk || !dn || !(r->device_secret || (r->client_id && r->device_token)))
        return -EINVAL;
    err = db_prepare(s->db,
                     "INSERT INTO registration(product_key, device_name, device_secret, "
                     "client_id, device_token, registered_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
                     "ON CONFLICT(product_key, device_name) DO UPDATE SET "
                     "device_secret = ?3, client_id = ?4, device_token = ?5, registered_at = ?6",
                     &st);
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, pk, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dn, -1, SQLITE_STATIC);
    bind_opt(st, 3, r->device_secret);
    bind_opt(st, 4, r->client_id);
    bind_opt(st, 5, r->device_token);
    sqlite3_bind_int64(st, 6, r->registered_at ? r->registered_at : (int64_t)time(NULL));
    return run_write(s, st, "storing a registration", false);
}

static int dup_col(sqlite3_stmt *st, int i, char **out)
{
    const unsigned char *v = sqlite3_column_text(st, i);
    *out = NULL;
    if (!v)
        return 0;
    return (*out = strdup((const char *)v)) ? 0 : -ENOMEM;
}

int statedb_reg_get(struct statedb *s, const char *pk, const char *dn, struct statedb_reg *out)
{
    sqlite3_stmt *st;
    int rc, err;

    memset(out, 0, sizeof(*out));
    err = db_prepare(s->db,
                     "SELECT device_secret, client_id, device_token, registered_at "
                     "FROM registration WHERE product_key = ?1 AND device_name = ?2",
                     &st);
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, pk, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dn, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        if ((err = dup_col(st, 0, &out->device_secret)) == 0 &&
            (err = dup_col(st, 1, &out->client_id)) == 0)
            err = dup_col(st, 2, &out->device_token);
        out->registered_at = sqlite3_column_int64(st, 3);
        if (err < 0)
            statedb_reg_free(out);
    } else {
        err = rc == SQLITE_DONE ? -ENOENT : db_err(s->db, rc);
    }
    sqlite3_finalize(st);
    return err;
}

int statedb_reg_delete(struct statedb *s, const char *pk, const char *dn)
{
    sqlite3_stmt *st;
    int err = db_prepare(
        s->db, "DELETE FROM registration WHERE product_key = ?1 AND device_name = ?2", &st);
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, pk, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dn, -1, SQLITE_STATIC);
    return run_write(s, st, "deleting a registration", true);
}

static void wipe_free(char *p)
{
    if (p) {
        explicit_bzero(p, strlen(p));
        free(p);
    }
}

void statedb_reg_free(struct statedb_reg *r)
{
    wipe_free(r->device_secret);
    wipe_free(r->client_id);
    wipe_free(r->device_token);
    memset(r, 0, sizeof(*r));
}

int statedb_device_add(struct statedb *s, const char *pk, const char *dn, const char *config)
{
    sqlite3_stmt *st;
    int err;

    if (!pk || !dn || !config)
        return -EINVAL;
    err = db_prepare(s->db,
                     "INSERT INTO runtime_device(product_key, device_name, config, added_at) "
                     "VALUES (?1, ?2, ?3, ?4)",
                     &st);
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, pk, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dn, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, config, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (int64_t)time(NULL));
    err = run_write(s, st, "adding a device", false);
    if (err == -EEXIST) {
        /* A constraint: the primary key (already there) or the JSON check. */
        sqlite3_stmt *q;
        if (db_prepare(s->db, "SELECT json_valid(?1)", &q) == 0) {
            sqlite3_bind_text(q, 1, config, -1, SQLITE_STATIC);
            if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) == 0)
                err = -EINVAL;
            sqlite3_finalize(q);
        }
    }
    return err;
}

int statedb_device_remove(struct statedb *s, const char *pk, const char *dn)
{
    sqlite3_stmt *st;
    int err = db_prepare(
        s->db, "DELETE FROM runtime_device WHERE product_key = ?1 AND device_name = ?2", &st);
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, pk, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dn, -1, SQLITE_STATIC);
    return run_write(s, st, "removing a device", true);
}

void statedb_device_list_free(struct statedb_device *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].product_key);
        free(v[i].device_name);
        free(v[i].config);
    }
    free(v);
}

int statedb_device_list(struct statedb *s, struct statedb_device **out, size_t *n)
{
    struct statedb_device *v = NULL;
    size_t cap = 0;
    sqlite3_stmt *st;
    int rc, err;

    *out = NULL;
    *n = 0;
    err = db_prepare(s->db,
                     "SELECT product_key, device_name, config FROM runtime_device "
                     "ORDER BY added_at, rowid",
                     &st);
    if (err < 0)
        return err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            struct statedb_device *nv = realloc(v, nc * sizeof(*nv));
            if (!nv) {
                err = -ENOMEM;
                break;
            }
            v = nv;
            cap = nc;
        }
        struct statedb_device *d = &v[(*n)++];
        memset(d, 0, sizeof(*d));
        if ((err = dup_col(st, 0, &d->product_key)) < 0 ||
            (err = dup_col(st, 1, &d->device_name)) < 0 || (err = dup_col(st, 2, &d->config)) < 0)
            break;
    }
    if (!err && rc != SQLITE_DONE)
        err = db_err(s->db, rc);
    sqlite3_finalize(st);
    if (err < 0) {
        statedb_device_list_free(v, *n);
        *n = 0;
        return err;
    }
    *out = v;
    return 0;
}

int statedb_outbox_get(struct statedb *s, struct statedb_outbox *out)
{
    sqlite3_stmt *st;
    int rc, err;

    memset(out, 0, sizeof(*out));
    if ((err = db_prepare(s->db,
                          "SELECT key, value FROM meta WHERE key IN ('outbox_identity', "
                          "'outbox_seq')",
                          &st)) < 0)
        return err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        int64_t v = sqlite3_column_int64(st, 1);
        if (k && strcmp(k, "outbox_identity") == 0)
            out->identity = v;
        else if (k)
            out->committed_seq = v;
    }
    err = rc == SQLITE_DONE ? 0 : db_err(s->db, rc);
    sqlite3_finalize(st);
    return err;
}

int statedb_outbox_put(struct statedb *s, const struct statedb_outbox *r)
{
    sqlite3_stmt *st;
    int err;

    if ((err = db_prepare(s->db,
                          "INSERT OR REPLACE INTO meta(key, value) VALUES ('outbox_identity', "
                          "?1), ('outbox_seq', ?2)",
                          &st)) < 0)
        return err;
    sqlite3_bind_int64(st, 1, r->identity);
    sqlite3_bind_int64(st, 2, r->committed_seq);
    return run_write(s, st, "recording the outbox", false);
}

/* ---- OTA: versions and jobs -------------------------------------------------------------- */

int statedb_ota_version_put(struct statedb *s, const char *pk, const char *dn, const char *module,
                            const char *version, const char *source)
{
    sqlite3_stmt *st;
    int err;

    if (!pk || !dn || !version || !*version || !source)
        return -EINVAL;
    err = db_prepare(s->db,
                     "INSERT INTO ota_version(product_key, device_name, module, version, source, "
                     "updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) "
                     "ON CONFLICT(product_key, device_name, module) DO UPDATE SET "
                     "version = ?4, source = ?5, updated_at = ?6",
                     &st);
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, pk, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dn, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, module ? module : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, version, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, source, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, (int64_t)time(NULL));
    return run_write(s, st, "storing a firmware version", false);
}

void statedb_ota_version_list_free(struct statedb_ota_version *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].product_key);
        free(v[i].device_name);
        free(v[i].module);
        free(v[i].version);
        free(v[i].source);
    }
    free(v);
}

/* Grows *v (of elem bytes each) to hold one more; returns the new slot zeroed or NULL. */
static void *grow(void **v, size_t *cap, size_t n, size_t elem)
{
    if (n == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        void *nv = realloc(*v, nc * elem);
        if (!nv)
            return NULL;
        *v = nv;
        *cap = nc;
    }
    char *slot = (char *)*v + n * elem;
    memset(slot, 0, elem);
    return slot;
}

int statedb_ota_version_list(struct statedb *s, struct statedb_ota_version **out, size_t *n)
{
    struct statedb_ota_version *v = NULL;
    size_t cap = 0;
    sqlite3_stmt *st;
    int rc, err;

    *out = NULL;
    *n = 0;
    err = db_prepare(s->db,
                     "SELECT product_key, device_name, module, version, source, updated_at "
                     "FROM ota_version ORDER BY product_key, device_name, module",
                     &st);
    if (err < 0)
        return err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct statedb_ota_version *x = grow((void **)&v, &cap, *n, sizeof(*v));
        if (!x) {
            err = -ENOMEM;
            break;
        }
        (*n)++;
        x->updated_at = sqlite3_column_int64(st, 5);
        if ((err = dup_col(st, 0, &x->product_key)) < 0 ||
            (err = dup_col(st, 1, &x->device_name)) < 0 || (err = dup_col(st, 2, &x->module)) < 0 ||
            (err = dup_col(st, 3, &x->version)) < 0 || (err = dup_col(st, 4, &x->source)) < 0)
            break;
    }
    if (!err && rc != SQLITE_DONE)
        err = db_err(s->db, rc);
    sqlite3_finalize(st);
    if (err < 0) {
        statedb_ota_version_list_free(v, *n);
        *n = 0;
        return err;
    }
    *out = v;
    return 0;
}

int statedb_ota_job_put(struct statedb *s, const struct statedb_ota_job *j)
{
    sqlite3_stmt *st;
    int64_t now = (int64_t)time(NULL);
    int err;

    if (!j->product_key || !j->device_name || !j->to_version || !j->state || !j->notice ||
        j->job_id <= 0)
        return -EINVAL;
    err = db_prepare(s->db,
                     "INSERT OR REPLACE INTO ota_job(product_key, device_name, module, job_id, "
                     "from_version, to_version, state, notice, progress, step, error, created_at, "
                     "updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                     &st);
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, j->product_key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, j->device_name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, j->module ? j->module : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, j->job_id);
    bind_opt(st, 5, j->from_version);
    sqlite3_bind_text(st, 6, j->to_version, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, j->state, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, j->notice, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 9, j->progress);
    sqlite3_bind_int(st, 10, j->step);
    bind_opt(st, 11, j->error);
    sqlite3_bind_int64(st, 12, j->created_at ? j->created_at : now);
    sqlite3_bind_int64(st, 13, now);
    /* A job's row changes a few times per job while its firmware is being written: no fsync
     * per change (it would stall the loop behind the disk). In WAL mode with synchronous=NORMAL
     * the commit survives a crash of the process; after a power cut the last change may be
     * lost, and the job is found again by firmware/get at login, its bytes resumed. */
    db_exec(s->db, "PRAGMA synchronous=NORMAL");
    err = run_write(s, st, "storing an OTA job", false);
    db_exec(s->db, "PRAGMA synchronous=FULL");
    return err == -EEXIST ? -EINVAL : err; /* a CHECK constraint */
}

int statedb_ota_job_delete(struct statedb *s, const char *pk, const char *dn, const char *module)
{
    sqlite3_stmt *st;
    int err = db_prepare(s->db,
                         "DELETE FROM ota_job WHERE product_key = ?1 AND device_name = ?2 AND "
                         "module = ?3",
                         &st);
    if (err < 0)
        return err;
    sqlite3_bind_text(st, 1, pk, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, dn, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, module ? module : "", -1, SQLITE_STATIC);
    return run_write(s, st, "removing an OTA job", true);
}

void statedb_ota_job_list_free(struct statedb_ota_job *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].product_key);
        free(v[i].device_name);
        free(v[i].module);
        free(v[i].from_version);
        free(v[i].to_version);
        free(v[i].state);
        free(v[i].notice);
        free(v[i].error);
    }
    free(v);
}

int statedb_ota_job_list(struct statedb *s, struct statedb_ota_job **out, size_t *n)
{
    struct statedb_ota_job *v = NULL;
    size_t cap = 0;
    sqlite3_stmt *st;
    int rc, err;

    *out = NULL;
    *n = 0;
    err = db_prepare(s->db,
                     "SELECT product_key, device_name, module, job_id, from_version, to_version, "
                     "state, notice, progress, step, error, created_at, updated_at FROM ota_job "
                     "ORDER BY job_id",
                     &st);
    if (err < 0)
        return err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct statedb_ota_job *x = grow((void **)&v, &cap, *n, sizeof(*v));
        if (!x) {
            err = -ENOMEM;
            break;
        }
        (*n)++;
        x->job_id = sqlite3_column_int64(st, 3);
        x->progress = sqlite3_column_int(st, 8);
        x->step = sqlite3_column_int(st, 9);
        x->created_at = sqlite3_column_int64(st, 11);
        x->updated_at = sqlite3_column_int64(st, 12);
        if ((err = dup_col(st, 0, &x->product_key)) < 0 ||
            (err = dup_col(st, 1, &x->device_name)) < 0 || (err = dup_col(st, 2, &x->module)) < 0 ||
            (err = dup_col(st, 4, &x->from_version)) < 0 ||
            (err = dup_col(st, 5, &x->to_version)) < 0 || (err = dup_col(st, 6, &x->state)) < 0 ||
            (err = dup_col(st, 7, &x->notice)) < 0 || (err = dup_col(st, 10, &x->error)) < 0)
            break;
    }
    if (!err && rc != SQLITE_DONE)
        err = db_err(s->db, rc);
    sqlite3_finalize(st);
    if (err < 0) {
        statedb_ota_job_list_free(v, *n);
        *n = 0;
        return err;
    }
    *out = v;
    return 0;
}

int statedb_ota_last_job_id(struct statedb *s, int64_t *out)
{
    sqlite3_stmt *st;
    int rc, err = db_prepare(s->db, "SELECT COALESCE(MAX(job_id), 0) FROM ota_job", &st);
    if (err < 0)
        return err;
    rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    err = rc == SQLITE_ROW ? 0 : db_err(s->db, rc);
    sqlite3_finalize(st);
    return err;
}
