/* test_db: opening, migrating and refusing SQLite files (daemon/db.c), on real files. */
#include "check.h"
#include "db.h"
#include "errors.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/aligw-test-db-XXXXXX";

static long long query(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    long long v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return -2;
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static size_t read_file(const char *path, char *buf, size_t max)
{
    FILE *f = fopen(path, "rb");
    size_t n = 0;
    if (f) {
        n = fread(buf, 1, max, f);
        fclose(f);
    }
    return n;
}

static void test_migrate(void)
{
    char path[256];
    sqlite3 *db;
    snprintf(path, sizeof(path), "%s/a.db", dir);

    CHECK_INT(db_open(path, &db_schema_outbox, 0, &db), 0);
    CHECK_INT(query(db, "PRAGMA user_version"), (long long)db_schema_outbox.n);
    CHECK(db_schema_outbox.n >= 1);
    CHECK_INT(query(db, "SELECT value FROM meta WHERE key = 'next_seq'"), 1);
    CHECK_INT(query(db, "PRAGMA foreign_keys"), 1);
    CHECK_INT(query(db, "PRAGMA synchronous"), 1); /* NORMAL */
    sqlite3_stmt *st;
    CHECK(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    CHECK_STR((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    /* Foreign keys are enforced: a message for a device that does not exist is refused. */
    int rc = sqlite3_exec(db,
                          "INSERT INTO message(seq, device_id, created_ms, qos, size, topic, "
                          "payload) VALUES (1, 99, 0, 1, 1, 't', x'')",
                          NULL, NULL, NULL);
    CHECK_INT(db_err(db, rc), -EEXIST);
    db_close(db);

    /* Reopening is idempotent: no migration runs twice (a second CREATE TABLE would fail). */
    CHECK_INT(db_open(path, &db_schema_outbox, DB_SYNC_FULL | DB_QUICK_CHECK, &db), 0);
    CHECK_INT(query(db, "PRAGMA synchronous"), 2); /* FULL */
    CHECK_INT(query(db, "SELECT count(*) FROM meta"), 1);
    /* A second connection that does not migrate sees the same version. */
    sqlite3 *db2;
    CHECK_INT(db_open(path, &db_schema_outbox, DB_NO_MIGRATE, &db2), 0);
    db_close(db2);
    /* Pretend a newer aligw wrote it. */
    CHECK_INT(sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, NULL), SQLITE_OK);
    db_close(db);
    CHECK_INT(db_open(path, &db_schema_outbox, 0, &db), -ENOTSUP);
    CHECK(db == NULL);
}

static void test_garbage(void)
{
    char path[256], before[8192], after[8192];
    sqlite3 *db;
    snprintf(path, sizeof(path), "%s/garbage.db", dir);
    FILE *f = fopen(path, "wb");
    for (int i = 0; i < 8000; i++)
        fputc((i * 7919) & 0xff, f);
    fclose(f);
    size_t n1 = read_file(path, before, sizeof(before));
    CHECK_INT(n1, 8000);

    CHECK_INT(db_open(path, &db_schema_outbox, 0, &db), ALIGW_ECORRUPT);
    CHECK_INT(db_open(path, &db_schema_state, DB_QUICK_CHECK, &db), ALIGW_ECORRUPT);
    size_t n2 = read_file(path, after, sizeof(after));
    CHECK_INT(n2, n1);
    CHECK(memcmp(before, after, n1) == 0);
    char side[300];
    snprintf(side, sizeof(side), "%s-wal", path);
    CHECK(access(side, F_OK) != 0);

    /* A real SQLite database of someone else's (tables, no aligw version) is refused too. */
    snprintf(path, sizeof(path), "%s/other.db", dir);
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    CHECK_INT(sqlite3_exec(db, "CREATE TABLE x(a)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    CHECK_INT(db_open(path, &db_schema_outbox, 0, &db), ALIGW_ECORRUPT);

    /* A missing directory is an errno, not corruption. */
    CHECK_INT(db_open("/nonexistent-aligw-dir/x.db", &db_schema_outbox, 0, &db), -ENOENT);
}

static void test_damaged_page(void)
{
    /* A valid header with damaged pages behind it: quick_check catches it at open. */
    char path[256], cmd[512];
    sqlite3 *db;
    snprintf(path, sizeof(path), "%s/damaged.db", dir);
    CHECK_INT(db_open(path, &db_schema_state, 0, &db), 0);
    CHECK_INT(db_exec(db, "PRAGMA journal_mode=DELETE; CREATE TABLE big(x); "
                          "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c "
                          "WHERE i < 2000) INSERT INTO big SELECT randomblob(100) FROM c"),
              0);
    db_close(db);
    FILE *f = fopen(path, "r+b");
    fseek(f, 4096 * 3 + 10, SEEK_SET);
    for (int i = 0; i < 4096 * 4; i++)
        fputc(0xa5, f);
    fclose(f);
    CHECK_INT(db_open(path, &db_schema_state, DB_QUICK_CHECK, &db), ALIGW_ECORRUPT);
    snprintf(cmd, sizeof(cmd), "test -s %s", path);
    CHECK_INT(system(cmd), 0);
}

static void test_errors(void)
{
    CHECK_INT(db_err(NULL, SQLITE_OK), 0);
    CHECK_INT(db_err(NULL, SQLITE_DONE), 0);
    CHECK_INT(db_err(NULL, SQLITE_FULL), ALIGW_ESTOREFULL);
    CHECK_INT(db_err(NULL, SQLITE_CORRUPT), ALIGW_ECORRUPT);
    CHECK_INT(db_err(NULL, SQLITE_NOTADB), ALIGW_ECORRUPT);
    CHECK_INT(db_err(NULL, SQLITE_NOMEM), -ENOMEM);
    CHECK_INT(db_err(NULL, SQLITE_BUSY), -EBUSY);
    CHECK_INT(db_err(NULL, SQLITE_CONSTRAINT_PRIMARYKEY), -EEXIST);
    CHECK_INT(db_err(NULL, SQLITE_IOERR_WRITE), -EIO);
    CHECK_INT(db_err(NULL, SQLITE_READONLY), -EROFS);
}

int main(void)
{
    char cmd[300];
    if (!mkdtemp(dir))
        return 2;
    test_migrate();
    test_garbage();
    test_damaged_page();
    test_errors();
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_INT(system(cmd), 0);
    return check_done();
}
