/*
 * db_sql: the SQL migrations of each database, embedded at build time from db/<schema>/NNNN_*.sql
 * (see db/embed.cmake). Migration i (1-based) has version i; daemon/db.c applies those above the
 * file's PRAGMA user_version.
 */
#ifndef ALIGW_DB_SQL_H
#define ALIGW_DB_SQL_H

#include <stddef.h>

struct db_migration {
    int version;      /* 1, 2, 3... */
    const char *name; /* file name, for logs */
    const char *sql;  /* the whole file, NUL-terminated */
};

struct db_schema {
    const char *name; /* "outbox", "state" */
    const struct db_migration *migrations;
    size_t n; /* latest version */
};

extern const struct db_schema db_schema_outbox;
extern const struct db_schema db_schema_state;

#endif
