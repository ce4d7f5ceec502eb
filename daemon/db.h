/*
 * db: the one place aligw opens SQLite files and the boundary where SQLite result codes become
 * aligw errors. db_open() sets the pragmas every database gets (WAL, busy timeout, foreign keys),
 * refuses a damaged or non-SQLite file with ALIGW_ECORRUPT and a log line naming it (the file
 * is never deleted, truncated or recreated), refuses a schema newer than this build knows, and
 * applies the pending numbered migrations of db/<schema>/ in one transaction, tracked by
 * PRAGMA user_version. A connection returned here is used by one thread at a time.
 */
#ifndef ALIGW_DB_H
#define ALIGW_DB_H

#include <sqlite3.h>
#include <stdio.h>

#include "db_sql.h"

enum {
    DB_SYNC_FULL = 1 << 0,   /* synchronous=FULL (survives power loss); default NORMAL */
    DB_QUICK_CHECK = 1 << 1, /* run PRAGMA quick_check at open: only for small databases */
    DB_NO_MIGRATE = 1 << 2,  /* second connection: the file must exist at the latest version */
};

/*
 * Opens path (created if missing unless DB_NO_MIGRATE) for schema. Returns 0 and *out, or:
 * ALIGW_ECORRUPT (not a database, damaged, or quick_check failed), -ENOTSUP (schema newer than
 * this build), ALIGW_ESTOREFULL (no room to create or migrate), -ENOENT/-EACCES/-EROFS/-EIO.
 * Every failure is logged with the path. path is borrowed for the call.
 */
int db_open(const char *path, const struct db_schema *schema, unsigned flags, sqlite3 **out);

/*
 * A full PRAGMA integrity_check of path (which must exist; it is not created or migrated), for
 * aligwd --check-store. Prints "path: ok" or "path: DAMAGED" with the first findings to out.
 * Returns 0, ALIGW_ECORRUPT, or -ENOENT and other db_err() codes (printed too).
 */
int db_check(const char *path, FILE *out);

/* Closes db (NULL is fine). Finalize every statement first. */
void db_close(sqlite3 *db);

/*
 * Translates a SQLite result code (primary or extended) to 0 or a negative aligw error:
 * SQLITE_FULL (or an I/O error from ENOSPC/EDQUOT) -> ALIGW_ESTOREFULL, SQLITE_CORRUPT and
 * SQLITE_NOTADB -> ALIGW_ECORRUPT, SQLITE_NOMEM -> -ENOMEM, SQLITE_BUSY/LOCKED -> -EBUSY,
 * SQLITE_CONSTRAINT -> -EEXIST, SQLITE_TOOBIG -> -EMSGSIZE, SQLITE_READONLY -> -EROFS,
 * SQLITE_CANTOPEN -> the system errno or -ENOENT, other I/O errors -> -EIO. db may be NULL; when
 * given, its system errno refines I/O errors. SQLITE_ROW and SQLITE_DONE map to 0.
 */
int db_err(sqlite3 *db, int rc);

/* Runs one or more statements with no results. Returns 0 or a db_err() code. */
int db_exec(sqlite3 *db, const char *sql);

/* Prepares a persistent statement. Returns 0 or a db_err() code (logged: a bug or damage). */
int db_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out);

#endif
