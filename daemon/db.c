/*
 * db: opening SQLite files, pragmas, migrations and SQLite -> aligw error translation (see db.h).
 *
 * Damage is detected by reading the schema before anything writes: a file that is not a
 * database fails there with SQLITE_NOTADB before WAL mode or a migration could touch it. The
 * full quick_check is opt-in (DB_QUICK_CHECK) because it reads every page, and the outbox must
 * open a million-message store in about a second.
 */
#include "db.h"

#include "errors.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int db_err(sqlite3 *db, int rc)
{
    int sys = db ? sqlite3_system_errno(db) : 0;

    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return 0;
    case SQLITE_FULL:
        return ALIGW_ESTOREFULL;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return ALIGW_ECORRUPT;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_CONSTRAINT:
        return -EEXIST;
    case SQLITE_TOOBIG:
        return -EMSGSIZE;
    case SQLITE_READONLY:
        return -EROFS;
    case SQLITE_PERM:
    case SQLITE_AUTH:
        return -EACCES;
    case SQLITE_MISUSE:
    case SQLITE_RANGE:
        return -EINVAL;
    case SQLITE_CANTOPEN:
        return sys > 0 ? -sys : -ENOENT;
    case SQLITE_IOERR:
        if (sys == ENOSPC || sys == EDQUOT)
            return ALIGW_ESTOREFULL;
        if (rc == SQLITE_IOERR_NOMEM)
            return -ENOMEM;
        return -EIO;
    default:
        return -EIO;
    }
}

int db_exec(sqlite3 *db, const char *sql)
{
    return db_err(db, sqlite3_exec(db, sql, NULL, NULL, NULL));
}

int db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out)
{
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
    if (rc != SQLITE_OK) {
        log_error("%s: cannot prepare \"%.60s\": %s", sqlite3_db_filename(db, "main"), sql,
                  sqlite3_errmsg(db));
        *out = NULL;
        return db_err(db, rc);
    }
    return 0;
}

void db_close(sqlite3 *db)
{
    if (db && sqlite3_close(db) != SQLITE_OK)
        log_error("%s: close: %s", sqlite3_db_filename(db, "main"), sqlite3_errmsg(db));
}

/* Runs a one-row, one-column integer query; -1 row value means no row. */
static int query_int(sqlite3 *db, const char *sql, long long *val)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    *val = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    if (rc == SQLITE_ROW)
        rc = SQLITE_OK;
    sqlite3_finalize(st);
    return rc;
}

/* Returns SQLITE_OK, -1 when the check found damage (logged), or a SQLite error. */
static int quick_check(sqlite3 *db, const char *path)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *res = (const char *)sqlite3_column_text(st, 0);
        if (!res || strcmp(res, "ok") != 0) {
            char first[200];
            snprintf(first, sizeof(first), "%s", res ? res : "?");
            for (char *c = first; *c; c++)
                if (*c == '\n')
                    *c = ' ';
            log_error("%s: database is damaged (quick_check: %.200s); not touching it, restore "
                      "or move it away",
                      path, first);
            rc = -1;
        } else {
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return rc;
}

static int migrate(sqlite3 *db, const char *path, const struct db_schema *schema, long long from)
{
    char sql[64];
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    for (size_t i = (size_t)from; i < schema->n; i++) {
        const struct db_migration *m = &schema->migrations[i];
        rc = sqlite3_exec(db, m->sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            log_error("%s: migration %s failed: %s", path, m->name, sqlite3_errmsg(db));
            goto rollback;
        }
    }
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %zu", schema->n);
    rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (rc == SQLITE_OK) {
        log_info("%s: %s schema migrated from version %lld to %zu", path, schema->name, from,
                 schema->n);
        return 0;
    }
rollback:
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
fail:
    log_errno(LOG_ERR, db_err(db, rc), "%s: cannot migrate the %s schema (%s)", path, schema->name,
              sqlite3_errmsg(db));
    return db_err(db, rc);
}

