/*
 * statedb: the daemon's small state database (state_dir/state.db, separate from the outbox):
 * the results of dynamic registration, which must survive anything because the platform hands a
 * secret out only once, the devices added at runtime through the API, and firmware upgrades
 * (each device's module versions and its current OTA job, so a restart resumes the job). Writes use
 * synchronous=FULL and return only once durable (OTA job rows excepted, see
 * statedb_ota_job_put). The calls are synchronous and meant for the
 * loop thread: they touch a few rows, rarely (registration, API add/remove, start-up).
 * Secrets read from here are the caller's to wipe (statedb_reg_free does).
 */
#ifndef ALIGW_STATEDB_H
#define ALIGW_STATEDB_H

#include <stddef.h>
#include <stdint.h>

struct statedb;

/* Opens or creates path. Errors: ALIGW_ECORRUPT (damaged, left as is), -ENOTSUP (newer schema),
 * other db_open() errors. path is borrowed. */
int statedb_open(const char *path, struct statedb **out);
void statedb_close(struct statedb *s);

/* One dynamic-registration result: device_secret, or client_id + device_token (the
 * pre-registration-free variant). Unused fields are NULL. */
struct statedb_reg {
    char *device_secret;
    char *client_id;
    char *device_token;
    int64_t registered_at; /* seconds since the epoch */
};

/*
 * Stores (or replaces) the registration of pk/dn; durable (fsynced) when it returns 0. Strings
 * are borrowed. Errors: -EINVAL (neither a secret nor a client_id + token), ALIGW_ESTOREFULL,
 * -EIO and other db_err() codes.
 */
int statedb_reg_put(struct statedb *s, const char *pk, const char *dn, const struct statedb_reg *r);
/* Fills *out (free with statedb_reg_free). -ENOENT when none is stored. */
int statedb_reg_get(struct statedb *s, const char *pk, const char *dn, struct statedb_reg *out);
/* Forgets a registration (after the device was reset in the cloud). -ENOENT when none. */
int statedb_reg_delete(struct statedb *s, const char *pk, const char *dn);
/* Wipes and frees the strings of r. */
void statedb_reg_free(struct statedb_reg *r);

/* A device added at runtime: config is the JSON object text as the API received it. */
struct statedb_device {
    char *product_key, *device_name, *config;
};

/* Adds pk/dn with its JSON config text (borrowed). -EEXIST if present, -EINVAL if config is not
 * valid JSON. Durable on return. */
int statedb_device_add(struct statedb *s, const char *pk, const char *dn, const char *config);
/* Removes pk/dn. -ENOENT if absent. Durable on return. */
int statedb_device_remove(struct statedb *s, const char *pk, const char *dn);
/* All runtime devices in the order they were added; free with statedb_device_list_free. */
int statedb_device_list(struct statedb *s, struct statedb_device **out, size_t *n);
void statedb_device_list_free(struct statedb_device *v, size_t n);

/* What the state database knows about the outbox (see db/state/0002_meta.sql). */
struct statedb_outbox {
    int64_t identity;      /* 0 = nothing recorded yet */
    int64_t committed_seq; /* the outbox committed at least this seq */
};
/* Fills *out (zeros when nothing is recorded). Returns 0 or a db_err() code. */
int statedb_outbox_get(struct statedb *s, struct statedb_outbox *out);
/* Records r; durable on return. Returns 0 or a db_err() code (logged). */
int statedb_outbox_put(struct statedb *s, const struct statedb_outbox *r);

/* The firmware version of one module of a device ("" = default module). */
struct statedb_ota_version {
    char *product_key, *device_name, *module, *version, *source;
    int64_t updated_at;
};

/* Stores pk/dn/module's version (strings borrowed); source is "config", "plugin", "api", "ota".
 * Durable on return. */
int statedb_ota_version_put(struct statedb *s, const char *pk, const char *dn, const char *module,
                            const char *version, const char *source);
/* Every stored version, by device and module; free with statedb_ota_version_list_free. */
int statedb_ota_version_list(struct statedb *s, struct statedb_ota_version **out, size_t *n);
void statedb_ota_version_list_free(struct statedb_ota_version *v, size_t n);

/* A device module's OTA job (one per pk/dn/module). */
struct statedb_ota_job {
    char *product_key, *device_name, *module;
    int64_t job_id;
    char *from_version, *to_version, *state, *notice, *error; /* from_version, error may be NULL */
    int progress, step;
    int64_t created_at, updated_at;
};

/* Inserts or replaces the job of j's pk/dn/module (strings borrowed). Written with
 * synchronous=NORMAL (no fsync): it survives a crash of the process, not always a power cut.
 * Errors: -EINVAL (missing field, notice not JSON, unknown state), db_err() codes. */
int statedb_ota_job_put(struct statedb *s, const struct statedb_ota_job *j);
/* Removes the job of pk/dn/module; -ENOENT when none. */
int statedb_ota_job_delete(struct statedb *s, const char *pk, const char *dn, const char *module);
/* Every job, oldest first; free with statedb_ota_job_list_free. */
int statedb_ota_job_list(struct statedb *s, struct statedb_ota_job **out, size_t *n);
void statedb_ota_job_list_free(struct statedb_ota_job *v, size_t n);
/* The highest job id ever stored (0 if none). */
int statedb_ota_last_job_id(struct statedb *s, int64_t *out);

#endif