int db_open(const char *path, const struct db_schema *schema, unsigned flags, sqlite3 **out)
{
    sqlite3 *db = NULL;
    long long version, n_objects;
    char sql[96];
    int oflags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
    int rc, err;

    *out = NULL;
    if (!(flags & DB_NO_MIGRATE))
        oflags |= SQLITE_OPEN_CREATE;
    rc = sqlite3_open_v2(path, &db, oflags, NULL);
    if (rc != SQLITE_OK) {
        err = db_err(db, rc);
        log_errno(LOG_ERR, err, "%s: cannot open database", path);
        goto out;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 5000);

    /* The first read: a file that is not a database (or has a damaged header) fails here,
     * before any pragma below could write to it. */
    rc = query_int(db, "SELECT count(*) FROM sqlite_schema", &n_objects);
    if (rc == SQLITE_OK)
        rc = query_int(db, "PRAGMA user_version", &version);
    if (rc == SQLITE_OK && (flags & DB_QUICK_CHECK) && (rc = quick_check(db, path)) == -1) {
        err = ALIGW_ECORRUPT; /* logged with quick_check's findings */
        goto out;
    }
    if (rc != SQLITE_OK) {
        err = db_err(db, rc);
        if (err == ALIGW_ECORRUPT)
            log_error("%s: not a usable SQLite database (%s); refusing to start, the file is left "
                      "as it is: restore it or move it away",
                      path, sqlite3_errmsg(db));
        else
            log_errno(LOG_ERR, err, "%s: cannot read database (%s)", path, sqlite3_errmsg(db));
        goto out;
    }
    if (version < 0 || (version == 0 && n_objects > 0)) {
        log_error("%s: database holds tables but no aligw schema version; refusing to use it",
                  path);
        err = ALIGW_ECORRUPT;
        goto out;
    }
    if ((size_t)version > schema->n) {
        log_error("%s: %s schema version %lld is newer than this aligwd knows (%zu); refusing "
                  "to open it (downgrade not supported)",
                  path, schema->name, version, schema->n);
        err = -ENOTSUP;
        goto out;
    }
    if ((flags & DB_NO_MIGRATE) && (size_t)version != schema->n) {
        log_error("%s: %s schema version %lld, expected %zu", path, schema->name, version,
                  schema->n);
        err = -ENOTSUP;
        goto out;
    }

    snprintf(sql, sizeof(sql),
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA foreign_keys=ON",
             (flags & DB_SYNC_FULL) ? "FULL" : "NORMAL");
    rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "PRAGMA journal_size_limit=67108864", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        err = db_err(db, rc);
        log_errno(LOG_ERR, err, "%s: cannot set up database (%s)", path, sqlite3_errmsg(db));
        goto out;
    }
    if ((size_t)version < schema->n && (err = migrate(db, path, schema, version)) < 0)
        goto out;
    *out = db;
    return 0;
out:
    sqlite3_close(db);
    return err;
}

int db_check(const char *path, FILE *out)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc, err = 0, shown = 0;

    rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(db, "PRAGMA integrity_check(100)", -1, &st, NULL);
    while (rc == SQLITE_OK || rc == SQLITE_ROW) {
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
            break;
        const char *res = (const char *)sqlite3_column_text(st, 0);
        if (res && strcmp(res, "ok") == 0 && shown == 0)
            continue;
        if (shown == 0)
            fprintf(out,
                    "%s: DAMAGED (integrity_check found problems; the file was not "
                    "changed)\n",
                    path);
        if (shown++ < 20)
            fprintf(out, "  %s\n", res ? res : "?");
    }
    if (rc != SQLITE_DONE) {
        err = db_err(db, rc);
        if (err == 0)
            err = -EIO;
        if (err == ALIGW_ECORRUPT)
            fprintf(out, "%s: DAMAGED (%s; the file was not changed)\n", path,
                    db ? sqlite3_errmsg(db) : "?");
        else
            fprintf(out, "%s: cannot check: %s (%s)\n", path, aligw_strerror(err),
                    db ? sqlite3_errmsg(db) : "?");
    } else if (shown) {
        if (shown > 20)
            fprintf(out, "  ... %d more\n", shown - 20);
        err = ALIGW_ECORRUPT;
    } else {
        fprintf(out, "%s: ok\n", path);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return err;
}
